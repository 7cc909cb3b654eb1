// The CUDA backend's kernels against the CPU backend on fresh random data: the fused
// optimizer update (Adam, AdamW, Lion, SGD; fp32/bf16/fp16 gradients; fp32/bf16/fp16
// compute copies) and `cuda::FlatOptimizer` stepping two parts, the float64 squared norm and
// its overflow signal, the casts, the layer
// kernels (im2col/col2im, max pool, ReLU, softmax cross-entropy) against host runs of the
// same shared math (tests/unit/nn_math_test.cpp ties that math to the CPU layers), cuBLASLt
// products (fp32, TF32, bf16, fp16; every transpose; bias and bias+ReLU epilogues) against
// a float64 product, the caching allocator's reuse and CudaError's message.
// Without a CUDA device it prints "skipped: no CUDA device" and exits 77 (CTest: skipped).
#define DOCTEST_CONFIG_IMPLEMENT
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <doctest/doctest.h>

#include "device_or_skip.hpp"

#include <cuda_runtime_api.h>

#include <ds/device/cuda/convert.cuh>
#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/flat_optimizer.cuh>
#include <ds/device/cuda/gemm.hpp>
#include <ds/device/cuda/layer_kernels.cuh>
#include <ds/device/cuda/memory.hpp>
#include <ds/device/cuda/optimizer_step.cuh>
#include <ds/device/cuda/reduce.cuh>
#include <ds/device/cuda/stream.hpp>
#include <ds/engine/flat_optimizer.hpp>
#include <ds/optim/adam.hpp>
#include <ds/optim/lion.hpp>
#include <ds/optim/sgd.hpp>
#include <ds/util/rng.hpp>

namespace {

template <class T>
std::vector<T> random_values(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
    ds::Rng rng(seed);
    std::vector<T> v(n);
    for (auto& x : v) x = T(rng.uniform(-scale, scale));
    return v;
}

template <class T>
ds::cuda::DeviceBuffer<T> to_device(const std::vector<T>& host) {
    ds::cuda::DeviceBuffer<T> d(host.size());
    d.copy_from(host);
    return d;
}
template <class T>
std::vector<T> to_host(const ds::cuda::DeviceBuffer<T>& d) {
    std::vector<T> host(d.size());
    d.copy_to(host);
    return host;
}

double relative(double got, double expected, double floor = 1e-3) {
    return std::abs(got - expected) / std::max(std::abs(expected), floor);
}

/// Three steps of `Opt` on the GPU and with `FlatOptimizer` on the CPU, gradients in G
/// scaled by 1/8 (unscale+clip), compute copy in T.
template <class Opt, class G, class T>
void check_optimizer_step() {
    constexpr std::size_t n = 100'003;  // not a multiple of the block size
    constexpr std::size_t S = Opt::state_buffers;
    const float factor = 0.125f;
    auto params = random_values<float>(n, 1);
    std::vector<float> cpu_params = params;
    ds::FlatOptimizer<Opt> cpu(Opt::defaults, n);
    ds::cuda::DeviceBuffer<float> d_params = to_device(params);
    ds::cuda::DeviceBuffer<T> d_compute(n);
    std::vector<ds::cuda::DeviceBuffer<float>> d_states;
    ds::cuda::StatePointers<S> states{};
    for (std::size_t k = 0; k < S; ++k) {
        d_states.push_back(to_device(std::vector<float>(n, 0.0f)));
        states.at[k] = d_states.back().data();
    }
    const std::vector<ds::Segment> whole{{0, n}};
    for (std::int64_t step = 1; step <= 3; ++step) {
        const auto grads = random_values<G>(n, 10 + static_cast<std::uint64_t>(step), 4.0f);
        const auto d_grads = to_device(grads);
        cpu.step(cpu_params.data(), grads.data(), factor, 1e-2, std::nullopt, std::nullopt, whole);
        const auto update = Opt::update(Opt::defaults, 1e-2, step);
        ds::cuda::optimizer_step<S>(update, d_params.data(), std::is_same_v<T, float> ? nullptr : d_compute.data(),
                                    d_grads.data(), factor, states, n, nullptr);
    }
    const auto got = to_host(d_params);
    double worst = 0;
    for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, relative(got[i], cpu_params[i]));
    CHECK(worst < 1e-5);  // the same functor; FMA contraction may differ between g++ and nvcc
    if constexpr (!std::is_same_v<T, float>) {
        const auto compute = to_host(d_compute);
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < n; ++i) mismatches += compute[i].bits != T(got[i]).bits;
        CHECK(mismatches == 0);  // the compute copy is the rounding of the fp32 value, in the same pass
    }
}

/// `cuda::FlatOptimizer` over two parts (a model with experts has two) against
/// `ds::FlatOptimizer` over the same parts: 3 steps with a clip factor and, on the second,
/// OneCycle-style β overrides; the states follow the parts end to end on both.
template <class G, class T>
void check_flat_optimizer_parts() {
    using Opt = ds::Adam<>;
    constexpr std::size_t first = 1'000, second = 777;
    auto params = random_values<float>(first + second, 21);
    std::vector<float> cpu_params = params;
    ds::FlatOptimizer<Opt> cpu(Opt::defaults, first + second);
    ds::cuda::Stream stream;
    ds::cuda::FlatOptimizer<Opt> gpu(Opt::defaults, first + second, stream);
    auto d_params = to_device(params);
    ds::cuda::DeviceBuffer<T> d_compute(first + second);
    for (int step = 1; step <= 3; ++step) {
        const auto grads = random_values<G>(first + second, 30 + static_cast<std::uint64_t>(step), 2.0f);
        const auto d_grads = to_device(grads);
        DS_CUDA_CHECK(cudaDeviceSynchronize());  // legacy-stream copies before `stream` reads them
        const std::optional<double> beta1 = step == 2 ? std::optional(0.8) : std::nullopt;
        const std::optional<double> beta2 = step == 2 ? std::optional(0.99) : std::nullopt;
        const ds::ShardPart<G> cpu_parts[2] = {{cpu_params.data(), grads.data(), first},
                                               {cpu_params.data() + first, grads.data() + first, second}};
        cpu.step(std::span<const ds::ShardPart<G>>(cpu_parts), 0.5f, 1e-2, beta1, beta2, std::span<const ds::Segment>{});
        const ds::ShardPart<G> gpu_parts[2] = {{d_params.data(), d_grads.data(), first},
                                               {d_params.data() + first, d_grads.data() + first, second}};
        T* const copies[2] = {d_compute.data(), d_compute.data() + first};
        if constexpr (std::is_same_v<T, float>)
            gpu.step(std::span<const ds::ShardPart<G>>(gpu_parts), 0.5f, 1e-2, beta1, beta2);
        else
            gpu.step(std::span<const ds::ShardPart<G>>(gpu_parts), 0.5f, 1e-2, beta1, beta2, {},
                     std::span<T* const>(copies));
        stream.synchronize();
    }
    CHECK(gpu.step_count() == cpu.step_count());
    const auto got = to_host(d_params);
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, relative(got[i], cpu_params[i]));
    CHECK(worst < 1e-5);
    const auto m = gpu.state(0);
    worst = 0;
    for (std::size_t i = 0; i < m.size(); ++i) worst = std::max(worst, relative(m[i], cpu.state(0)[i]));
    CHECK(worst < 1e-5);
    if constexpr (!std::is_same_v<T, float>) {
        const auto compute = to_host(d_compute);
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < got.size(); ++i) mismatches += compute[i].bits != T(got[i]).bits;
        CHECK(mismatches == 0);
    }
}

/// A float64 reference of row-major op(A)·op(B) (+bias, ReLU) from the operands as stored.
template <class T>
std::vector<double> reference_product(ds::cuda::Op op_a, ds::cuda::Op op_b, std::size_t m, std::size_t n,
                                      std::size_t k, const std::vector<T>& a, const std::vector<T>& b,
                                      const std::vector<T>& bias, ds::cuda::Epilogue e) {
    std::vector<double> c(m * n);
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            double s = 0;
            for (std::size_t l = 0; l < k; ++l) {
                const double x = static_cast<float>(op_a == ds::cuda::Op::none ? a[i * k + l] : a[l * m + i]);
                const double y = static_cast<float>(op_b == ds::cuda::Op::none ? b[l * n + j] : b[j * k + l]);
                s += x * y;
            }
            if (e != ds::cuda::Epilogue::none) s += static_cast<float>(bias[j]);
            if (e == ds::cuda::Epilogue::relu_bias) s = std::max(s, 0.0);
            c[i * n + j] = s;
        }
    return c;
}

/// Every transpose and epilogue, twice: tight leading dimensions and 256-byte-aligned
/// operands with beta 0; then padded leading dimensions, operands one element off alignment
/// (as views into flat parameter buffers are) and beta 0.5 accumulating into C. The bias
/// stays 16-byte aligned (cuBLASLt's epilogue needs it; a misaligned one is refused).
template <class T>
void check_gemm(bool tf32, double tolerance) {
    using ds::cuda::Epilogue;
    using ds::cuda::Op;
    ds::cuda::Gemm gemm;
    gemm.use_tf32 = tf32;
    const std::size_t m = 67, n = 48, k = 129;
    for (const bool padded : {false, true})
        for (Op op_a : {Op::none, Op::transpose})
            for (Op op_b : {Op::none, Op::transpose})
                for (Epilogue e : {Epilogue::none, Epilogue::bias, Epilogue::relu_bias}) {
                    const std::size_t pad = padded ? 3 : 0, shift = padded ? 1 : 0;
                    const float beta = padded ? 0.5f : 0.0f;
                    const std::size_t a_rows = op_a == Op::none ? m : k, a_cols = op_a == Op::none ? k : m;
                    const std::size_t b_rows = op_b == Op::none ? k : n, b_cols = op_b == Op::none ? n : k;
                    const std::size_t lda = a_cols + pad, ldb = b_cols + pad, ldc = n + pad;
                    const auto a = random_values<T>(a_rows * a_cols, 3);
                    const auto b = random_values<T>(b_rows * b_cols, 4);
                    const auto bias = random_values<T>(n, 5);
                    const auto c0 = random_values<T>(m * n, 6);
                    auto expected = reference_product(op_a, op_b, m, n, k, a, b, bias, e);
                    if (padded) {  // cuBLASLt adds beta·C before the epilogue: relu(αAB + βC + bias)
                        const auto product = reference_product(op_a, op_b, m, n, k, a, b, bias, Epilogue::none);
                        for (std::size_t i = 0; i < m * n; ++i) {
                            double v = product[i] + beta * static_cast<float>(c0[i]);
                            if (e != Epilogue::none) v += static_cast<float>(bias[i % n]);
                            if (e == Epilogue::relu_bias) v = std::max(v, 0.0);
                            expected[i] = v;
                        }
                    }
                    // Strided copies into device buffers, `shift` elements in.
                    std::vector<T> a_s(shift + a_rows * lda), b_s(shift + b_rows * ldb), c_s(shift + m * ldc);
                    for (std::size_t r = 0; r < a_rows; ++r)
                        for (std::size_t c = 0; c < a_cols; ++c) a_s[shift + r * lda + c] = a[r * a_cols + c];
                    for (std::size_t r = 0; r < b_rows; ++r)
                        for (std::size_t c = 0; c < b_cols; ++c) b_s[shift + r * ldb + c] = b[r * b_cols + c];
                    for (std::size_t r = 0; r < m; ++r)
                        for (std::size_t c = 0; c < n; ++c) c_s[shift + r * ldc + c] = c0[r * n + c];
                    const std::size_t bias_shift = padded ? 16 / sizeof(T) : 0;
                    std::vector<T> bias_s(bias_shift + n);
                    for (std::size_t j = 0; j < n; ++j) bias_s[bias_shift + j] = bias[j];
                    const auto d_a = to_device(a_s), d_b = to_device(b_s), d_bias = to_device(bias_s);
                    auto d_c = to_device(c_s);
                    gemm(op_a, op_b, m, n, k, 1.0f, d_a.data() + shift, lda, d_b.data() + shift, ldb, beta,
                         d_c.data() + shift, ldc, nullptr, e, e == Epilogue::none ? nullptr : d_bias.data() + bias_shift);
                    if (e != Epilogue::none && padded)
                        CHECK_THROWS_AS(gemm(op_a, op_b, m, n, k, 1.0f, d_a.data() + shift, lda, d_b.data() + shift,
                                             ldb, beta, d_c.data() + shift, ldc, nullptr, e, d_bias.data() + 1),
                                        std::invalid_argument);
                    const auto got = to_host(d_c);
                    double worst = 0;
                    for (std::size_t r = 0; r < m; ++r)
                        for (std::size_t c = 0; c < n; ++c)
                            worst = std::max(worst, relative(static_cast<float>(got[shift + r * ldc + c]),
                                                             expected[r * n + c], 1.0));
                    INFO("padded " << padded << ", op_a " << int(op_a) << ", op_b " << int(op_b) << ", epilogue "
                                   << int(e));
                    CHECK(worst < tolerance);
                }
    CHECK(gemm.cached_plans() == 24);
}

/// 2-byte operands with an fp32 output: the sums unrounded (the 2-byte layers add their bias
/// to them before rounding once), a plan of their own beside the 2-byte output's.
template <class T>
void check_fp32_output() {
    using ds::cuda::Op;
    ds::cuda::Gemm gemm;
    const std::size_t m = 33, n = 40, k = 65;
    const auto a = random_values<T>(m * k, 7), b = random_values<T>(n * k, 8), none = random_values<T>(n, 9);
    const auto expected = reference_product(Op::none, Op::transpose, m, n, k, a, b, none, ds::cuda::Epilogue::none);
    const auto d_a = to_device(a), d_b = to_device(b);
    ds::cuda::DeviceBuffer<float> wide(m * n);
    ds::cuda::DeviceBuffer<T> narrow(m * n);
    gemm(Op::none, Op::transpose, m, n, k, 1.0f, d_a.data(), k, d_b.data(), k, 0.0f, wide.data(), n, nullptr);
    gemm(Op::none, Op::transpose, m, n, k, 1.0f, d_a.data(), k, d_b.data(), k, 0.0f, narrow.data(), n, nullptr);
    const auto got = to_host(wide);
    const auto rounded = to_host(narrow);
    double worst = 0, worst_rounded = 0;
    for (std::size_t i = 0; i < m * n; ++i) {
        worst = std::max(worst, relative(got[i], expected[i], 1.0));
        worst_rounded = std::max(worst_rounded, relative(static_cast<float>(rounded[i]), expected[i], 1.0));
    }
    CHECK(worst < 1e-5);              // fp32 sums of exact 2-byte products
    CHECK(worst_rounded > worst);     // the 2-byte output did round
    CHECK(gemm.cached_plans() == 2);  // one plan per output type
}

}  // namespace

TEST_SUITE("gpu") {

TEST_CASE("fused optimizer update equals the CPU backend's, and writes the compute copy in the same pass") {
    check_optimizer_step<ds::Adam<>, float, float>();
    check_optimizer_step<ds::AdamW<>, ds::bf16, ds::bf16>();
    check_optimizer_step<ds::Adam<>, ds::half, ds::half>();
    check_optimizer_step<ds::Lion<>, ds::bf16, ds::bf16>();
    check_optimizer_step<ds::SGD<ds::SgdHyper{.lr = 1e-2, .momentum = 0.9}>, float, float>();
}

TEST_CASE("squared norm in float64 equals the host's; an inf or NaN makes it non-finite") {
    const auto x = random_values<float>(1'000'001, 7);
    double expected = 0;
    for (float v : x) expected += double(v) * v;
    auto d = to_device(x);
    const double got = ds::cuda::square_sum(d.data(), x.size(), nullptr);
    CHECK(relative(got, expected) < 1e-12);
    CHECK(ds::cuda::square_sum(d.data(), x.size(), nullptr) == got);  // deterministic
    const auto h = random_values<ds::bf16>(4097, 8);
    double expected_h = 0;
    for (auto v : h) expected_h += double(static_cast<float>(v)) * static_cast<float>(v);
    CHECK(relative(ds::cuda::square_sum(to_device(h).data(), h.size(), nullptr), expected_h) < 1e-12);
    auto with_inf = x;
    with_inf[123'456] = INFINITY;
    CHECK(!std::isfinite(ds::cuda::square_sum(to_device(with_inf).data(), x.size(), nullptr)));
    with_inf[123'456] = NAN;
    CHECK(std::isnan(ds::cuda::square_sum(to_device(with_inf).data(), x.size(), nullptr)));
}

TEST_CASE("casts round as the host types do") {
    auto x = random_values<float>(65'537, 9, 70000.0f);  // beyond fp16's range too
    x[0] = NAN;
    x[1] = -INFINITY;
    const auto d = to_device(x);
    ds::cuda::DeviceBuffer<ds::bf16> b(x.size());
    ds::cuda::DeviceBuffer<ds::half> h(x.size());
    ds::cuda::convert(d.data(), b.data(), x.size(), nullptr);
    ds::cuda::convert(d.data(), h.data(), x.size(), nullptr);
    const auto got_b = to_host(b);
    const auto got_h = to_host(h);
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < x.size(); ++i)
        mismatches += (got_b[i].bits != ds::bf16(x[i]).bits) + (got_h[i].bits != ds::half(x[i]).bits);
    CHECK(mismatches == 0);
}

TEST_CASE("cuBLASLt products against float64, row-major, every transpose and epilogue") {
    check_gemm<float>(false, 1e-5);
    check_gemm<float>(true, 1e-2);  // TF32: 10-bit mantissas (worst about 3.6e-3 on this data)
    check_gemm<ds::bf16>(false, 1e-2);  // output rounded to bf16
    check_gemm<ds::half>(false, 2e-3);
    check_fp32_output<ds::bf16>();
    check_fp32_output<ds::half>();
}

TEST_CASE("layer kernels give the host's results of the same shared math") {
    constexpr std::size_t C = 6, H = 28, W = 28, K = 5, S = 2, batch = 5;
    using Cols = ds::nn::math::Im2Col<C, H, W, K>;
    const auto x = random_values<float>(batch * C * H * W, 21);
    // The batch's columns and their gradient: exact (the same loads and the same order of additions).
    std::vector<float> col(batch * Cols::col_size), back(x.size());
    for (std::size_t i = 0; i < col.size(); ++i) Cols::gather_batch(i, x.data(), col.data(), batch);
    for (std::size_t i = 0; i < back.size(); ++i) Cols::scatter_back_batch(i, col.data(), back.data(), batch);
    const auto d_x = to_device(x);
    ds::cuda::DeviceBuffer<float> d_col(col.size()), d_back(back.size());
    ds::cuda::im2col_batch<C, H, W, K>(d_x.data(), d_col.data(), batch, nullptr);
    ds::cuda::col2im_batch<C, H, W, K>(d_col.data(), d_back.data(), batch, nullptr);
    CHECK(to_host(d_col) == col);
    CHECK(to_host(d_back) == back);
    // fp32 columns' gradient into a bf16 input gradient (the 2-byte conv's backward): the K²
    // overlapping columns summed in fp32 and rounded once, bit for bit as on the host.
    std::vector<ds::bf16> back16(x.size());
    for (std::size_t i = 0; i < back16.size(); ++i) Cols::scatter_back_batch(i, col.data(), back16.data(), batch);
    ds::cuda::DeviceBuffer<ds::bf16> d_back16(back16.size());
    ds::cuda::col2im_batch<C, H, W, K>(d_col.data(), d_back16.data(), batch, nullptr);
    const auto got16 = to_host(d_back16);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < got16.size(); ++i) differ += got16[i].bits != back16[i].bits;
    CHECK(differ == 0);
    // Max pooling forward and backward on 27 × 27 (the last row and column are in no
    // window: their gradient is 0), with a NaN in one window.
    constexpr std::size_t PH = 27, PW = 27;
    auto xn = random_values<float>(batch * C * PH * PW, 25);
    xn[777] = NAN;
    constexpr std::size_t OH = PH / S, OW = PW / S;
    std::vector<float> y(batch * C * OH * OW), dx(xn.size(), 0.0f);
    std::vector<std::uint8_t> at(y.size());
    for (std::size_t plane = 0; plane < batch * C; ++plane)
        for (std::size_t oy = 0; oy < OH; ++oy)
            for (std::size_t ox = 0; ox < OW; ++ox) {
                const auto best = ds::nn::math::window_max<S>(xn.data() + plane * PH * PW + oy * S * PW + ox * S, PW);
                y[(plane * OH + oy) * OW + ox] = best.value;
                at[(plane * OH + oy) * OW + ox] = best.at;
            }
    const auto dy = random_values<float>(y.size(), 22);
    for (std::size_t o = 0; o < y.size(); ++o) {
        const std::size_t plane = o / (OH * OW), oy = o / OW % OH, ox = o % OW;
        dx[plane * PH * PW + (oy * S + at[o] / S) * PW + ox * S + at[o] % S] = dy[o];
    }
    const auto d_xn = to_device(xn), d_dy = to_device(dy);
    ds::cuda::DeviceBuffer<float> d_y(y.size()), d_dx(dx.size());
    ds::cuda::DeviceBuffer<std::uint8_t> d_at(at.size());
    ds::cuda::max_pool_forward<C, PH, PW, S>(d_xn.data(), d_y.data(), d_at.data(), batch, nullptr);
    ds::cuda::max_pool_backward<C, PH, PW, S>(d_dy.data(), d_at.data(), d_dx.data(), batch, nullptr);
    const auto got_y = to_host(d_y);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < y.size(); ++i) wrong += !(got_y[i] == y[i] || (std::isnan(got_y[i]) && std::isnan(y[i])));
    CHECK(wrong == 0);
    CHECK(to_host(d_at) == at);
    CHECK(to_host(d_dx) == dx);
    // ReLU both ways.
    std::vector<float> r(x.size()), dr(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) r[i] = ds::nn::math::relu(x[i]);
    const auto g = random_values<float>(x.size(), 23);
    for (std::size_t i = 0; i < x.size(); ++i) dr[i] = ds::nn::math::relu_backward(r[i], g[i]);
    ds::cuda::DeviceBuffer<float> d_r(r.size()), d_dr(dr.size());
    const auto d_g = to_device(g);
    ds::cuda::relu_forward(d_x.data(), d_r.data(), x.size(), nullptr);
    ds::cuda::relu_backward(d_r.data(), d_g.data(), d_dr.data(), x.size(), nullptr);
    CHECK(to_host(d_r) == r);
    CHECK(to_host(d_dr) == dr);
    // Softmax cross-entropy: the device's exp and log may differ from the host's in the last bit.
    constexpr std::size_t classes = 10, samples = 64;
    const auto logits = random_values<float>(samples * classes, 24, 8.0f);
    std::vector<std::int32_t> labels(samples);
    for (std::size_t b = 0; b < samples; ++b) labels[b] = static_cast<std::int32_t>((b * 7) % classes);
    std::vector<double> losses(samples);
    std::vector<float> grad(logits.size());
    for (std::size_t b = 0; b < samples; ++b)
        losses[b] = ds::nn::math::softmax_cross_entropy(logits.data() + b * classes, classes, labels[b], samples,
                                                        grad.data() + b * classes);
    const auto d_logits = to_device(logits);
    const auto d_labels = to_device(labels);
    ds::cuda::DeviceBuffer<double> d_losses(samples);
    ds::cuda::DeviceBuffer<float> d_grad(grad.size());
    ds::cuda::softmax_cross_entropy(d_logits.data(), d_labels.data(), classes, samples, d_losses.data(), d_grad.data(),
                                    nullptr);
    const auto got_losses = to_host(d_losses);
    const auto got_grad = to_host(d_grad);
    double worst = 0;
    for (std::size_t b = 0; b < samples; ++b) worst = std::max(worst, relative(got_losses[b], losses[b]));
    CHECK(worst < 1e-12);
    worst = 0;
    for (std::size_t i = 0; i < grad.size(); ++i) worst = std::max(worst, relative(got_grad[i], grad[i], 1e-6));
    CHECK(worst < 1e-5);
}

TEST_CASE("cuda::FlatOptimizer steps two parts as ds::FlatOptimizer does (fp32; bf16 gradients and copy)") {
    check_flat_optimizer_parts<float, float>();
    check_flat_optimizer_parts<ds::bf16, ds::bf16>();
}

TEST_CASE("the caching allocator reuses freed blocks; failures are CudaError with the call and the message") {
    auto& allocator = ds::cuda::CachingAllocator::current();
    allocator.release_cached();  // so no block the earlier tests freed competes with this one
    CHECK(allocator.cached_bytes() == 0);
    void* first = allocator.allocate(1000);
    allocator.deallocate(first);
    CHECK(allocator.cached_bytes() >= 1024);
    void* again = allocator.allocate(1024);  // same size class: the same block, no cudaMalloc
    CHECK(again == first);
    allocator.deallocate(again);
    try {
        (void)allocator.allocate(std::size_t{1} << 60);
        FAIL("an exabyte allocation succeeded");
    } catch (const ds::CudaError& e) {
        CHECK(e.library() == "CUDA");
        CHECK(std::string(e.what()).find("cudaMalloc") != std::string::npos);
    }
    void* p = nullptr;
    CHECK_THROWS_WITH_AS(DS_CUDA_CHECK(cudaMemcpy(&p, nullptr, 8, cudaMemcpyDeviceToHost)),
                         doctest::Contains("cudaMemcpy(&p, nullptr, 8, cudaMemcpyDeviceToHost)"), ds::CudaError);
}

}  // TEST_SUITE

int main(int argc, char** argv) {
    if (const int code = device_or_skip()) return code;
    doctest::Context context(argc, argv);
    return context.run();
}
