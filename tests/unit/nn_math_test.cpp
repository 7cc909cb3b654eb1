// The shared host/device layer math (ds/nn/math/) on the host, where CI can run it: the
// column form of a convolution times the weights equals the Conv2d layer, and its gradient
// gathered back equals the layer's input gradient; the window maximum keeps the first
// maximum and propagates NaN; softmax cross-entropy against closed-form values. The GPU
// tests launch the same functions and compare with these host results.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <doctest/doctest.h>

#include <ds/device/cpu/gemm.hpp>
#include <ds/nn/conv2d.hpp>
#include <ds/nn/math/im2col.hpp>
#include <ds/nn/math/max_pool.hpp>
#include <ds/nn/math/relu.hpp>
#include <ds/nn/math/softmax_cross_entropy.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace {

std::vector<float> uniform(std::size_t n, std::uint64_t seed) {
    std::vector<float> v(n);
    ds::Rng rng(seed);
    for (float& x : v) x = rng.uniform(-1.0f, 1.0f);
    return v;
}

/// Error relative to max(|want|, 1): the sums have 75 terms of size ~1 added in another
/// order (direct convolution against GEMM), so values that cancel carry ~1e-6 absolute.
double worst_relative(const std::vector<float>& got, const std::vector<float>& want) {
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, std::abs(double(got[i]) - want[i]) / std::max(std::abs(double(want[i])), 1.0));
    return worst;
}

}  // namespace

TEST_SUITE("nn") {

TEST_CASE("im2col: weight × columns is the Conv2d layer; the gathered column gradient is its input gradient") {
    constexpr std::size_t C = 3, O = 6, K = 5, H = 12, W = 11, batch = 3;
    using Layer = ds::nn::Conv2d<C, O, K>::Bound<ds::nn::Image<C, H, W>>;
    using Cols = ds::nn::math::Im2Col<C, H, W, K>;
    const auto x = uniform(batch * C * H * W, 1);
    const auto w = uniform(O * C * K * K + O, 2);
    const auto dy = uniform(batch * O * Cols::cols, 3);
    Layer layer;
    layer.reserve(batch);
    std::vector<float> y(batch * O * Cols::cols), dx(batch * C * H * W), dw(w.size(), 0.0f);
    layer.forward(x.data(), y.data(), batch, w.data());
    auto dy_copy = dy;
    layer.backward(x.data(), y.data(), dy_copy.data(), dx.data(), batch, w.data(), dw.data());

    std::vector<float> col(batch * Cols::col_size);
    for (std::size_t i = 0; i < col.size(); ++i) Cols::gather(i, x.data(), col.data());
    std::vector<float> out(y.size()), dcol(col.size()), back(dx.size());
    for (std::size_t b = 0; b < batch; ++b) {
        float* ob = out.data() + b * O * Cols::cols;
        for (std::size_t o = 0; o < O; ++o)
            for (std::size_t p = 0; p < Cols::cols; ++p) ob[o * Cols::cols + p] = w[O * C * K * K + o];
        ds::cpu::gemm(ds::cpu::Op::none, ds::cpu::Op::none, O, Cols::cols, Cols::rows, 1.0f, w.data(), Cols::rows,
                      col.data() + b * Cols::col_size, Cols::cols, 1.0f, ob, Cols::cols);
        // d col = weightᵀ · dy
        ds::cpu::gemm(ds::cpu::Op::transpose, ds::cpu::Op::none, Cols::rows, Cols::cols, O, 1.0f, w.data(), Cols::rows,
                      dy.data() + b * O * Cols::cols, Cols::cols, 0.0f, dcol.data() + b * Cols::col_size, Cols::cols);
    }
    CHECK(worst_relative(out, y) < 1e-5);
    for (std::size_t i = 0; i < back.size(); ++i) Cols::scatter_back(i, dcol.data(), back.data());
    CHECK(worst_relative(back, dx) < 1e-5);
}

TEST_CASE("batched im2col: one GEMM over the batch's columns, then BatchRows, is the Conv2d layer; and back") {
    // The CUDA Conv2d's sequence, run on the host: gather_batch, weight × col, to_images
    // (+ bias); backward: to_rows, dW = dY'·colᵀ, db = Σ dY', dcol = Wᵀ·dY', scatter_back_batch.
    constexpr std::size_t C = 3, O = 6, K = 5, H = 12, W = 11, batch = 3;
    using Layer = ds::nn::Conv2d<C, O, K>::Bound<ds::nn::Image<C, H, W>>;
    using Cols = ds::nn::math::Im2Col<C, H, W, K>;
    using Rows = ds::nn::math::BatchRows<O, Cols::cols>;
    constexpr std::size_t F = Cols::rows, BP = batch * Cols::cols;
    const auto x = uniform(batch * C * H * W, 4);
    const auto w = uniform(O * F + O, 5);
    const auto dy = uniform(batch * O * Cols::cols, 6);
    Layer layer;
    layer.reserve(batch);
    std::vector<float> y(batch * O * Cols::cols), dx(x.size()), dw(w.size(), 0.0f);
    layer.forward(x.data(), y.data(), batch, w.data());
    auto dy_copy = dy;
    layer.backward(x.data(), y.data(), dy_copy.data(), dx.data(), batch, w.data(), dw.data());

    std::vector<float> col(F * BP), rows(O * BP), out(y.size());
    for (std::size_t i = 0; i < col.size(); ++i) Cols::gather_batch(i, x.data(), col.data(), batch);
    ds::cpu::gemm(ds::cpu::Op::none, ds::cpu::Op::none, O, BP, F, 1.0f, w.data(), F, col.data(), BP, 0.0f, rows.data(), BP);
    for (std::size_t i = 0; i < out.size(); ++i) Rows::to_images(i, rows.data(), w.data() + O * F, out.data(), batch);
    CHECK(worst_relative(out, y) < 1e-5);

    std::vector<float> d_rows(O * BP), grads(w.size(), 0.0f), dcol(col.size()), back(dx.size());
    for (std::size_t i = 0; i < d_rows.size(); ++i) Rows::to_rows(i, dy.data(), d_rows.data(), batch);
    ds::cpu::gemm(ds::cpu::Op::none, ds::cpu::Op::transpose, O, F, BP, 1.0f, d_rows.data(), BP, col.data(), BP, 0.0f,
                  grads.data(), F);
    for (std::size_t o = 0; o < O; ++o)
        for (std::size_t j = 0; j < BP; ++j) grads[O * F + o] += d_rows[o * BP + j];
    ds::cpu::gemm(ds::cpu::Op::transpose, ds::cpu::Op::none, F, BP, O, 1.0f, w.data(), F, d_rows.data(), BP, 0.0f,
                  dcol.data(), BP);
    for (std::size_t i = 0; i < back.size(); ++i) Cols::scatter_back_batch(i, dcol.data(), back.data(), batch);
    CHECK(worst_relative(grads, dw) < 1e-5);
    CHECK(worst_relative(back, dx) < 1e-5);
}

TEST_CASE("window maximum: the first maximum wins, NaN propagates, rows are strided") {
    // A 3×3 window inside rows of 5: ties at 2 and 6 → position 2; then a NaN at position 4.
    std::vector<float> image{1, 0, 7, 9, 9, 3, 5, 2, 9, 9, 7, 1, 0, 9, 9};
    auto best = ds::nn::math::window_max<3>(image.data(), 5);
    CHECK(best.value == 7.0f);
    CHECK(best.at == 2);
    image[6] = std::numeric_limits<float>::quiet_NaN();  // row 1, column 1: position 4
    best = ds::nn::math::window_max<3>(image.data(), 5);
    CHECK(std::isnan(best.value));
    CHECK(best.at == 4);
    CHECK(ds::nn::math::relu(-0.5f) == 0.0f);
    CHECK(ds::nn::math::relu(2.5f) == 2.5f);
    CHECK(ds::nn::math::relu_backward(0.0f, 3.0f) == 0.0f);
    CHECK(ds::nn::math::relu_backward(1.0f, 3.0f) == 3.0f);
}

TEST_CASE("softmax cross-entropy against closed form: log Σ e^z − z_label, (softmax − onehot) / batch") {
    // z = (0, ln 2, ln 3): softmax = (1, 2, 3) / 6, loss for label 1 = ln 6 − ln 2 = ln 3.
    const float z[3] = {0.0f, std::log(2.0f), std::log(3.0f)};
    float grad[3];
    const double loss = ds::nn::math::softmax_cross_entropy(z, 3, 1, 4, grad);
    CHECK(loss == doctest::Approx(std::log(3.0)).epsilon(1e-7));
    CHECK(grad[0] == doctest::Approx(1.0 / 6 / 4).epsilon(1e-6));
    CHECK(grad[1] == doctest::Approx((2.0 / 6 - 1) / 4).epsilon(1e-6));
    CHECK(grad[2] == doctest::Approx(3.0 / 6 / 4).epsilon(1e-6));
    // Huge logits stay finite: the maximum is subtracted first.
    const float big[2] = {1e30f, 0.0f};
    CHECK(ds::nn::math::softmax_cross_entropy(big, 2, 1, 1, grad) == doctest::Approx(1e30));
    CHECK(std::isfinite(grad[0]));
}

}  // TEST_SUITE
