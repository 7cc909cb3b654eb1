#pragma once
/// @file
/// Direct convolution kernels for the CPU backend, specialised on compile-time shapes.
///
/// A stride-1, unpadded convolution of a C × H × W image with O filters of K × K. Two ways
/// to fill the vector lanes, chosen per layer at compile time:
/// - along the output row ("x"): one vector holds `lanes` neighbouring outputs of one
///   channel; each weight is broadcast. Any O; rows are read from a copy padded so that
///   whole vectors never leave it.
/// - along the output channels ("o", when O is a multiple of the lanes): one vector holds
///   all O outputs of one pixel, from weights laid out [C][K][K][O]; each input value is
///   broadcast. No lane is wasted on narrow images.
/// The input gradient is the "x" kernel again, on the zero-padded output gradient with
/// flipped weights. Shapes are template arguments, so loops unroll and the accumulators
/// stay in registers.

#include <algorithm>
#include <cstddef>

#include <ds/device/cpu/simd.hpp>

namespace ds::cpu::conv {

/// Accumulator vectors a kernel keeps in registers (of 32 with AVX-512, 16 otherwise).
inline constexpr std::size_t register_budget = lanes == 16 ? 24 : 12;
/// The "x" kernel also holds a row of inputs and the broadcast weights.
inline constexpr std::size_t x_budget = lanes == 16 ? 24 : 8;

/// Largest divisor of n that is at most limit (at least 1).
constexpr std::size_t block_of(std::size_t n, std::size_t limit) {
    for (std::size_t b = std::min(n, limit); b > 1; --b)
        if (n % b == 0) return b;
    return 1;
}

/// Geometry of a valid convolution.
template <std::size_t C, std::size_t O, std::size_t K, std::size_t H, std::size_t W>
struct Shape {
    static constexpr std::size_t out_h = H - K + 1, out_w = W - K + 1;
    static constexpr std::size_t row_vectors = vectors_for(out_w);
    /// Row stride of a padded input copy: whole vectors starting at any of the K offsets fit.
    static constexpr std::size_t padded_w = std::max(W, K - 1 + row_vectors * lanes);
    /// Row stride of a padded output-gradient copy (zeros past out_w).
    static constexpr std::size_t padded_out_w = row_vectors * lanes;
    static constexpr bool channels_in_lanes = O % lanes == 0;
};

/// Copies rows of width `w` into rows of stride `stride` (zero-filled beyond `w`).
inline void pad_rows(const float* in, std::size_t rows, std::size_t w, std::size_t stride, float* out) {
    for (std::size_t r = 0; r < rows; ++r) {
        std::copy_n(in + r * w, w, out + r * stride);
        std::fill(out + r * stride + w, out + (r + 1) * stride, 0.0f);
    }
}

/// out[o][y][x] = bias[o] + Σ w[o][c][i][j] · in[c][y+i][x+j], vectors along x.
/// `in` is padded: rows of stride `Shape::padded_w`. `bias` may be null (then 0).
template <std::size_t C, std::size_t O, std::size_t K, std::size_t H, std::size_t W>
void forward_x(const float* in, const float* w, const float* bias, float* out) {
    using S = Shape<C, O, K, H, W>;
    constexpr std::size_t V = S::row_vectors, Wp = S::padded_w;
    constexpr std::size_t OB = block_of(O, std::max<std::size_t>(1, x_budget / V));
    for (std::size_t o0 = 0; o0 < O; o0 += OB)
        for (std::size_t y = 0; y < S::out_h; ++y) {
            vfloat acc[OB][V];
#pragma GCC unroll 32
            for (std::size_t b = 0; b < OB; ++b)
#pragma GCC unroll 8
                for (std::size_t v = 0; v < V; ++v) acc[b][v] = broadcast(bias ? bias[o0 + b] : 0.0f);
            for (std::size_t c = 0; c < C; ++c)
#pragma GCC unroll 8
                for (std::size_t i = 0; i < K; ++i) {
                    const float* row = in + (c * H + y + i) * Wp;
                    const float* wrow = w + ((o0 * C + c) * K + i) * K;
#pragma GCC unroll 8
                    for (std::size_t j = 0; j < K; ++j) {
                        vfloat xv[V];
#pragma GCC unroll 8
                        for (std::size_t v = 0; v < V; ++v) xv[v] = load(row + j + v * lanes);
#pragma GCC unroll 32
                        for (std::size_t b = 0; b < OB; ++b) {
                            const vfloat wv = broadcast(wrow[b * C * K * K + j]);
#pragma GCC unroll 8
                            for (std::size_t v = 0; v < V; ++v) acc[b][v] += wv * xv[v];
                        }
                    }
                }
            for (std::size_t b = 0; b < OB; ++b) {
                float* out_row = out + ((o0 + b) * S::out_h + y) * S::out_w;
                for (std::size_t v = 0; v < V; ++v) {
                    if ((v + 1) * lanes <= S::out_w) store(out_row + v * lanes, acc[b][v]);
                    else store_first(out_row + v * lanes, acc[b][v], S::out_w - v * lanes);
                }
            }
        }
}

/// The same convolution with vectors along the output channels (O a multiple of the
/// lanes). `wt` is the weight laid out [C][K][K][O]; `in` is unpadded.
template <std::size_t C, std::size_t O, std::size_t K, std::size_t H, std::size_t W>
void forward_o(const float* in, const float* wt, const float* bias, float* out) {
    using S = Shape<C, O, K, H, W>;
    static_assert(S::channels_in_lanes);
    constexpr std::size_t OV = O / lanes;
    // Pixels per block: a divisor of the row width when one fits the registers, so that
    // every block takes the fully unrolled path.
    constexpr std::size_t PB_max = std::max<std::size_t>(1, register_budget / OV);
    constexpr std::size_t PB = block_of(S::out_w, PB_max) * 2 > PB_max ? block_of(S::out_w, PB_max) : PB_max;
    for (std::size_t y = 0; y < S::out_h; ++y)
        for (std::size_t x0 = 0; x0 < S::out_w; x0 += PB) {
            const std::size_t pixels = std::min(PB, S::out_w - x0);
            vfloat acc[PB][OV];
#pragma GCC unroll 32
            for (std::size_t p = 0; p < PB; ++p)
#pragma GCC unroll 8
                for (std::size_t v = 0; v < OV; ++v) acc[p][v] = bias ? load(bias + v * lanes) : vfloat{};
            for (std::size_t c = 0; c < C; ++c)
                for (std::size_t i = 0; i < K; ++i) {
                    const float* row = in + (c * H + y + i) * W + x0;
#pragma GCC unroll 8
                    for (std::size_t j = 0; j < K; ++j) {
                        const float* wv_at = wt + ((c * K + i) * K + j) * O;
                        vfloat wv[OV];
#pragma GCC unroll 8
                        for (std::size_t v = 0; v < OV; ++v) wv[v] = load(wv_at + v * lanes);
                        if (pixels == PB) {
#pragma GCC unroll 32
                            for (std::size_t p = 0; p < PB; ++p) {
                                const vfloat xb = broadcast(row[p + j]);
#pragma GCC unroll 8
                                for (std::size_t v = 0; v < OV; ++v) acc[p][v] += xb * wv[v];
                            }
                        } else {
                            for (std::size_t p = 0; p < pixels; ++p) {
                                const vfloat xb = broadcast(row[p + j]);
                                for (std::size_t v = 0; v < OV; ++v) acc[p][v] += xb * wv[v];
                            }
                        }
                    }
                }
            for (std::size_t p = 0; p < pixels; ++p)
                for (std::size_t v = 0; v < OV; ++v)
                    for (std::size_t l = 0; l < lanes; ++l)
                        out[((v * lanes + l) * S::out_h + y) * S::out_w + x0 + p] = acc[p][v][l];
        }
}

/// dw[o][c][i][j] += Σ_y Σ_x dy[o][y][x] · in[c][y+i][x+j], vectors along x.
/// `in` is padded (stride `padded_w`), `dy` is padded with zeros (stride `padded_out_w`).
template <std::size_t C, std::size_t O, std::size_t K, std::size_t H, std::size_t W>
void weight_grad_x(const float* in, const float* dy, float* dw) {
    using S = Shape<C, O, K, H, W>;
    constexpr std::size_t V = S::row_vectors, Wp = S::padded_w, Wd = S::padded_out_w;
    // OB output channels at once: OB · K independent accumulator chains hide the FMA latency.
    constexpr std::size_t OB = block_of(O, std::max<std::size_t>(1, register_budget / K));
    for (std::size_t o0 = 0; o0 < O; o0 += OB)
        for (std::size_t c = 0; c < C; ++c)
            for (std::size_t i = 0; i < K; ++i) {
                vfloat acc[OB][K];
#pragma GCC unroll 32
                for (std::size_t b = 0; b < OB; ++b)
#pragma GCC unroll 8
                    for (std::size_t j = 0; j < K; ++j) acc[b][j] = vfloat{};
                for (std::size_t y = 0; y < S::out_h; ++y) {
                    const float* row = in + (c * H + y + i) * Wp;
#pragma GCC unroll 8
                    for (std::size_t v = 0; v < V; ++v) {
#pragma GCC unroll 32
                        for (std::size_t b = 0; b < OB; ++b) {
                            const vfloat g = load(dy + ((o0 + b) * S::out_h + y) * Wd + v * lanes);
#pragma GCC unroll 8
                            for (std::size_t j = 0; j < K; ++j) acc[b][j] += g * load(row + j + v * lanes);
                        }
                    }
                }
                for (std::size_t b = 0; b < OB; ++b) {
                    float* target = dw + (((o0 + b) * C + c) * K + i) * K;
                    for (std::size_t j = 0; j < K; ++j) target[j] += reduce_add(acc[b][j]);
                }
            }
}

/// dwt[c][i][j][o] += Σ_y Σ_x dyt[y][x][o] · in[c][y+i][x+j], vectors along o.
/// `dyt` is the output gradient laid out [Ho][Wo][O]; `in` is unpadded.
template <std::size_t C, std::size_t O, std::size_t K, std::size_t H, std::size_t W>
void weight_grad_o(const float* in, const float* dyt, float* dwt) {
    using S = Shape<C, O, K, H, W>;
    static_assert(S::channels_in_lanes);
    constexpr std::size_t OV = O / lanes;
    for (std::size_t c = 0; c < C; ++c)
        for (std::size_t i = 0; i < K; ++i) {
            vfloat acc[K][OV];
#pragma GCC unroll 8
            for (std::size_t j = 0; j < K; ++j)
#pragma GCC unroll 8
                for (std::size_t v = 0; v < OV; ++v) acc[j][v] = load(dwt + ((c * K + i) * K + j) * O + v * lanes);
            for (std::size_t y = 0; y < S::out_h; ++y) {
                const float* row = in + (c * H + y + i) * W;
                for (std::size_t x = 0; x < S::out_w; ++x) {
                    vfloat g[OV];
#pragma GCC unroll 8
                    for (std::size_t v = 0; v < OV; ++v) g[v] = load(dyt + (y * S::out_w + x) * O + v * lanes);
#pragma GCC unroll 8
                    for (std::size_t j = 0; j < K; ++j) {
                        const vfloat xb = broadcast(row[x + j]);
#pragma GCC unroll 8
                        for (std::size_t v = 0; v < OV; ++v) acc[j][v] += xb * g[v];
                    }
                }
            }
            for (std::size_t j = 0; j < K; ++j)
                for (std::size_t v = 0; v < OV; ++v) store(dwt + ((c * K + i) * K + j) * O + v * lanes, acc[j][v]);
        }
}

}  // namespace ds::cpu::conv
