#pragma once
/// @file
/// `cuda::FlatOptimizer<Opt>`: `ds::FlatOptimizer`'s contract on the GPU — hyper-parameters,
/// the applied-step count and the state buffers over the optimizer's partition, stepped
/// over `ShardPart`s of device pointers by the fused update (`optimizer_step`), one launch
/// per part. Element-wise optimizers only (Adam, AdamW, Lion, SGD); Lamb's per-tensor trust
/// ratio has no CUDA kernel yet.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/memory.hpp>
#include <ds/device/cuda/optimizer_step.cuh>
#include <ds/engine/flat_optimizer.hpp>
#include <ds/optim/optimizer.hpp>

namespace ds::cuda {

template <optimizer Opt>
class FlatOptimizer {
    static_assert(!requires { Opt::per_tensor; },
                  "ds::cuda::FlatOptimizer: per-tensor optimizers (Lamb) have no CUDA kernel yet");

public:
    using Hyper = typename Opt::Hyper;
    static constexpr std::size_t states = Opt::state_buffers;

    /// Zeroed states for `elements` values, on `stream`.
    FlatOptimizer(const Hyper& hyper, std::size_t elements, cudaStream_t stream)
        : hyper_(hyper), elements_(elements), stream_(stream) {
        for (std::size_t k = 0; k < states; ++k) {
            states_.emplace_back(elements);
            DS_CUDA_CHECK(cudaMemsetAsync(states_.back().data(), 0, states_.back().bytes(), stream));
        }
    }

    const Hyper& hyper() const { return hyper_; }
    Hyper& hyper() { return hyper_; }
    std::int64_t step_count() const { return steps_; }
    /// Restores the count (a checkpoint's): Adam's bias corrections continue from it.
    void set_step_count(std::int64_t steps) { steps_ = steps; }
    /// State buffer k copied to the host (Adam: 0 = exp_avg, 1 = exp_avg_sq).
    std::vector<float> state(std::size_t k) const {
        std::vector<float> host(elements_);
        states_[k].copy_to(host, stream_);
        return host;
    }
    /// Replaces state buffer k (a checkpoint's; `elements()` values); waits for the copy.
    void set_state(std::size_t k, std::span<const float> values) {
        states_[k].copy_from(values, stream_);
        DS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    /// Values in each state buffer: the partition this optimizer steps.
    std::size_t elements() const { return elements_; }
    std::size_t state_bytes() const { return states * elements_ * sizeof(float); }

    /// One step over the parts laid end to end (the states follow their order): gradients
    /// widened and multiplied by `grad_factor` as they are read, learning rate `lr`, β1/β2
    /// replaced when given (OneCycle's momentum). `tensors` is `ds::FlatOptimizer`'s
    /// per-tensor layout, unused by element-wise optimizers. `compute`, when given, receives
    /// each part's updated values rounded to T (mixed precision), part by part like `parts`.
    template <storage_float G, class T = float>
    void step(std::span<const ShardPart<G>> parts, float grad_factor, double lr, std::optional<double> beta1,
              std::optional<double> beta2, std::span<const Segment> /*tensors*/ = {},
              std::span<T* const> compute = {}) {
        const auto update = Opt::update(with_betas(hyper_, beta1, beta2), lr, ++steps_);
        std::size_t base = 0;
        for (std::size_t i = 0; i < parts.size(); ++i) {
            StatePointers<states> at{};
            for (std::size_t k = 0; k < states; ++k) at.at[k] = states_[k].data() + base;
            T* copy = compute.empty() ? nullptr : compute[i];
            optimizer_step<states>(update, parts[i].params, copy, parts[i].grads, grad_factor, at, parts[i].count,
                                   stream_);
            base += parts[i].count;
        }
    }

private:
    Hyper hyper_;
    std::size_t elements_;
    cudaStream_t stream_;
    std::vector<DeviceBuffer<float>> states_;
    std::int64_t steps_ = 0;
};

}  // namespace ds::cuda
