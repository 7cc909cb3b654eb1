#pragma once
/// @file
/// `WarmupCosineLR` (SPEC §3.3): ratios of the optimizer's own learning rate.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>

#include <ds/config/config.hpp>
#include <ds/sched/warmup.hpp>

namespace ds::sched {

/// Warm-up of the ratio from `warmup_min_ratio` to 1, then a cosine to `cos_min_ratio` at
/// `total_num_steps`; lr = the optimizer's configured lr × ratio. Before the first step the
/// lr is 0. As in DeepSpeed, the cosine is not clamped past `total_num_steps`.
struct WarmupCosineLR {
    double base_lr;
    double warmup_min_ratio, cos_min_ratio;
    std::int64_t warmup_steps, total_steps;
    WarmupType type;

    WarmupCosineLR(const SchedulerParams& p, double optimizer_lr)
        : base_lr(optimizer_lr), warmup_min_ratio(p.warmup_min_ratio), cos_min_ratio(p.cos_min_ratio),
          warmup_steps(std::max<std::int64_t>(2, p.warmup_num_steps)), total_steps(p.total_num_steps.value),
          type(p.warmup_type) {}

    double ratio_at(std::int64_t lbi) const {
        if (lbi < 0) return 0.0;
        if (lbi < warmup_steps)
            return warmup_min_ratio + (1.0 - warmup_min_ratio) * warmup_gamma(type, lbi, warmup_steps);
        const double x =
            static_cast<double>(lbi - warmup_steps + 1) / static_cast<double>(total_steps - warmup_steps);
        return std::max(0.0, cos_min_ratio + (1.0 - cos_min_ratio) * (1.0 + std::cos(std::numbers::pi * x)) / 2.0);
    }
    double lr_at(std::int64_t lbi) const { return base_lr * ratio_at(lbi); }
};

}  // namespace ds::sched
