#pragma once
/// @file
/// The fused optimizer update over a flat fp32 shard on the GPU: one pass reads each
/// gradient (widened from its storage dtype and multiplied by the unscale-and-clip factor),
/// runs the optimizer policy's `DS_HOST_DEVICE` update functor — the same one the CPU
/// backend runs (DESIGN principle 3) — and writes the fp32 value and, in mixed precision,
/// its rounding to the compute dtype. Element-wise optimizers only (Adam, AdamW, Lion, SGD).

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/launch.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::cuda {

/// The state buffers of an optimizer, passed to a kernel by value.
template <std::size_t N>
struct StatePointers {
    float* at[N > 0 ? N : 1];
};

namespace detail {

template <class Update, std::size_t States, class G, class T>
__global__ void optimizer_step_kernel(Update update, float* params, T* compute, const G* grads, float grad_factor,
                                      StatePointers<States> states, std::size_t n) {
    const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
    for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        // The functor indexes its arguments with i; shifting every pointer by i lets it read
        // this element's widened, scaled gradient from a register.
        const float g = static_cast<float>(grads[i]) * grad_factor;
        float* shifted[States > 0 ? States : 1];
        for (std::size_t k = 0; k < States; ++k) shifted[k] = states.at[k] + i;
        update(0, params + i, &g, shifted);
        if constexpr (!std::is_same_v<T, float>) compute[i] = T(params[i]);
    }
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
