#pragma once
/// @file
/// `ds::cuda::convert<From, To>`: element-wise casts between float, `ds::bf16` and
/// `ds::half` on the device, with the same rounding as the host types (round to nearest
/// even, NaN kept) because it is the same `DS_HOST_DEVICE` code.

#include <cstddef>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/launch.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::cuda {

namespace detail {

template <class From, class To>
__global__ void convert_kernel(const From* in, To* out, std::size_t n) {
    const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
    for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = To(static_cast<float>(in[i]));
}

}  // namespace detail

/// out[i] = in[i] rounded to `To`, for n elements, on `stream`.
template <storage_float From, storage_float To>
void convert(const From* in, To* out, std::size_t n, cudaStream_t stream) {
    if (n == 0) return;
    constexpr unsigned threads = 256;
    detail::convert_kernel<plain_t<From>, plain_t<To>><<<grid_for(n, threads), threads, 0, stream>>>(in, out, n);
    DS_CUDA_CHECK_LAUNCH();
}

}  // namespace ds::cuda
