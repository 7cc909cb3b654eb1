#pragma once
/// @file
/// The column form of a stride-1, unpadded convolution, element by element: the CUDA
/// backend turns Conv2d into one GEMM over these columns (the CPU backend convolves
/// directly, ds/device/cpu/conv_kernels.hpp). Each index is one output element, computed
/// by gathering, so a kernel needs no atomics. Values are stored as T (float, bf16, half);
/// sums run in float and round once.

#include <cstddef>

#include <ds/util/host_device.hpp>

namespace ds::nn::math {

/// C × H × W images and K × K filters. For image b of a batch:
/// - `col(b)[(c·K + i)·K + j][y·OW + x] = in(b)[c][y + i][x + j]`, a [C·K·K × OH·OW] matrix,
///   so that out(b)[O × OH·OW] = weight[O × C·K·K] · col(b) + bias;
/// - the input gradient gathers the column gradient back:
///   `dx(b)[c][h][w] = Σ over (i, j) with 0 ≤ h − i < OH, 0 ≤ w − j < OW of dcol(b)[(c·K+i)·K+j][(h−i)·OW + w−j]`.
template <std::size_t C, std::size_t H, std::size_t W, std::size_t K>
struct Im2Col {
    static constexpr std::size_t out_h = H - K + 1, out_w = W - K + 1;
    static constexpr std::size_t rows = C * K * K, cols = out_h * out_w;
    static constexpr std::size_t col_size = rows * cols;  ///< per image
    static constexpr std::size_t image_size = C * H * W;

    /// Column element `index` of the batch (index < batch · col_size).
    template <class T>
    DS_HOST_DEVICE static void gather(std::size_t index, const T* in, T* col) {
        const std::size_t b = index / col_size, e = index % col_size;
        const std::size_t r = e / cols, p = e % cols;
        const std::size_t c = r / (K * K), i = r / K % K, j = r % K, y = p / out_w, x = p % out_w;
        col[index] = in[b * image_size + (c * H + y + i) * W + x + j];
    }

    /// Input-gradient element `index` of the batch (index < batch · image_size).
    template <class T>
    DS_HOST_DEVICE static void scatter_back(std::size_t index, const T* dcol, T* dx) {
        const std::size_t b = index / image_size, e = index % image_size;
        const std::size_t c = e / (H * W), h = e / W % H, w = e % W;
        const T* image = dcol + b * col_size;
        float sum = 0.0f;
        for (std::size_t i = 0; i < K; ++i) {
            if (h < i || h - i >= out_h) continue;
            for (std::size_t j = 0; j < K; ++j) {
                if (w < j || w - j >= out_w) continue;
                sum += static_cast<float>(image[((c * K + i) * K + j) * cols + (h - i) * out_w + (w - j)]);
            }
        }
        dx[index] = T(sum);
    }

    /// The whole batch's columns as one matrix, image b's beside image b − 1's:
    /// `col[r][b·cols + p] = col(b)[r][p]`, [C·K·K × B·OH·OW], so one GEMM gives
    /// out'[O × B·OH·OW] = weight · col for the batch (`BatchRows` turns it into images).
    template <class T>
    DS_HOST_DEVICE static void gather_batch(std::size_t index, const T* in, T* col, std::size_t batch) {
        const std::size_t width = batch * cols;
        const std::size_t r = index / width, b = index % width / cols, p = index % cols;
        const std::size_t c = r / (K * K), i = r / K % K, j = r % K, y = p / out_w, x = p % out_w;
        col[index] = in[b * image_size + (c * H + y + i) * W + x + j];
    }
    /// `scatter_back` over the batch's columns as `gather_batch` lays them out; `dcol` in T or
    /// as unrounded fp32 products (summed in fp32, rounded to T once).
    template <class D, class T>
    DS_HOST_DEVICE static void scatter_back_batch(std::size_t index, const D* dcol, T* dx, std::size_t batch) {
        const std::size_t width = batch * cols;
        const std::size_t b = index / image_size, e = index % image_size;
        const std::size_t c = e / (H * W), h = e / W % H, w = e % W;
        float sum = 0.0f;
        for (std::size_t i = 0; i < K; ++i) {
            if (h < i || h - i >= out_h) continue;
            for (std::size_t j = 0; j < K; ++j) {
                if (w < j || w - j >= out_w) continue;
                sum += static_cast<float>(dcol[((c * K + i) * K + j) * width + b * cols + (h - i) * out_w + (w - j)]);
            }
        }
        dx[index] = T(sum);
    }
};

/// A batch of O × P images as one GEMM over the batch produces and consumes them: rows
/// `[O][B][P]` against the images' `[B][O][P]` (NCHW with P = H·W).
template <std::size_t O, std::size_t P>
struct BatchRows {
    /// `images[b][o][p] = rows[o][b][p] + bias[o]`, element `index` of the images (the sum in
    /// float, rounded once to the images' T; the rows may be unrounded fp32 sums).
    template <class R, class T>
    DS_HOST_DEVICE static void to_images(std::size_t index, const R* rows, const T* bias, T* images, std::size_t batch) {
        const std::size_t b = index / (O * P), o = index / P % O, p = index % P;
        images[index] = T(static_cast<float>(rows[(o * batch + b) * P + p]) + static_cast<float>(bias[o]));
    }
    /// `rows[o][b][p] = images[b][o][p]`, element `index` of the rows.
    template <class T>
    DS_HOST_DEVICE static void to_rows(std::size_t index, const T* images, T* rows, std::size_t batch) {
        const std::size_t o = index / (batch * P), b = index / P % batch, p = index % P;
        rows[index] = images[(b * O + o) * P + p];
    }
};

}  // namespace ds::nn::math
