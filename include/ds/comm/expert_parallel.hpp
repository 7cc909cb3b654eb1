#pragma once
/// @file
/// The expert-parallel group an MoE layer exchanges its tokens over (SPEC §10): DeepSpeed's
/// blocked groups of `ep_size` consecutive ranks, each holding `num_experts / ep_size`
/// experts of every MoE layer.

#include <cstddef>
#include <cstdint>
#include <utility>

#include <ds/comm/communicator.hpp>
#include <ds/comm/distributed.hpp>

namespace ds::comm {

/// What an MoE layer needs of its expert-parallel group: its size, this rank's place in
/// it and the all-to-all. The model's type cannot name the engine's communicator, so the
/// layer reaches it through this interface: one indirect call per all-to-all.
class ExpertExchange {
public:
    virtual ~ExpertExchange() = default;
    virtual int size() const = 0;
    virtual int rank() const = 0;
    /// Block r of `in` (n values) goes to rank r; block k of `out` comes from rank k.
    virtual void all_to_all(const float* in, float* out, std::size_t n) = 0;
    virtual void all_to_all(const std::int32_t* in, std::int32_t* out, std::size_t n) = 0;
    /// What the all-to-alls have moved, in `CommCounters` units.
    virtual const CommCounters& counters() const = 0;
};

/// The expert-parallel group of this rank over communicator `C`: split from the world
/// (collectively) into blocks of `ep_size` consecutive ranks.
template <communicator C>
class ExpertParallelGroup final : public ExpertExchange {
public:
    /// @throws std::invalid_argument unless `ep_size` divides the world size
    ExpertParallelGroup(C& world, int ep_size) : group_(expert_parallel_group(world, ep_size)) {}

    int size() const override { return group_.size(); }
    int rank() const override { return group_.rank(); }
    void all_to_all(const float* in, float* out, std::size_t n) override { group_.all_to_all(in, out, n); }
    void all_to_all(const std::int32_t* in, std::int32_t* out, std::size_t n) override {
        group_.all_to_all(in, out, n);
    }
    const CommCounters& counters() const override { return group_.counters(); }

private:
    C group_;
};

}  // namespace ds::comm
