#pragma once
/// @file
/// `ds::half`: IEEE binary16 storage with bit-exact round-to-nearest-even conversions.

#include <cstdint>

#include <ds/numeric/bit_cast.hpp>

namespace ds {

/// IEEE 754 binary16 (5-bit exponent, 10-bit mantissa, largest finite 65504).
///
/// A storage type: arithmetic happens in float. Conversions are software
/// round-to-nearest-even, identical on the host and in CUDA kernels (STYLE rule 6):
/// every NaN becomes the canonical 0x7fff (as CUDA's `__float2half_rn`), values from 65520 up
/// round to inf, and results below 2^-14 become subnormals or zero, rounded to even.
struct half {
    std::uint16_t bits;  ///< the raw bit pattern

    half() = default;
    /// Rounds `f` to the nearest half, ties to even.
    DS_HOST_DEVICE constexpr explicit half(float f) noexcept : bits(round_bits(f)) {}
    /// The exact float value of this half.
    DS_HOST_DEVICE constexpr explicit operator float() const noexcept { return ds::bit_cast<float>(widen_bits(bits)); }
    /// A half with the given bit pattern.
    DS_HOST_DEVICE static constexpr half from_bits(std::uint16_t b) noexcept {
        half r{};
        r.bits = b;
        return r;
    }

private:
    static constexpr std::uint32_t float_exponent_bias_shift = (127u - 15u) << 23;  // rebias 127 -> 15

    DS_HOST_DEVICE static constexpr std::uint16_t round_bits(float f) noexcept {
        const std::uint32_t u = ds::bit_cast<std::uint32_t>(f);
        const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
        std::uint32_t a = u & 0x7fffffffu;
        if (a > 0x7f800000u) return 0x7fffu;  // canonical NaN, as CUDA's conversions
        if (a >= 0x47800000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 2^16 (or inf): inf
        if (a < 0x38800000u) {
            // Below 2^-14 the result is subnormal: adding 0.5f aligns the value so that the
            // FPU's own round-to-nearest-even drops exactly the bits binary16 cannot hold.
            constexpr std::uint32_t magic = 126u << 23;  // 0.5f
            const float aligned = ds::bit_cast<float>(a) + ds::bit_cast<float>(magic);
            return static_cast<std::uint16_t>(sign | (ds::bit_cast<std::uint32_t>(aligned) - magic));
        }
        // Normal range; a carry out of the mantissa bumps the exponent, up to inf at 65520.
        a += 0x0fffu + ((a >> 13) & 1u) - float_exponent_bias_shift;
        return static_cast<std::uint16_t>(sign | (a >> 13));
    }

    DS_HOST_DEVICE static constexpr std::uint32_t widen_bits(std::uint16_t h) noexcept {
        const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
        std::uint32_t exponent = (h >> 10) & 0x1fu;
        std::uint32_t mantissa = h & 0x03ffu;
        if (exponent == 0x1fu) return sign | 0x7f800000u | (mantissa << 13);
        if (exponent == 0) {
            if (mantissa == 0) return sign;
            exponent = 1;  // subnormal: normalise the mantissa into float's implicit-one form
            while ((mantissa & 0x0400u) == 0) {
                mantissa <<= 1;
                --exponent;
            }
            mantissa &= 0x03ffu;
        }
        return sign | ((exponent << 23) + float_exponent_bias_shift) | (mantissa << 13);
    }
};

static_assert(sizeof(half) == 2);

}  // namespace ds
