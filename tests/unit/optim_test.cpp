// Optimizer math against float64 references, and the loss scaler's golden sequences (SPEC §12).
#include <cmath>
#include <stdexcept>
#include <vector>

#include <doctest/doctest.h>

#include <ds/optim/adam.hpp>
#include <ds/optim/loss_scaler.hpp>

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

TEST_CASE("Adam (decoupled and L2) follows a float64 reference over 20 steps") {
    for (bool decoupled : {true, false}) {
        const ds::AdamHyper h{.lr = 1e-2, .betas = {0.8, 0.999}, .eps = 1e-8, .weight_decay = 0.1,
                              .adam_w_mode = decoupled};
        std::vector<float> p{0.5f, -1.25f, 3.0f, 1e-3f}, m(4, 0.0f), v(4, 0.0f);
        std::vector<AdamReference> ref;
        for (float x : p) ref.push_back({x});
        for (int t = 1; t <= 20; ++t) {
            const double lr = h.lr * (t % 3 == 0 ? 0.5 : 1.0);  // lr changes between steps, like a schedule
            const auto update = ds::AdamUpdate::at(h, lr, t);
            for (std::size_t i = 0; i < p.size(); ++i) {
                const double g = std::sin(0.7 * t + static_cast<double>(i)) * (i + 1);
                update(p[i], static_cast<float>(g), m[i], v[i]);
                ref[i].step(h, lr, static_cast<float>(g), t);
            }
        }
        for (std::size_t i = 0; i < p.size(); ++i) CHECK(p[i] == doctest::Approx(ref[i].p).epsilon(1e-5));
    }
}

TEST_CASE("Adam's first step moves each parameter by about lr against the gradient's sign") {
    const auto update = ds::AdamUpdate::at(ds::AdamHyper{}, 1e-3, 1);
    float p = 1.0f, m = 0, v = 0;
    update(p, 0.37f, m, v);
    CHECK(p == doctest::Approx(1.0 - 1e-3).epsilon(1e-6));  // m̂/sqrt(v̂) = sign(g) on step 1
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
