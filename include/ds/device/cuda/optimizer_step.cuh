#pragma once
/// @file
/// The fused optimizer update over a flat fp32 shard on the GPU: one pass reads each
/// gradient (widened from its storage dtype and multiplied by the unscale-and-clip factor),
/// runs the optimizer policy's `DS_HOST_DEVICE` update functor — the same one the CPU
/// backend runs (DESIGN principle 3) — and writes the fp32 value and, in mixed precision,
/// its rounding to the compute dtype. Element-wise optimizers only (Adam, AdamW, Lion, SGD).
/// Each thread's share is `ds::update_strided`, which the CPU tests run too.

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/launch.hpp>
#include <ds/numeric/storage.hpp>
#include <ds/optim/strided_update.hpp>

namespace ds::cuda {

/// The state buffers of an optimizer, passed to a kernel by value.
template <std::size_t N>
struct StatePointers {
    float* at[N > 0 ? N : 1];
};

namespace detail {

/// Elements per round of each thread's loop: 4 × (2 + States) loads in flight per thread
/// (see `update_strided`).
constexpr std::size_t update_unroll = 4;

template <class Update, std::size_t States, class G, class T>
__global__ void optimizer_step_kernel(Update update, float* params, T* compute, const G* grads, float grad_factor,
                                      StatePointers<States> states, std::size_t n) {
    update_strided<update_unroll, States>(update, params, compute, grads, grad_factor, states.at, n,
                                          static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                                          static_cast<std::size_t>(gridDim.x) * blockDim.x);
}

}  // namespace detail

/// Applies `update` (an optimizer's per-element functor, e.g. `AdamUpdate`) to the `n`
/// fp32 values at `params` with gradients `grads` × `grad_factor` and the optimizer's
/// `States` state buffers; with `compute` (T ≠ float) writes the updated values rounded to
/// T there in the same pass. Enqueued on `stream`.
template <std::size_t States, class Update, storage_float G, class T = float>
void optimizer_step(const Update& update, float* params, T* compute, const G* grads, float grad_factor,
                    StatePointers<States> states, std::size_t n, cudaStream_t stream) {
    if (n == 0) return;
    constexpr unsigned threads = 256;
    detail::optimizer_step_kernel<Update, States, plain_t<G>, plain_t<T>>
        <<<grid_for(n, threads), threads, 0, stream>>>(update, params, compute, grads, grad_factor, states, n);
    DS_CUDA_CHECK_LAUNCH();
}

}  // namespace ds::cuda
