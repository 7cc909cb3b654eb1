#pragma once
/// @file
/// `ds::FlatOptimizer<Opt>`: an optimizer policy's state over flat fp32 buffers, and its step.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include <ds/engine/flat_buffers.hpp>
#include <ds/optim/optimizer.hpp>

namespace ds {

/// A contiguous run of the flat buffer that forms one tensor (for per-tensor optimizers).
struct Segment {
    std::size_t offset, count;
};

/// The optimizer an engine returns from `ds::initialize`: hyper-parameters, the step count
/// (equal to the number of applied steps at every stage, SPEC decisions table) and the
/// state buffers, all over the same flat layout as the parameters.
template <optimizer Opt>
class FlatOptimizer {
public:
    using Hyper = typename Opt::Hyper;
    static constexpr bool per_tensor = requires { Opt::per_tensor; };

    FlatOptimizer(const Hyper& hyper, std::size_t elements)
        : hyper_(hyper), states_(Opt::state_buffers + (per_tensor ? 1 : 0), elements) {}

    const Hyper& hyper() const { return hyper_; }
    Hyper& hyper() { return hyper_; }
    /// Applied optimizer steps so far.
    std::int64_t step_count() const { return steps_; }
    /// State buffer k (Adam: 0 = exp_avg, 1 = exp_avg_sq).
    std::span<const float> state(std::size_t k) const { return states_.span(k); }
    std::span<float> state(std::size_t k) { return states_.span(k); }
    std::size_t state_bytes() const { return Opt::state_buffers * states_.elements() * sizeof(float); }

    /// One optimizer step over `params` with gradients `grads` (both `elements` long) at
    /// learning rate `lr`, optionally with β1 and β2 replaced (OneCycle's momentum).
    /// Per-tensor optimizers (Lamb) treat each of `tensors` as one tensor.
    void step(float* params, const float* grads, double lr, std::optional<double> beta1, std::optional<double> beta2,
              std::span<const Segment> tensors) {
        Hyper h = hyper_;
        if constexpr (requires { h.betas; }) {
            if (beta1) h.betas[0] = *beta1;
            if (beta2) h.betas[1] = *beta2;
        }
        const auto update = Opt::update(h, lr, ++steps_);
        float* const* states = states_.pointers();
        if constexpr (per_tensor) {
            float* scratch = states_[Opt::state_buffers];
            for (const Segment& t : tensors) {
                float* segment_states[Opt::state_buffers];
                for (std::size_t k = 0; k < Opt::state_buffers; ++k) segment_states[k] = states[k] + t.offset;
                update.step_tensor(params + t.offset, grads + t.offset, segment_states, scratch, t.count);
            }
        } else {
            const std::size_t n = states_.elements();
            for (std::size_t i = 0; i < n; ++i) update(i, params, grads, states);
        }
    }

private:
    Hyper hyper_;
    FlatBuffers states_;
    std::int64_t steps_ = 0;
};

}  // namespace ds
