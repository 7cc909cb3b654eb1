#pragma once
/// @file
/// `ds::sched::LRScheduler`: DeepSpeed's scheduler protocol over the configured schedule.

#include <cstdint>
#include <optional>
#include <variant>

#include <ds/config/config.hpp>
#include <ds/sched/lr_range_test.hpp>
#include <ds/sched/one_cycle.hpp>
#include <ds/sched/warmup.hpp>
#include <ds/sched/warmup_cosine.hpp>

namespace ds::sched {

/// No scheduler block: the optimizer's configured lr throughout.
struct ConstantLR {
    double lr;
    double lr_at(std::int64_t) const { return lr; }
};

/// The schedule named by `scheduler.type`, stepped as DeepSpeed's engine steps it.
///
/// `last_batch_iteration` starts at -1; `step()` adds one. The engine steps it after each
/// *applied* optimizer step at an accumulation boundary (never for a skipped one), so the
/// s-th applied step uses `lr_at(s - 2)`. The schedule is a run-time value: it is evaluated
/// once per step, outside any element loop.
class LRScheduler {
public:
    /// @param cfg the `scheduler` block
    /// @param optimizer_lr the optimizer's configured lr (WarmupCosineLR scales it; no schedule keeps it)
    /// @param optimizer_beta1 β1 for optimizers without momentum cycling
    LRScheduler(const SchedulerConfig& cfg, double optimizer_lr, double optimizer_beta1)
        : schedule_(make(cfg, optimizer_lr)), beta1_(optimizer_beta1) {}

    /// The lr for the next optimizer step.
    double get_lr() const {
        return std::visit([&](const auto& s) { return s.lr_at(last_batch_iteration_); }, schedule_);
    }
    /// β1 for the next step: OneCycle's cycled momentum, otherwise the optimizer's β1.
    double get_beta1() const {
        if (const auto* cycle = std::get_if<OneCycle>(&schedule_); cycle && cycle->cycle_momentum)
            return cycle->momentum_at(last_batch_iteration_);
        return beta1_;
    }
    /// OneCycle with momentum cycling writes betas = (momentum, 0.99), replacing β2 (SPEC §3.4).
    std::optional<double> beta2_override() const {
        if (const auto* cycle = std::get_if<OneCycle>(&schedule_); cycle && cycle->cycle_momentum) return 0.99;
        return std::nullopt;
    }
    void step() { ++last_batch_iteration_; }
    std::int64_t last_batch_iteration() const { return last_batch_iteration_; }
    /// Restores the position (checkpoint `lr_scheduler` state).
    void set_last_batch_iteration(std::int64_t lbi) { last_batch_iteration_ = lbi; }

private:
    using Schedule = std::variant<ConstantLR, WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest>;

    static Schedule make(const SchedulerConfig& cfg, double optimizer_lr) {
        switch (cfg.type) {
        case SchedulerType::WarmupLR: return WarmupLR(cfg.params);
        case SchedulerType::WarmupDecayLR: return WarmupDecayLR(cfg.params);
        case SchedulerType::WarmupCosineLR: return WarmupCosineLR(cfg.params, optimizer_lr);
        case SchedulerType::OneCycle: return OneCycle(cfg.params);
        case SchedulerType::LRRangeTest: return LRRangeTest(cfg.params);
        case SchedulerType::none: break;
        }
        return ConstantLR{optimizer_lr};
    }

    Schedule schedule_;
    double beta1_;
    std::int64_t last_batch_iteration_ = -1;
};

}  // namespace ds::sched
