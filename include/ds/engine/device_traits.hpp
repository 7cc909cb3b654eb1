#pragma once
/// @file
/// `ds::DeviceTraits<D>`: what `ds::Engine` takes from its device policy — the model's,
/// the ZeRO state's and the optimizer's types, how they are built, and how a batch goes in
/// and the outputs come out. The engine's step is the same on every device; these are the
/// parts that differ. `Cpu`'s are here; `Cuda`'s in `ds/device/cuda/engine.cuh` (included by
/// name: it needs nvcc).

#include <algorithm>
#include <cstddef>
#include <span>
#include <type_traits>
#include <vector>

#include <ds/comm/expert_parallel.hpp>
#include <ds/config/config.hpp>
#include <ds/device/cpu/convert.hpp>
#include <ds/engine/flat_optimizer.hpp>
#include <ds/engine/zero_state.hpp>
#include <ds/nn/model.hpp>
#include <ds/policy/device.hpp>

namespace ds {

/// Specialised per device policy; an engine on a device without one does not compile.
template <class D>
struct DeviceTraits;

template <>
struct DeviceTraits<Cpu> {
    /// Nothing to hold: host memory, OpenBLAS, OpenMP.
    struct Context {
        std::size_t buffer_bytes() const { return 0; }
    };
    /// The parameters live in host memory, so the initial broadcast goes through them there.
    static constexpr bool host_buffers = true;

    /// The communicator the engine runs over: the one asked for.
    template <class Comm>
    using communicator = Comm;

    template <model Model, class T>
    using network = typename Model::template with_storage<T>;
    template <zero_policy Z, precision_policy P, model Model, comm::communicator Comm>
    using state = ZeroState<Z, P, Model, Comm>;
    template <optimizer Opt>
    using optimizer = FlatOptimizer<Opt>;

    template <class Network>
    static Network make_network(std::size_t max_batch, Context&) {
        return Network(max_batch);
    }
    template <class State, class Comm>
    static State make_state(Context&, Comm& world, Comm& experts, const Config& cfg, std::span<const float> initial) {
        return State(world, experts, cfg, initial);
    }
    template <class Optimizer>
    static Optimizer make_optimizer(Context&, const typename Optimizer::Hyper& hyper, std::size_t elements) {
        return Optimizer(hyper, elements);
    }
    /// Waits for the device's queued work: nothing to wait for on the CPU.
    static void synchronize(Context&) {}
    /// An all-to-all of host values over the expert-parallel group (blocks of n).
    static void all_to_all_from_host(comm::ExpertExchange& group, const float* in, float* out, std::size_t n,
                                     Context&) {
        group.all_to_all(in, out, n);
    }

    /// A batch into the model's dtype (token ids `In` as they are) and the outputs back as
    /// fp32, through host buffers.
    template <class T, class In = float>
    class Io {
        using Stored = std::conditional_t<std::is_integral_v<In>, In, T>;

    public:
        Io(std::size_t inputs, std::size_t outputs, Context&) : input_(inputs) {
            if constexpr (!std::is_same_v<T, float>) logits_.resize(outputs), grad_output_.resize(outputs);
        }
        const Stored* upload_inputs(std::span<const In> inputs) {
            if constexpr (std::is_integral_v<In>) std::copy(inputs.begin(), inputs.end(), input_.begin());
            else cpu::convert(inputs.data(), input_.data(), inputs.size());
            return input_.data();
        }
        std::span<const float> download_outputs(const T* outputs, std::size_t n) {
            if constexpr (std::is_same_v<T, float>) {
                return {outputs, n};
            } else {
                cpu::convert(outputs, logits_.data(), n);
                return {logits_.data(), n};
            }
        }
        const T* upload_grad_output(const float* grad, std::size_t n) {
            if constexpr (std::is_same_v<T, float>) {
                return grad;
            } else {
                cpu::convert(grad, grad_output_.data(), n);
                return grad_output_.data();
            }
        }
        std::size_t buffer_bytes() const {
            return input_.size() * sizeof(Stored) + grad_output_.size() * sizeof(T) + logits_.size() * sizeof(float);
        }

    private:
        std::vector<Stored> input_;
        std::vector<T> grad_output_;
        std::vector<float> logits_;  ///< fp32 copy of 2-byte outputs
    };
};

}  // namespace ds
