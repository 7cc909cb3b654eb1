#pragma once
/// @file
/// `ds::bf16`: bfloat16 storage with bit-exact round-to-nearest-even conversions.

#include <cstdint>

#include <ds/numeric/bit_cast.hpp>

namespace ds {

/// bfloat16: the top 16 bits of an IEEE binary32 (8-bit exponent, 7-bit mantissa).
///
/// A storage type: arithmetic happens in float. Conversions are software
/// round-to-nearest-even, identical on the host and in CUDA kernels (STYLE rule 6):
/// every NaN becomes the canonical 0x7fff (as CUDA's `__float2bfloat16_rn`), infinities and
/// subnormals convert exactly, and finite values above the largest bf16 round to inf.
struct bf16 {
    std::uint16_t bits;  ///< the raw bit pattern

    bf16() = default;
    /// Rounds `f` to the nearest bf16, ties to even.
    DS_HOST_DEVICE constexpr explicit bf16(float f) noexcept : bits(round_bits(f)) {}
    /// The exact float value of this bf16.
    DS_HOST_DEVICE constexpr explicit operator float() const noexcept {
        return ds::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
    }
    /// A bf16 with the given bit pattern.
    DS_HOST_DEVICE static constexpr bf16 from_bits(std::uint16_t b) noexcept {
        bf16 r{};
        r.bits = b;
        return r;
    }

private:
    DS_HOST_DEVICE static constexpr std::uint16_t round_bits(float f) noexcept {
        const std::uint32_t u = ds::bit_cast<std::uint32_t>(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // canonical NaN, as CUDA's conversions
        // Adding 0x7fff plus the lowest kept bit carries into the kept half exactly when
        // the dropped half is above one half ulp, or equal to it with an odd kept half.
        return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
};

static_assert(sizeof(bf16) == 2);

}  // namespace ds
