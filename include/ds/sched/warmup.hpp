#pragma once
/// @file
/// `WarmupLR` and `WarmupDecayLR` (DeepSpeed `runtime/lr_schedules.py`, SPEC §3.1-3.2).
///
/// Every scheduler here is a pure function of `last_batch_iteration` (lbi): -1 before the
/// first scheduler step, +1 per applied optimizer step. `ds::sched::LRScheduler` keeps lbi.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <ds/config/config.hpp>

namespace ds::sched {

/// The warm-up fraction γ ∈ [0, 1] at lbi ≥ 0 of a warm-up over `steps` (clamped to ≥ 2
/// by the caller): ln(lbi + 1) / ln(steps) or lbi / steps, then 1.
inline double warmup_gamma(WarmupType type, std::int64_t lbi, std::int64_t steps) {
    if (lbi >= steps) return 1.0;
    if (type == WarmupType::linear) return static_cast<double>(lbi) / static_cast<double>(steps);
    return std::log(static_cast<double>(lbi + 1)) / std::log(static_cast<double>(steps));
}

/// Warm-up from `warmup_min_lr` to `warmup_max_lr` over `warmup_num_steps`, then constant.
/// With log warm-up the first two applied steps both use the minimum (γ(−1) = γ(0) = 0).
struct WarmupLR {
    double min_lr, max_lr;
    std::int64_t warmup_steps;  ///< max(2, warmup_num_steps)
    WarmupType type;

    explicit WarmupLR(const SchedulerParams& p)
        : min_lr(p.warmup_min_lr), max_lr(p.warmup_max_lr),
          warmup_steps(std::max<std::int64_t>(2, p.warmup_num_steps)), type(p.warmup_type) {}

    double lr_at(std::int64_t lbi) const {
        return lbi < 0 ? min_lr : min_lr + (max_lr - min_lr) * warmup_gamma(type, lbi, warmup_steps);
    }
};

/// WarmupLR's warm-up, then a linear decay to 0 at `total_num_steps`.
struct WarmupDecayLR {
    WarmupLR warmup;
    std::int64_t total_steps;

    explicit WarmupDecayLR(const SchedulerParams& p) : warmup(p), total_steps(p.total_num_steps.value) {}

    double lr_at(std::int64_t lbi) const {
        if (lbi < warmup.warmup_steps) return warmup.lr_at(lbi);
        const double span = static_cast<double>(std::max<std::int64_t>(1, total_steps - warmup.warmup_steps));
        const double gamma = std::max(0.0, static_cast<double>(total_steps - lbi) / span);
        return warmup.min_lr + (warmup.max_lr - warmup.min_lr) * gamma;
    }
};

}  // namespace ds::sched
