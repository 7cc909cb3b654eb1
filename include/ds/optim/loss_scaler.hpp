#pragma once
/// @file
/// Loss scalers for fp16 training: DeepSpeed's ZeRO `DynamicLossScaler` and a static scale.

#include <concepts>
#include <stdexcept>

#include <ds/config/config.hpp>

namespace ds {

/// Dynamic loss scaling with DeepSpeed's ZeRO semantics (SPEC §4.1), at every stage.
///
/// `update(overflow)` runs once per accumulation boundary, skipped steps included. An
/// overflow first consumes hysteresis, then halves the scale (never below the minimum);
/// at the minimum it throws, as DeepSpeed does. After `scale_window` clean steps
/// since the last overflow the scale doubles and hysteresis refills.
class DynamicLossScaler {
public:
    constexpr DynamicLossScaler() : DynamicLossScaler(dynamic_loss_scale_args(Fp16Config{})) {}
    constexpr explicit DynamicLossScaler(const DynamicLossScaleArgs& args)
        : args_(args), scale_(args.init_scale), hysteresis_(args.delayed_shift) {}

    /// The scale the next backward multiplies the loss by.
    constexpr double scale() const { return scale_; }
    /// Hysteresis left before the next overflow lowers the scale.
    constexpr int hysteresis() const { return hysteresis_; }
    /// Boundary steps seen so far.
    constexpr long iteration() const { return iteration_; }

    /// What a checkpoint keeps (DeepSpeed's `cur_scale`, `cur_hysteresis`, `cur_iter`,
    /// `last_overflow_iter`); the arguments come from the config.
    struct State {
        double scale;
        int hysteresis;
        long iteration, last_overflow_iteration;
    };
    constexpr State state() const { return {scale_, hysteresis_, iteration_, last_overflow_iteration_}; }
    constexpr void restore(const State& s) {
        scale_ = s.scale;
        hysteresis_ = s.hysteresis;
        iteration_ = s.iteration;
        last_overflow_iteration_ = s.last_overflow_iteration;
    }

    /// Records one boundary step. @throws std::runtime_error on an overflow at the minimum scale.
    constexpr void update(bool overflow) {
        if (overflow) {
            if (args_.delayed_shift == 1 || hysteresis_ == 1) {
                if (scale_ == args_.min_scale)
                    throw std::runtime_error(
                        "Current loss scale already at minimum - cannot decrease scale anymore. Exiting run.");
                scale_ = scale_ / 2 > args_.min_scale ? scale_ / 2 : args_.min_scale;
            } else {
                --hysteresis_;
            }
            last_overflow_iteration_ = iteration_;
        } else {
            if (args_.consecutive_hysteresis) hysteresis_ = args_.delayed_shift;
            if ((iteration_ - last_overflow_iteration_) % args_.scale_window == 0) {
                scale_ *= 2;
                if (!args_.consecutive_hysteresis) hysteresis_ = args_.delayed_shift;
            }
        }
        ++iteration_;
    }

private:
    DynamicLossScaleArgs args_;
    double scale_;
    int hysteresis_;
    long iteration_ = 0;
    long last_overflow_iteration_ = -1;
};

/// A fixed scale (`fp16.loss_scale > 0`): overflowing steps are still skipped, the scale never moves.
class StaticLossScaler {
public:
    constexpr explicit StaticLossScaler(double scale = 1.0) : scale_(scale) {}
    constexpr double scale() const { return scale_; }
    constexpr void update(bool /*overflow*/) {}

private:
    double scale_;
};

/// A loss scaler: the current scale, and one update per accumulation boundary.
template <class S>
concept loss_scaler = requires(S s, const S cs, bool overflow) {
    { cs.scale() } -> std::convertible_to<double>;
    s.update(overflow);
};

static_assert(loss_scaler<DynamicLossScaler> && loss_scaler<StaticLossScaler>);

}  // namespace ds
