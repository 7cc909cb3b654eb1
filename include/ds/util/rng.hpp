#pragma once
/// @file
/// `ds::Rng`: a small seeded generator whose streams are identical on every platform.

#include <cmath>
#include <cstdint>

namespace ds {

/// PCG32 (O'Neill's pcg32_random_r): 64-bit state, 32-bit output. Unlike the standard
/// distributions, `uniform()` is specified here, so a seed gives the same numbers everywhere.
class Rng {
public:
    explicit constexpr Rng(std::uint64_t seed, std::uint64_t stream = 0x5851f42d4c957f2dULL)
        : increment_((stream << 1u) | 1u) {
        next();
        state_ += seed;
        next();
    }

    /// The next 32 random bits.
    constexpr std::uint32_t next() {
        const std::uint64_t old = state_;
        state_ = old * 6364136223846793005ULL + increment_;
        const auto xorshifted = static_cast<std::uint32_t>(((old >> 18u) ^ old) >> 27u);
        const auto rotation = static_cast<std::uint32_t>(old >> 59u);
        return (xorshifted >> rotation) | (xorshifted << ((0u - rotation) & 31u));
    }
    /// Uniform in [0, 1) with 24 random bits (every value exactly representable as float).
    constexpr float uniform() { return static_cast<float>(next() >> 8) * 0x1.0p-24f; }
    /// Uniform in [lo, hi).
    constexpr float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }
    /// Normal with mean `mean` and standard deviation `std` (Box-Muller over two uniforms,
    /// in double; the same numbers wherever libm's log and cos round the same).
    float normal(float mean = 0.0f, float std = 1.0f) {
        const double u1 = (static_cast<double>(next() >> 8) + 0.5) * 0x1.0p-24;  // (0, 1): log finite
        const double u2 = static_cast<double>(next() >> 8) * 0x1.0p-24;
        const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
        return mean + std * static_cast<float>(z);
    }
    /// Uniform integer in [0, n) (Lemire's multiply-shift; bias below 2^-32 · n).
    constexpr std::uint32_t below(std::uint32_t n) {
        return static_cast<std::uint32_t>((static_cast<std::uint64_t>(next()) * n) >> 32);
    }

private:
    std::uint64_t state_ = 0;
    std::uint64_t increment_;
};

}  // namespace ds
