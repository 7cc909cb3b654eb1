#pragma once
/// @file
/// `OneCycle` (SPEC §3.4): a triangular cycle of lr and (inverse) momentum, then decay.

#include <cmath>
#include <cstdint>

#include <ds/config/config.hpp>

namespace ds::sched {

/// lr rises from `cycle_min_lr` to `cycle_max_lr` over the first step size and falls back
/// over the second, while momentum (β1) moves the opposite way between `cycle_max_mom` and
/// `cycle_min_mom`; afterwards lr decays from the minimum by `decay_lr_rate` per
/// `decay_step_size` steps.
struct OneCycle {
    double min_lr, max_lr, decay_lr_rate;
    double min_mom, max_mom, decay_mom_rate;
    std::int64_t total_size, decay_step_size;
    double step_ratio;  ///< first / total
    bool cycle_momentum;

    explicit OneCycle(const SchedulerParams& p)
        : min_lr(p.cycle_min_lr.value), max_lr(p.cycle_max_lr.value), decay_lr_rate(p.decay_lr_rate),
          min_mom(p.cycle_min_mom), max_mom(p.cycle_max_mom), decay_mom_rate(p.decay_mom_rate),
          total_size(p.cycle_first_step_size + p.cycle_second_step_size.value_or(p.cycle_first_step_size)),
          decay_step_size(p.decay_step_size),
          step_ratio(static_cast<double>(p.cycle_first_step_size) / static_cast<double>(total_size)),
          cycle_momentum(p.cycle_momentum) {}

    /// Position in the cycle, 0 at its ends and 1 at its peak.
    double scale_at(std::int64_t lbi) const {
        const double b = static_cast<double>(lbi + 1) / static_cast<double>(total_size);
        const double x = 1.0 + b - std::floor(1.0 + b);
        return x <= step_ratio ? x / step_ratio : (x - 1.0) / (step_ratio - 1.0);
    }
    double decay_steps(std::int64_t lbi) const { return static_cast<double>(lbi - total_size + 1); }

    double lr_at(std::int64_t lbi) const {
        if (lbi < total_size) return min_lr + (max_lr - min_lr) * scale_at(lbi);
        if (decay_step_size == 0 || decay_lr_rate == 0) return min_lr;
        return min_lr / (1.0 + decay_lr_rate * decay_steps(lbi) / static_cast<double>(decay_step_size));
    }
    double momentum_at(std::int64_t lbi) const {
        if (lbi < total_size) return max_mom - (max_mom - min_mom) * scale_at(lbi);
        if (decay_step_size == 0 || decay_mom_rate == 0) return max_mom;
        return max_mom * (1.0 + decay_mom_rate * decay_steps(lbi) / static_cast<double>(decay_step_size));
    }
};

}  // namespace ds::sched
