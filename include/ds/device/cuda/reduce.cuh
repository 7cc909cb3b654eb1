#pragma once
/// @file
/// Σ x² over a device buffer of any storage dtype, in float64 (as DeepSpeed's ZeRO norms
/// are), deterministic: a fixed grid writes one partial per block and one block adds the
/// partials in order, so the same input gives the same bits on every run. An inf or NaN
/// anywhere makes the result non-finite, which is the engine's overflow test.

#include <cstddef>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/launch.hpp>
#include <ds/device/cuda/memory.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::cuda {

namespace detail {

constexpr unsigned reduce_threads = 256;
constexpr unsigned reduce_blocks = 1024;

/// Sum of one block's values in thread 0, in a fixed order (shared-memory tree).
__device__ inline double block_sum(double v) {
    __shared__ double partial[reduce_threads];
    partial[threadIdx.x] = v;
    __syncthreads();
    for (unsigned half = reduce_threads / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    return partial[0];
}

template <class T>
__global__ void square_sum_partials(const T* x, std::size_t n, double* partials) {
    double sum = 0.0;
    const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
    for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double v = static_cast<float>(x[i]);
        sum += v * v;
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

__global__ void sum_partials(const double* partials, unsigned count, double* out) {
    double sum = 0.0;
    for (unsigned i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
    sum = block_sum(sum);
    if (threadIdx.x == 0) *out = sum;
}

}  // namespace detail

/// Σ x² of `n` values at `x`, written to `*out` (device memory) on `stream`.
/// `scratch` holds `square_sum_scratch` doubles and is reused between calls.
inline constexpr std::size_t square_sum_scratch = detail::reduce_blocks;

template <storage_float T>
void square_sum(const T* x, std::size_t n, double* out, double* scratch, cudaStream_t stream) {
    detail::square_sum_partials<plain_t<T>><<<detail::reduce_blocks, detail::reduce_threads, 0, stream>>>(x, n, scratch);
    DS_CUDA_CHECK_LAUNCH();
    detail::sum_partials<<<1, detail::reduce_threads, 0, stream>>>(scratch, detail::reduce_blocks, out);
    DS_CUDA_CHECK_LAUNCH();
}

/// The same, returned to the host (waits for `stream`).
template <storage_float T>
double square_sum(const T* x, std::size_t n, cudaStream_t stream) {
    DeviceBuffer<double> scratch(square_sum_scratch + 1);
    square_sum(x, n, scratch.data() + square_sum_scratch, scratch.data(), stream);
    double result = 0.0;
    DS_CUDA_CHECK(cudaMemcpyAsync(&result, scratch.data() + square_sum_scratch, sizeof(double), cudaMemcpyDeviceToHost,
                                  stream));
    DS_CUDA_CHECK(cudaStreamSynchronize(stream));
    return result;
}

}  // namespace ds::cuda
