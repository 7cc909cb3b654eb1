#pragma once
/// @file
/// Launch shapes for the element-wise kernels' grid-stride loops.

#include <cstddef>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>

namespace ds::cuda {

/// Blocks of `threads` for a grid-stride loop over n elements: enough to fill the current
/// device (8 blocks per SM), no more, so each thread handles several elements.
inline unsigned grid_for(std::size_t n, unsigned threads) {
    int device = 0, sms = 0;
    DS_CUDA_CHECK(cudaGetDevice(&device));
    DS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const std::size_t wanted = (n + threads - 1) / threads;
    const std::size_t cap = static_cast<std::size_t>(sms) * 8;
    return static_cast<unsigned>(wanted < cap ? (wanted > 0 ? wanted : 1) : cap);
}

}  // namespace ds::cuda
