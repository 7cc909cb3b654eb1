// Layers against float64 references: each forward against a direct-loop implementation,
// each gradient against float64 central differences of that implementation, then the
// whole CIFAR Net (forward, loss and backward) the same way.
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <ds/nn/cross_entropy.hpp>
#include <ds/util/rng.hpp>

#include "cifar10/net.hpp"

using namespace ds::nn;
using Vec = std::vector<double>;

namespace {

Vec random_vector(std::size_t n, ds::Rng& rng, double scale = 1.0) {
    Vec v(n);
    for (auto& x : v) x = scale * rng.uniform(-1.0f, 1.0f);
    return v;
}
std::vector<float> to_float(const Vec& v) { return {v.begin(), v.end()}; }

// --- float64 reference layers (direct loops, sharing nothing with the library) -----------
Vec conv_ref(const Vec& x, const Vec& w, std::size_t batch, std::size_t c_in, std::size_t h, std::size_t wd,
             std::size_t c_out, std::size_t k) {
    const std::size_t ho = h - k + 1, wo = wd - k + 1;
    Vec y(batch * c_out * ho * wo);
    const std::size_t bias = c_out * c_in * k * k;
    for (std::size_t b = 0; b < batch; ++b)
        for (std::size_t o = 0; o < c_out; ++o)
            for (std::size_t yy = 0; yy < ho; ++yy)
                for (std::size_t xx = 0; xx < wo; ++xx) {
                    double s = w[bias + o];
                    for (std::size_t c = 0; c < c_in; ++c)
                        for (std::size_t i = 0; i < k; ++i)
                            for (std::size_t j = 0; j < k; ++j)
                                s += w[((o * c_in + c) * k + i) * k + j] * x[((b * c_in + c) * h + yy + i) * wd + xx + j];
                    y[((b * c_out + o) * ho + yy) * wo + xx] = s;
                }
    return y;
}
Vec linear_ref(const Vec& x, const Vec& w, std::size_t batch, std::size_t in, std::size_t out) {
    Vec y(batch * out);
    for (std::size_t b = 0; b < batch; ++b)
        for (std::size_t o = 0; o < out; ++o) {
            double s = w[out * in + o];
            for (std::size_t i = 0; i < in; ++i) s += w[o * in + i] * x[b * in + i];
            y[b * out + o] = s;
        }
    return y;
}
Vec pool_ref(const Vec& x, std::size_t planes, std::size_t h, std::size_t w, std::size_t s) {
    const std::size_t ho = h / s, wo = w / s;
    Vec y(planes * ho * wo);
    for (std::size_t p = 0; p < planes; ++p)
        for (std::size_t yy = 0; yy < ho; ++yy)
            for (std::size_t xx = 0; xx < wo; ++xx) {
                double m = -INFINITY;
                for (std::size_t i = 0; i < s; ++i)
                    for (std::size_t j = 0; j < s; ++j) m = std::max(m, x[(p * h + yy * s + i) * w + xx * s + j]);
                y[(p * ho + yy) * wo + xx] = m;
            }
    return y;
}
Vec relu_ref(Vec x) {
    for (auto& v : x) v = std::max(v, 0.0);
    return x;
}
double dot(const Vec& a, const Vec& b) {
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}

/// Central differences of f at v, one coordinate at a time, in float64.
Vec numeric_gradient(const std::function<double(const Vec&)>& f, Vec v, double eps = 1e-6) {
    Vec g(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
        const double saved = v[i];
        v[i] = saved + eps;
        const double up = f(v);
        v[i] = saved - eps;
        const double down = f(v);
        v[i] = saved;
        g[i] = (up - down) / (2 * eps);
    }
    return g;
}

void check_close(const std::vector<float>& got, const Vec& expected, double tolerance, const char* what) {
    REQUIRE(got.size() == expected.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
        INFO(what << "[" << i << "]");
        CHECK(got[i] == doctest::Approx(expected[i]).epsilon(tolerance).scale(1.0));
    }
}

/// Forward and backward of bound layer L on `batch` random samples, against `reference`
/// (x, w → y in float64): y, dL/dw and dL/dx for L = Σ y ⊙ r with random r.
template <class L>
void check_layer(std::size_t batch, const std::function<Vec(const Vec&, const Vec&)>& reference) {
    ds::Rng rng(7);
    std::size_t n_params = 0;
    for (const auto& p : L::params) n_params += p.shape.numel();
    const Vec x = random_vector(batch * L::input_shape::size, rng);
    const Vec w = random_vector(n_params, rng, 0.5);
    const Vec r = random_vector(batch * L::output_shape::size, rng);
    L layer{};
    layer.reserve(batch);
    auto xf = to_float(x), wf = to_float(w), rf = to_float(r);
    std::vector<float> y(r.size()), dx(x.size(), -1.0f), dw(n_params, 0.0f);
    layer.forward(xf.data(), y.data(), batch, wf.data());
    check_close(y, reference(x, w), 1e-5, "forward");
    layer.backward(xf.data(), y.data(), rf.data(), dx.data(), batch, wf.data(), dw.data());
    check_close(dx, numeric_gradient([&](const Vec& xv) { return dot(reference(xv, w), r); }, x), 1e-4, "dx");
    if (n_params) check_close(dw, numeric_gradient([&](const Vec& wv) { return dot(reference(x, wv), r); }, w), 1e-4, "dw");
    // A second backward accumulates into dw.
    std::vector<float> dw_twice = dw;
    layer.backward(xf.data(), y.data(), rf.data(), dx.data(), batch, wf.data(), dw_twice.data());
    for (std::size_t i = 0; i < n_params; ++i) CHECK(dw_twice[i] == doctest::Approx(2 * dw[i]));
}

}  // namespace

TEST_SUITE("nn") {

TEST_CASE("Conv2d forward and gradients match float64 direct convolution") {
    using L = Conv2d<2, 3, 3>::Bound<Image<2, 6, 5>>;
    static_assert(std::is_same_v<L::output_shape, Image<3, 4, 3>>);
    check_layer<L>(2, [](const Vec& x, const Vec& w) { return conv_ref(x, w, 2, 2, 6, 5, 3, 3); });
}

TEST_CASE("Linear forward and gradients match float64, on flat and image inputs") {
    check_layer<Linear<7, 4>::Bound<Features<7>>>(3, [](const Vec& x, const Vec& w) { return linear_ref(x, w, 3, 7, 4); });
    check_layer<Linear<8, 3>::Bound<Image<2, 2, 2>>>(2, [](const Vec& x, const Vec& w) { return linear_ref(x, w, 2, 8, 3); });
}

TEST_CASE("MaxPool2d forward and gradient match float64, odd edges dropped") {
    using L = MaxPool2d<2>::Bound<Image<2, 5, 6>>;
    static_assert(std::is_same_v<L::output_shape, Image<2, 2, 3>>);
    check_layer<L>(2, [](const Vec& x, const Vec&) { return pool_ref(x, 4, 5, 6, 2); });
}

TEST_CASE("ReLU and Flatten forward and gradients") {
    check_layer<ReLU::Bound<Features<40>>>(2, [](const Vec& x, const Vec&) { return relu_ref(x); });
    using F = Flatten::Bound<Image<2, 3, 4>>;
    static_assert(std::is_same_v<F::output_shape, Features<24>>);
    check_layer<F>(2, [](const Vec& x, const Vec&) { return x; });
}

TEST_CASE("CrossEntropyLoss: value and gradient against float64, stable for huge logits") {
    ds::Rng rng(3);
    const std::size_t batch = 4, classes = 5;
    const Vec z = random_vector(batch * classes, rng, 3.0);
    const std::vector<std::int32_t> labels{0, 4, 2, 2};
    auto reference = [&](const Vec& logits) {
        double total = 0;
        for (std::size_t b = 0; b < batch; ++b) {
            double sum = 0;
            for (std::size_t c = 0; c < classes; ++c) sum += std::exp(logits[b * classes + c]);
            total += std::log(sum) - logits[b * classes + labels[b]];
        }
        return total / batch;
    };
    const auto zf = to_float(z);
    const auto loss = CrossEntropyLoss{classes}(zf, labels);
    CHECK(loss.value == doctest::Approx(reference(z)).epsilon(1e-6));
    check_close(loss.grad_output, numeric_gradient(reference, z), 1e-5, "dlogits");

    const std::vector<float> huge{1e4f, -1e4f, 0.0f};
    const auto stable = CrossEntropyLoss{3}(huge, std::vector<std::int32_t>{1});
    CHECK(stable.value == doctest::Approx(2e4));
    CHECK(std::isfinite(stable.grad_output[0]));
    CHECK_THROWS_AS(CrossEntropyLoss{3}(huge, std::vector<std::int32_t>{3}), std::out_of_range);
}

TEST_CASE("the CIFAR Net's parameters are named and laid out like PyTorch's state_dict") {
    using Net = cifar10::CifarNet;
    static_assert(Net::param_count == 62006);
    static_assert(cifar10::FashionMnistNet::param_count == 44426);  // fc1 is 256 -> 120
    const char* names[] = {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight",
                           "fc1.bias",     "fc2.weight", "fc2.bias",     "fc3.weight", "fc3.bias"};
    REQUIRE(Net::parameters.size() == 10);
    std::size_t offset = 0;
    for (std::size_t i = 0; i < 10; ++i) {
        CHECK(Net::parameters[i].name() == names[i]);
        CHECK(Net::parameters[i].offset == offset);
        offset += Net::parameters[i].numel();
    }
    static_assert(Net::parameters[0].shape.rank == 4 && Net::parameters[0].shape.dims[1] == 3);
    static_assert(Net::parameters[4].shape.dims[0] == 120 && Net::parameters[4].shape.dims[1] == 400);
    static_assert(std::is_same_v<Net::output_shape, Features<10>>);
}

TEST_CASE("initialisation is PyTorch's U(±1/sqrt(fan_in)) and reproducible from the seed") {
    using Net = cifar10::CifarNet;
    std::vector<float> a(Net::param_count), b(Net::param_count), c(Net::param_count);
    ds::Rng r1(42), r2(42), r3(43);
    Net::init(a.data(), r1);
    Net::init(b.data(), r2);
    Net::init(c.data(), r3);
    CHECK(a == b);
    CHECK(a != c);
    const double fan_in[] = {75, 75, 150, 150, 400, 400, 120, 120, 84, 84};
    for (std::size_t i = 0; i < Net::parameters.size(); ++i) {
        const auto& p = Net::parameters[i];
        const double bound = 1 / std::sqrt(fan_in[i]);
        double sum = 0, max_abs = 0;
        for (std::size_t j = 0; j < p.numel(); ++j) {
            sum += a[p.offset + j];
            max_abs = std::max(max_abs, std::abs(static_cast<double>(a[p.offset + j])));
        }
        INFO(p.name());
        CHECK(max_abs <= bound);
        if (p.numel() > 1000) {
            CHECK(max_abs > 0.95 * bound);                                   // fills the range
            CHECK(std::abs(sum / p.numel()) < 0.05 * bound);                 // centred
        }
    }
}

TEST_CASE("the whole Net: forward, loss and backward against a float64 re-computation") {
    using Net = cifar10::Net<1, 16, 4>;  // a small input keeps the float64 differences quick
    constexpr std::size_t batch = 3;
    ds::Rng rng(11);
    std::vector<float> w(Net::param_count);
    Net::init(w.data(), rng);
    const Vec x = random_vector(batch * 16 * 16, rng);
    const std::vector<std::int32_t> labels{1, 3, 0};

    auto reference_loss = [&](const Vec& wv) {
        auto slice = [&](std::size_t i) {
            const auto& p = Net::parameters[i];
            return Vec(wv.begin() + p.offset, wv.begin() + p.offset + p.numel() + Net::parameters[i + 1].numel());
        };
        Vec h = relu_ref(conv_ref(x, slice(0), batch, 1, 16, 16, 6, 5));  // 6×12×12
        h = pool_ref(h, batch * 6, 12, 12, 2);                              // 6×6×6
        h = relu_ref(conv_ref(h, slice(2), batch, 6, 6, 6, 16, 5));         // 16×2×2
        h = pool_ref(h, batch * 16, 2, 2, 2);                               // 16×1×1
        h = relu_ref(linear_ref(h, slice(4), batch, 16, 120));
        h = relu_ref(linear_ref(h, slice(6), batch, 120, 84));
        h = linear_ref(h, slice(8), batch, 84, 4);
        double total = 0;
        for (std::size_t b = 0; b < batch; ++b) {
            double sum = 0;
            for (std::size_t c = 0; c < 4; ++c) sum += std::exp(h[b * 4 + c]);
            total += std::log(sum) - h[b * 4 + labels[b]];
        }
        return total / batch;
    };

    Net net(batch);
    const auto xf = to_float(x);
    const float* logits = net.forward(xf.data(), batch, w.data());
    const auto loss = CrossEntropyLoss{4}({logits, batch * 4}, labels);
    const Vec wd(w.begin(), w.end());
    CHECK(loss.value == doctest::Approx(reference_loss(wd)).epsilon(1e-5));

    std::vector<float> grads(Net::param_count, 0.0f);
    net.backward(loss.grad_output.data(), w.data(), grads.data());
    Vec probe = wd;
    for (std::size_t i = 0; i < Net::param_count; i += 37) {  // every 37th value of every tensor
        const double saved = probe[i];
        probe[i] = saved + 1e-5;
        const double up = reference_loss(probe);
        probe[i] = saved - 1e-5;
        const double down = reference_loss(probe);
        probe[i] = saved;
        INFO("parameter " << i);
        CHECK(grads[i] == doctest::Approx((up - down) / 2e-5).epsilon(1e-3).scale(1e-3));
    }
}

}  // TEST_SUITE
