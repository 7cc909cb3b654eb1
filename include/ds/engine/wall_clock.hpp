#pragma once
/// @file
/// `ds::WallClockBreakdown`: the times DeepSpeed logs with `"wall_clock_breakdown": true`
/// (its engine timers, `utils/timer.py`; SPEC §8).

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>

namespace ds {

/// The timed phases of a micro-step, in DeepSpeed's log order: forward, backward (all of
/// it), backward's computation, backward's wait for its gradient reductions, and step.
enum class TimedPhase { fwd, bwd, bwd_inner, bwd_allreduce, step };

/// Wall-clock seconds per phase, for the micro-step in progress and summed over the
/// accumulation cycle. The engine reports each micro-step after its `step()`, and the cycle
/// at its boundary, in DeepSpeed's lines:
///
///     time (ms) | fwd_microstep: a | bwd_microstep: b | bwd_inner_microstep: c | bwd_allreduce_microstep: d | step_microstep: e
///     time (ms) | fwd: A | bwd: B | bwd_inner: C | bwd_allreduce: D | step: E
class WallClockBreakdown {
public:
    using clock = std::chrono::steady_clock;

    /// Adds the time from `start` to now to `phase`.
    void add(TimedPhase phase, clock::time_point start) {
        micro_[static_cast<std::size_t>(phase)] += std::chrono::duration<double>(clock::now() - start).count();
    }

    /// The micro-step's line; its times then move into the cycle's.
    std::string micro_step_line() {
        const std::string line = format(micro_, "_microstep");
        for (std::size_t i = 0; i < phases; ++i) cycle_[i] += micro_[i];
        micro_ = {};
        return line;
    }

    /// The cycle's line; a new cycle starts.
    std::string cycle_line() {
        const std::string line = format(cycle_, "");
        cycle_ = {};
        return line;
    }

private:
    static constexpr std::size_t phases = 5;
    static constexpr std::array<const char*, phases> names{"fwd", "bwd", "bwd_inner", "bwd_allreduce", "step"};

    static std::string format(const std::array<double, phases>& seconds, const char* suffix) {
        std::string line = "time (ms)";
        char field[96];
        for (std::size_t i = 0; i < phases; ++i) {
            std::snprintf(field, sizeof field, " | %s%s: %.2f", names[i], suffix, seconds[i] * 1e3);
            line += field;
        }
        return line;
    }

    std::array<double, phases> micro_{}, cycle_{};
};

}  // namespace ds
