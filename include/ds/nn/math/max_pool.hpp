#pragma once
/// @file
/// Max pooling's window math, shared by the CPU layer and the CUDA kernels: each device
/// finds its windows its own way and reduces each with `window_max`.

#include <cstddef>
#include <cstdint>

#include <ds/util/host_device.hpp>

namespace ds::nn::math {

/// The maximum of the S × S window starting at `window` (rows `row_stride` apart) and its
/// position k = i·S + j in the window: the first maximum wins and a NaN propagates, as in
/// PyTorch.
struct WindowMax {
    float value;
    std::uint8_t at;
};
template <std::size_t S>
DS_HOST_DEVICE WindowMax window_max(const float* window, std::size_t row_stride) {
    WindowMax best{window[0], 0};
    DS_UNROLL(16)
    for (std::size_t k = 1; k < S * S; ++k) {
        const float v = window[(k / S) * row_stride + k % S];
        const bool take = v > best.value || v != v;
        best.value = take ? v : best.value;
        best.at = take ? static_cast<std::uint8_t>(k) : best.at;
    }
    return best;
}

}  // namespace ds::nn::math
