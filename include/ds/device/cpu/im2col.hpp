#pragma once
/// @file
/// im2col / col2im for stride-1, unpadded convolutions: a convolution becomes one GEMM.

#include <algorithm>
#include <cstddef>

namespace ds::cpu {

/// Unfolds one C × H × W image into col[(c·K + i)·K + j][y·Wo + x] = image[c][y + i][x + j],
/// with Ho = H − K + 1 and Wo = W − K + 1 (stride 1, no padding).
inline void im2col(const float* image, std::size_t c_in, std::size_t h, std::size_t w, std::size_t k, float* col) {
    const std::size_t ho = h - k + 1, wo = w - k + 1;
    for (std::size_t c = 0; c < c_in; ++c)
        for (std::size_t i = 0; i < k; ++i)
            for (std::size_t j = 0; j < k; ++j) {
                float* row = col + ((c * k + i) * k + j) * ho * wo;
                for (std::size_t y = 0; y < ho; ++y) std::copy_n(image + (c * h + y + i) * w + j, wo, row + y * wo);
            }
}

/// The adjoint of `im2col`: adds each column entry back into the image position it came
/// from. `image` must be zeroed (or hold what the sum should start from).
inline void col2im(const float* col, std::size_t c_in, std::size_t h, std::size_t w, std::size_t k, float* image) {
    const std::size_t ho = h - k + 1, wo = w - k + 1;
    for (std::size_t c = 0; c < c_in; ++c)
        for (std::size_t i = 0; i < k; ++i)
            for (std::size_t j = 0; j < k; ++j) {
                const float* row = col + ((c * k + i) * k + j) * ho * wo;
                for (std::size_t y = 0; y < ho; ++y) {
                    float* target = image + (c * h + y + i) * w + j;
                    const float* source = row + y * wo;
                    for (std::size_t x = 0; x < wo; ++x) target[x] += source[x];
                }
            }
}

}  // namespace ds::cpu
