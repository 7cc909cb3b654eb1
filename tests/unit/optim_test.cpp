// Optimizer math against float64 references, and the loss scaler's golden sequences (SPEC §12).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include <doctest/doctest.h>

#include <ds/optim/adam.hpp>
#include <ds/optim/lamb.hpp>
#include <ds/optim/lion.hpp>
#include <ds/optim/sgd.hpp>
#include <ds/optim/loss_scaler.hpp>
#include <ds/optim/strided_update.hpp>
#include <ds/numeric/bf16.hpp>

namespace {

/// FusedAdam's update in float64, written from SPEC §2.1 independently of AdamUpdate.
struct AdamReference {
    double p, m = 0, v = 0;
    void step(const ds::AdamHyper& h, double lr, double g, int t) {
        if (!h.adam_w_mode) g += h.weight_decay * p;
        m = h.betas[0] * m + (1 - h.betas[0]) * g;
        v = h.betas[1] * v + (1 - h.betas[1]) * g * g;
        const double bc1 = 1 - std::pow(h.betas[0], t), bc2 = 1 - std::pow(h.betas[1], t);
        const double denom = std::sqrt(v / bc2) + h.eps;
        if (h.adam_w_mode) p = p * (1 - lr * h.weight_decay);  // torch AdamW's form: same result
        p -= lr * (m / bc1) / denom;
    }
};

}  // namespace

TEST_SUITE("optim") {

/// Runs `steps` updates of optimizer O on 5 parameters with sin-shaped gradients and a
/// changing lr, next to a float64 reference taking (p, g, lr, t) per element.
template <class O, class Reference>
void check_against_reference(const typename O::Hyper& h, Reference reference, int steps = 20) {
    constexpr std::size_t n = 5;
    std::vector<float> p{0.5f, -1.25f, 3.0f, 1e-3f, 0.0f}, grad(n);
    std::vector<std::vector<float>> states(O::state_buffers, std::vector<float>(n, 0.0f));
    std::vector<float*> state_ptrs;
    for (auto& s : states) state_ptrs.push_back(s.data());
    std::vector<float> scratch(n);
    std::vector<double> p_ref(p.begin(), p.end());
    for (int t = 1; t <= steps; ++t) {
        const double lr = h.lr * (t % 3 == 0 ? 0.5 : 1.0);  // lr changes between steps, like a schedule
        for (std::size_t i = 0; i < n; ++i) grad[i] = static_cast<float>(std::sin(0.7 * t + i) * (i + 1.0));
        const auto update = O::update(h, lr, t);
        if constexpr (requires { O::per_tensor; }) {
            update.step_tensor(p.data(), grad.data(), state_ptrs.data(), scratch.data(), n);
        } else {
            for (std::size_t i = 0; i < n; ++i) update(i, p.data(), grad.data(), state_ptrs.data());
        }
        reference(p_ref, grad, lr, t);
    }
    for (std::size_t i = 0; i < n; ++i) {
        CAPTURE(i);
        CHECK(p[i] == doctest::Approx(p_ref[i]).epsilon(2e-5));
    }
}

TEST_CASE("Adam (decoupled and L2) follows a float64 reference over 20 steps") {
    for (bool decoupled : {true, false}) {
        const ds::AdamHyper h{.lr = 1e-2, .betas = {0.8, 0.999}, .eps = 1e-8, .weight_decay = 0.1,
                              .adam_w_mode = decoupled};
        std::vector<AdamReference> ref;
        check_against_reference<ds::Adam<>>(h, [&](std::vector<double>& p, const std::vector<float>& g, double lr, int t) {
            if (ref.empty())
                for (double x : p) ref.push_back({x});
            for (std::size_t i = 0; i < p.size(); ++i) {
                ref[i].step(h, lr, g[i], t);
                p[i] = ref[i].p;
            }
        });
    }
}

TEST_CASE("AdamW decouples weight decay even when adam_w_mode is false") {
    ds::AdamHyper h{.lr = 1e-2, .weight_decay = 0.5, .adam_w_mode = false};
    float p_w[1] = {2.0f}, p_a[1] = {2.0f}, g[1] = {0.25f}, m_w[1] = {}, v_w[1] = {}, m_a[1] = {}, v_a[1] = {};
    float* s_w[2] = {m_w, v_w};
    float* s_a[2] = {m_a, v_a};
    ds::AdamW<>::update(h, h.lr, 1)(0, p_w, g, s_w);
    h.adam_w_mode = true;
    ds::Adam<>::update(h, h.lr, 1)(0, p_a, g, s_a);
    CHECK(p_w[0] == p_a[0]);
}

TEST_CASE("SGD with momentum, dampening and Nesterov follows torch's rule in float64") {
    for (bool nesterov : {false, true}) {
        const ds::SgdHyper h{.lr = 0.05, .momentum = 0.9, .dampening = nesterov ? 0.0 : 0.1, .weight_decay = 0.01,
                             .nesterov = nesterov};
        std::vector<double> buffer(5);
        check_against_reference<ds::SGD<>>(h, [&](std::vector<double>& p, const std::vector<float>& grad, double lr, int t) {
            for (std::size_t i = 0; i < p.size(); ++i) {
                double g = grad[i] + h.weight_decay * p[i];
                buffer[i] = t == 1 ? g : h.momentum * buffer[i] + (1 - h.dampening) * g;
                g = h.nesterov ? g + h.momentum * buffer[i] : buffer[i];
                p[i] -= lr * g;
            }
        });
    }
    const ds::SgdHyper plain{.lr = 0.1};
    check_against_reference<ds::SGD<>>(plain, [&](std::vector<double>& p, const std::vector<float>& g, double lr, int) {
        for (std::size_t i = 0; i < p.size(); ++i) p[i] -= lr * g[i];
    });
}

TEST_CASE("Lion follows FusedLion's rule in float64, sign(0) moving by +lr") {
    const ds::LionHyper h{.lr = 1e-2, .betas = {0.9, 0.99}, .weight_decay = 0.1};
    std::vector<double> m(5);
    check_against_reference<ds::Lion<>>(h, [&](std::vector<double>& p, const std::vector<float>& g, double lr, int) {
        for (std::size_t i = 0; i < p.size(); ++i) {
            const double c = h.betas[0] * m[i] + (1 - h.betas[0]) * g[i];
            p[i] = p[i] * (1 - lr * h.weight_decay) + (c > 0 ? -lr : lr);
            m[i] = h.betas[1] * m[i] + (1 - h.betas[1]) * g[i];
        }
    });
    float p[1] = {1.0f}, g[1] = {0.0f}, state[1] = {0.0f};
    float* states[1] = {state};
    ds::Lion<>::update({.lr = 0.5}, 0.5, 1)(0, p, g, states);
    CHECK(p[0] == 1.5f);
}

TEST_CASE("Lamb follows FusedLamb's per-tensor trust ratio in float64") {
    for (double max_coeff : {10.0, 0.3}) {  // the second clamps the trust ratio
        const ds::LambHyper h{.lr = 1e-2, .betas = {0.9, 0.999}, .eps = 1e-6, .weight_decay = 0.01,
                              .max_coeff = max_coeff};
        std::vector<double> m(5), v(5), u(5);
        check_against_reference<ds::Lamb<>>(h, [&](std::vector<double>& p, const std::vector<float>& g, double lr, int t) {
            double p_norm = 0, u_norm = 0;
            for (std::size_t i = 0; i < p.size(); ++i) {
                m[i] = h.betas[0] * m[i] + (1 - h.betas[0]) * g[i];
                v[i] = h.betas[1] * v[i] + (1 - h.betas[1]) * g[i] * g[i];
                u[i] = m[i] / (std::sqrt(v[i]) + h.eps) + h.weight_decay * p[i];
                p_norm += p[i] * p[i];
                u_norm += u[i] * u[i];
            }
            p_norm = std::sqrt(p_norm);
            u_norm = std::sqrt(u_norm);
            const double trust = std::clamp(p_norm / u_norm, h.min_coeff, h.max_coeff);
            const double step_size = lr * std::sqrt(1 - std::pow(h.betas[1], t)) / (1 - std::pow(h.betas[0], t));
            for (std::size_t i = 0; i < p.size(); ++i) p[i] -= step_size * trust * u[i];
        });
    }
}

TEST_CASE("Adam's first step moves each parameter by about lr against the gradient's sign") {
    float p[1] = {1.0f}, g[1] = {0.37f}, m[1] = {}, v[1] = {};
    float* states[2] = {m, v};
    ds::Adam<>::update(ds::AdamHyper{}, 1e-3, 1)(0, p, g, states);
    CHECK(p[0] == doctest::Approx(1.0 - 1e-3).epsilon(1e-6));  // m̂/sqrt(v̂) = sign(g) on step 1
}

/// `update_strided` (each GPU thread's share of the fused update) run for every thread of a
/// simulated grid against the plain loop over the widened, scaled gradients: every element
/// updated once (a missed or a repeated one is off by about lr), states alike, and the
/// compute copy the rounding of the updated value. n gives each thread full rounds and a
/// tail; a second, smaller n gives some threads nothing at all.
template <class Opt, class G, class T>
void check_update_strided(std::size_t n, std::size_t threads) {
    constexpr std::size_t S = Opt::state_buffers;
    constexpr float factor = 0.25f;
    std::mt19937 rng(static_cast<std::uint32_t>(n));
    std::uniform_real_distribution<float> signed_values(-1.0f, 1.0f), positive(0.0f, 1.0f);
    std::vector<float> params(n);
    std::vector<G> grads(n);
    std::vector<std::vector<float>> states(S, std::vector<float>(n));
    for (std::size_t i = 0; i < n; ++i) {
        params[i] = signed_values(rng);
        grads[i] = G(4.0f * signed_values(rng));
        for (auto& state : states) state[i] = positive(rng);  // Adam's v must stay ≥ 0
    }
    const auto update = Opt::update(Opt::defaults, 1e-2, 3);

    std::vector<float> expected = params, widened(n);
    std::vector<std::vector<float>> expected_states = states;
    std::vector<float*> expected_ptrs;
    for (auto& state : expected_states) expected_ptrs.push_back(state.data());
    for (std::size_t i = 0; i < n; ++i) widened[i] = static_cast<float>(grads[i]) * factor;
    for (std::size_t i = 0; i < n; ++i) update(i, expected.data(), widened.data(), expected_ptrs.data());

    std::vector<T> compute(n, T(-7.0f));
    std::vector<float*> ptrs;
    for (auto& state : states) ptrs.push_back(state.data());
    for (std::size_t thread = 0; thread < threads; ++thread)
        ds::update_strided<4, S>(update, params.data(), compute.data(), grads.data(), factor, ptrs.data(), n, thread,
                                 threads);
    const auto near = [](float got, float want) { return std::abs(got - want) <= 1e-6f * std::max(1.0f, std::abs(want)); };
    std::size_t wrong = 0, wrong_states = 0, wrong_copy = 0;
    for (std::size_t i = 0; i < n; ++i) {
        wrong += !near(params[i], expected[i]);
        for (std::size_t k = 0; k < S; ++k) wrong_states += !near(states[k][i], expected_states[k][i]);
        if constexpr (!std::is_same_v<T, float>) wrong_copy += compute[i].bits != T(params[i]).bits;
    }
    CHECK(wrong == 0);
    CHECK(wrong_states == 0);
    CHECK(wrong_copy == 0);
}

TEST_CASE("update_strided: each GPU thread's share of the fused update is the plain loop, element by element") {
    for (const std::size_t n : {std::size_t{1'013}, std::size_t{20}}) {
        CAPTURE(n);
        check_update_strided<ds::Adam<>, float, float>(n, 37);
        check_update_strided<ds::Adam<>, ds::bf16, ds::bf16>(n, 37);
        check_update_strided<ds::Lion<>, float, ds::bf16>(n, 37);
        check_update_strided<ds::SGD<ds::SgdHyper{.lr = 0.1, .momentum = 0.9}>, ds::bf16, float>(n, 37);
    }
}

TEST_CASE("DynamicLossScaler reproduces SPEC §12 (init 2^15, window 2, hysteresis 2)") {
    ds::DynamicLossScaler scaler({.init_scale = 32768, .scale_window = 2, .min_scale = 1, .delayed_shift = 2,
                                  .consecutive_hysteresis = false});
    const bool overflow[] = {true, true, true, false, false, false, false, false, false};
    const double expected[] = {32768, 16384, 8192, 8192, 16384, 16384, 32768, 32768, 65536};
    for (int i = 0; i < 9; ++i) {
        scaler.update(overflow[i]);
        CHECK(scaler.scale() == expected[i]);
    }
    CHECK(scaler.iteration() == 9);
}

TEST_CASE("DynamicLossScaler first doubles at boundary step `window` (500 for the example)") {
    ds::DynamicLossScaler scaler({.init_scale = 32768, .scale_window = 500, .min_scale = 1, .delayed_shift = 2,
                                  .consecutive_hysteresis = false});
    for (int step = 1; step <= 499; ++step) scaler.update(false);
    CHECK(scaler.scale() == 32768);
    scaler.update(false);
    CHECK(scaler.scale() == 65536);
}

TEST_CASE("DynamicLossScaler class defaults and the error at the minimum scale") {
    ds::DynamicLossScaler defaults;
    CHECK(defaults.scale() == 4294967296.0);
    CHECK(defaults.hysteresis() == 1);
    ds::DynamicLossScaler scaler({.init_scale = 4, .scale_window = 1000, .min_scale = 1, .delayed_shift = 1,
                                  .consecutive_hysteresis = false});
    scaler.update(true);
    scaler.update(true);
    CHECK(scaler.scale() == 1);
    CHECK_THROWS_WITH_AS(scaler.update(true),
                         "Current loss scale already at minimum - cannot decrease scale anymore. Exiting run.",
                         std::runtime_error);
}

TEST_CASE("consecutive_hysteresis refills hysteresis on every clean step") {
    ds::DynamicLossScaler plain({.init_scale = 1024, .scale_window = 100, .min_scale = 1, .delayed_shift = 2,
                                 .consecutive_hysteresis = false});
    ds::DynamicLossScaler consecutive({.init_scale = 1024, .scale_window = 100, .min_scale = 1, .delayed_shift = 2,
                                       .consecutive_hysteresis = true});
    for (bool overflow : {true, false, true}) {
        plain.update(overflow);
        consecutive.update(overflow);
    }
    CHECK(plain.scale() == 512);         // hysteresis was consumed once and not refilled
    CHECK(consecutive.scale() == 1024);  // the clean step in between refilled it
}

TEST_CASE("StaticLossScaler never moves") {
    ds::StaticLossScaler scaler(128);
    scaler.update(true);
    scaler.update(false);
    CHECK(scaler.scale() == 128);
}

}  // TEST_SUITE
