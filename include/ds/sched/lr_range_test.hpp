#pragma once
/// @file
/// `LRRangeTest` (DeepSpeed `runtime/lr_schedules.py`, SPEC §3.5): the learning-rate range
/// test, which raises the lr without bound to find the largest one that still trains.

#include <cmath>
#include <cstdint>

#include <ds/config/config.hpp>

namespace ds::sched {

/// lr = lr_range_test_min_lr · (1 + lr_range_test_step_rate · i), where i = (lbi + 1) /
/// lr_range_test_step_size, rounded down with `lr_range_test_staircase`. Before the first
/// step (lbi = −1) it is the minimum.
struct LRRangeTest {
    double min_lr, step_rate;
    std::int64_t step_size;  ///< > 0 (checked with the config)
    bool staircase;

    explicit LRRangeTest(const SchedulerParams& p)
        : min_lr(p.lr_range_test_min_lr), step_rate(p.lr_range_test_step_rate),
          step_size(p.lr_range_test_step_size), staircase(p.lr_range_test_staircase) {}

    double lr_at(std::int64_t lbi) const {
        double interval = static_cast<double>(lbi + 1) / static_cast<double>(step_size);
        if (staircase) interval = std::floor(interval);
        return min_lr * (1.0 + step_rate * interval);
    }
};

}  // namespace ds::sched
