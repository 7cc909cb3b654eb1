// Learning-rate schedules: SPEC §12's golden values and DeepSpeed's test_lr_schedulers checks.
#include <cmath>
#include <vector>

#include <doctest/doctest.h>

#include <ds/sched/lr_scheduler.hpp>

#include "cifar10/ds_config.hpp"

using ds::SchedulerType;
using ds::sched::LRScheduler;

namespace {

/// lr used by the s-th applied optimizer step (1-based): steps the scheduler s-1 times.
double lr_of_applied_step(const ds::SchedulerConfig& cfg, int s, double optimizer_lr = 1e-3) {
    LRScheduler scheduler(cfg, optimizer_lr, 0.9);
    for (int i = 1; i < s; ++i) scheduler.step();
    return scheduler.get_lr();
}

}  // namespace

TEST_SUITE("sched") {

TEST_CASE("WarmupLR log warm-up of the CIFAR config reproduces SPEC §12") {
    const auto& cfg = cifar10::ds_config.scheduler;
    const std::pair<int, double> golden[] = {{1, 0.0},           {2, 0.0},           {3, 1.003433e-4},
                                             {4, 1.590404e-4},   {5, 2.006867e-4},   {10, 3.180808e-4},
                                             {100, 6.652117e-4}, {500, 8.993668e-4}, {1000, 9.998552e-4},
                                             {1001, 1e-3},       {1002, 1e-3},       {5000, 1e-3}};
    for (auto [s, lr] : golden) {
        CAPTURE(s);
        CHECK(lr_of_applied_step(cfg, s) == doctest::Approx(lr).epsilon(1e-6));
    }
}

TEST_CASE("WarmupLR linear warm-up: 0, 0, 1e-6, 2e-6, ..., 9.99e-4 at 1001, 1e-3 from 1002") {
    ds::SchedulerConfig cfg = cifar10::ds_config.scheduler;
    cfg.params.warmup_type = ds::WarmupType::linear;
    CHECK(lr_of_applied_step(cfg, 1) == 0.0);
    CHECK(lr_of_applied_step(cfg, 2) == 0.0);
    CHECK(lr_of_applied_step(cfg, 3) == doctest::Approx(1e-6));
    CHECK(lr_of_applied_step(cfg, 4) == doctest::Approx(2e-6));
    CHECK(lr_of_applied_step(cfg, 1001) == doctest::Approx(9.99e-4));
    CHECK(lr_of_applied_step(cfg, 1002) == doctest::Approx(1e-3));
}

TEST_CASE("WarmupLR after step 1 is min and after step W+1 is max, for W in {10, 15, 19, 33}") {
    for (auto type : {ds::WarmupType::log, ds::WarmupType::linear}) {
        for (int w : {10, 15, 19, 33}) {
            const ds::SchedulerConfig cfg{.type = SchedulerType::WarmupLR,
                                          .params = {.warmup_min_lr = 0.1, .warmup_max_lr = 0.2,
                                                     .warmup_num_steps = w, .warmup_type = type}};
            LRScheduler s(cfg, 1e-3, 0.9);
            s.step();
            CHECK(s.get_lr() == doctest::Approx(0.1));
            for (int i = 0; i < w; ++i) s.step();
            CHECK(s.get_lr() == doctest::Approx(0.2));
            s.step();
            CHECK(s.get_lr() == doctest::Approx(0.2));
        }
    }
}

TEST_CASE("WarmupDecayLR decreases strictly after the peak and reaches 0 at total_num_steps") {
    const ds::SchedulerConfig cfg{.type = SchedulerType::WarmupDecayLR,
                                  .params = {.warmup_min_lr = 0.0, .warmup_max_lr = 0.1, .warmup_num_steps = 10,
                                             .total_num_steps = 30}};
    LRScheduler s(cfg, 1e-3, 0.9);
    for (int i = 0; i < 10; ++i) s.step();  // lbi = 9: still warming up
    double previous = s.get_lr();
    s.step();  // lbi = 10 = W: decay starts at γ = (30 - 10) / 20 = 1
    CHECK(s.get_lr() == doctest::Approx(0.1));
    previous = s.get_lr();
    for (int lbi = 11; lbi <= 30; ++lbi) {
        s.step();
        CHECK(s.get_lr() < previous);
        previous = s.get_lr();
    }
    CHECK(s.get_lr() == doctest::Approx(0.0));
    s.step();
    CHECK(s.get_lr() == 0.0);  // clamped
}

TEST_CASE("WarmupCosineLR scales the optimizer's lr: 0 first, warm-up ratio, cosine to cos_min_ratio") {
    const ds::SchedulerConfig cfg{.type = SchedulerType::WarmupCosineLR,
                                  .params = {.warmup_num_steps = 4, .warmup_type = ds::WarmupType::linear,
                                             .total_num_steps = 14, .warmup_min_ratio = 0.2, .cos_min_ratio = 0.1}};
    const double base = 0.5;
    CHECK(lr_of_applied_step(cfg, 1, base) == 0.0);
    CHECK(lr_of_applied_step(cfg, 2, base) == doctest::Approx(base * 0.2));                // lbi 0
    CHECK(lr_of_applied_step(cfg, 4, base) == doctest::Approx(base * (0.2 + 0.8 * 0.5)));  // lbi 2 of 4
    // lbi = W + k: x = (k + 1) / (T - W); the midpoint of the cosine is 0.1 + 0.9 / 2.
    CHECK(lr_of_applied_step(cfg, 2 + 4 + 4, base) == doctest::Approx(base * 0.55));  // lbi 8: x = 0.5
    CHECK(lr_of_applied_step(cfg, 2 + 4 + 9, base) == doctest::Approx(base * 0.1));   // lbi 13: x = 1
}

TEST_CASE("OneCycle: lr and momentum over a cycle, then decay") {
    const ds::SchedulerConfig cfg{.type = SchedulerType::OneCycle,
                                  .params = {.cycle_min_lr = 0.01, .cycle_max_lr = 0.11, .decay_lr_rate = 0.5,
                                             .cycle_first_step_size = 10, .decay_step_size = 5,
                                             .cycle_min_mom = 0.85, .cycle_max_mom = 0.95}};
    LRScheduler s(cfg, 1e-3, 0.9);
    CHECK(s.get_lr() == doctest::Approx(0.01));  // constructor: cycle_min_lr
    CHECK(s.get_beta1() == doctest::Approx(0.95));
    CHECK(s.beta2_override() == 0.99);
    for (int i = 0; i < 9; ++i) s.step();  // lbi 8: b = 9/20, x = 0.45, scale 0.9
    CHECK(s.get_lr() == doctest::Approx(0.01 + 0.1 * 0.9));
    s.step();                              // lbi 9: the peak
    CHECK(s.get_lr() == doctest::Approx(0.11));
    CHECK(s.get_beta1() == doctest::Approx(0.85));
    for (int i = 0; i < 5; ++i) s.step();  // lbi 14: halfway down
    CHECK(s.get_lr() == doctest::Approx(0.06));
    CHECK(s.get_beta1() == doctest::Approx(0.90));
    for (int i = 0; i < 10; ++i) s.step();  // lbi 24: decay, k = 5 → min / (1 + 0.5)
    CHECK(s.get_lr() == doctest::Approx(0.01 / 1.5));
}

TEST_CASE("LRRangeTest: min · (1 + rate · (lbi + 1) / size), continuous or in stairs") {
    for (const bool staircase : {false, true}) {
        CAPTURE(staircase);
        LRScheduler s({.type = SchedulerType::LRRangeTest,
                       .params = {.lr_range_test_min_lr = 0.01, .lr_range_test_step_size = 4,
                                  .lr_range_test_step_rate = 0.5, .lr_range_test_staircase = staircase}},
                      0.3, 0.9);
        // lr of the s-th applied step, s = 1, 2, ...: lbi = s − 2
        std::vector<double> lrs{s.get_lr()};  // the constructor's minimum replaces the optimizer's 0.3
        for (int step = 2; step <= 10; ++step) {
            s.step();
            lrs.push_back(s.get_lr());
        }
        const std::vector<double> expected =
            staircase ? std::vector<double>{0.01, 0.01, 0.01, 0.01, 0.015, 0.015, 0.015, 0.015, 0.02, 0.02}
                      : std::vector<double>{0.01, 0.01125, 0.0125, 0.01375, 0.015, 0.01625, 0.0175, 0.01875, 0.02, 0.02125};
        for (std::size_t i = 0; i < expected.size(); ++i) {
            CAPTURE(i);
            CHECK(lrs[i] == doctest::Approx(expected[i]).epsilon(1e-12));
        }
    }
}

TEST_CASE("LRRangeTest with DeepSpeed's test_lr_schedulers parameters: starts at min, rises every step or stair") {
    struct Case {
        double min_lr, step_rate;
        std::int64_t step_size;
        bool staircase;
    };
    for (const Case c : {Case{1e-4, 1e-5, 1, true}, Case{1e-5, 1e-5, 1, false}, Case{1e-4, 1e-3, 10, true},
                         Case{1e-3, 1e-3, 10, false}, Case{1e-2, 1e-2, 19, true}, Case{1e-2, 1e-2, 19, false}}) {
        CAPTURE(c.step_size);
        CAPTURE(c.staircase);
        LRScheduler s({.type = SchedulerType::LRRangeTest,
                       .params = {.lr_range_test_min_lr = c.min_lr, .lr_range_test_step_size = c.step_size,
                                  .lr_range_test_step_rate = c.step_rate, .lr_range_test_staircase = c.staircase}},
                      1e-3, 0.9);
        CHECK(s.get_lr() == c.min_lr);
        double previous = s.get_lr();
        for (std::int64_t step = 1; step <= 3 * c.step_size + 1; ++step) {
            s.step();  // lbi = step − 1: a new stair starts where step is a multiple of step_size
            const bool rises = !c.staircase || step % c.step_size == 0;
            CAPTURE(step);
            if (rises) CHECK(s.get_lr() > previous);
            else CHECK(s.get_lr() == previous);
            previous = s.get_lr();
        }
        // after 3·size + 1 steps the interval is 3 + 2/size, or 3 in stairs
        const double interval = c.staircase ? 3.0 : (3.0 * c.step_size + 2.0) / c.step_size;
        CHECK(s.get_lr() == doctest::Approx(c.min_lr * (1.0 + c.step_rate * interval)));
    }
}

TEST_CASE("no scheduler block keeps the optimizer's lr; steps and restores count") {
    LRScheduler s(ds::SchedulerConfig{}, 0.042, 0.8);
    for (int i = 0; i < 7; ++i) s.step();
    CHECK(s.get_lr() == 0.042);
    CHECK(s.get_beta1() == 0.8);
    CHECK(s.last_batch_iteration() == 6);
    LRScheduler restored(cifar10::ds_config.scheduler, 1e-3, 0.9);
    restored.set_last_batch_iteration(1);
    CHECK(restored.get_lr() == doctest::Approx(1.003433e-4).epsilon(1e-6));
}

}  // TEST_SUITE
