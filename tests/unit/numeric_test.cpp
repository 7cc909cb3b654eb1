// ds::bf16 and ds::half against independent references: exact float values computed with
// ldexp, rounding checked at every midpoint, and CUDA's own host conversions where present.
#include <cmath>
#include <cstdint>
#include <cstring>

#include <doctest/doctest.h>

#include <ds/numeric/bf16.hpp>
#include <ds/numeric/half.hpp>

#if DSPP_HAVE_CUDA_HEADERS
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace {

std::uint32_t bits_of(float f) { return ds::bit_cast<std::uint32_t>(f); }
float float_of(std::uint32_t u) { return ds::bit_cast<float>(u); }

/// The value of a binary16 pattern, from the IEEE definition.
double half_reference(std::uint16_t h) {
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    const int exponent = (h >> 10) & 0x1f;
    const int mantissa = h & 0x3ff;
    if (exponent == 0x1f) return mantissa ? std::nan("") : sign * INFINITY;
    if (exponent == 0) return sign * std::ldexp(mantissa, -24);
    return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

/// The value of a bfloat16 pattern, from its definition (8-bit exponent, 7-bit mantissa).
double bf16_reference(std::uint16_t b) {
    const double sign = (b & 0x8000) ? -1.0 : 1.0;
    const int exponent = (b >> 7) & 0xff;
    const int mantissa = b & 0x7f;
    if (exponent == 0xff) return mantissa ? std::nan("") : sign * INFINITY;
    if (exponent == 0) return sign * std::ldexp(mantissa, -133);
    return sign * std::ldexp(128 + mantissa, exponent - 134);
}

/// Checks float -> T rounding at the midpoint between each pair of neighbouring finite
/// values of T, and one float ulp either side of it.
template <class T, class Reference>
void check_rounding_at_midpoints(Reference reference, std::uint16_t largest_finite) {
    for (std::uint32_t sign : {0u, 0x8000u}) {
        for (std::uint32_t lo = 0; lo < largest_finite; ++lo) {
            const auto lo_bits = static_cast<std::uint16_t>(lo | sign);
            const auto hi_bits = static_cast<std::uint16_t>((lo + 1) | sign);
            const double mid = (reference(lo_bits) + reference(hi_bits)) / 2;
            const float midpoint = static_cast<float>(mid);
            REQUIRE(static_cast<double>(midpoint) == mid);  // exactly representable
            const auto even = (lo & 1u) == 0 ? lo_bits : hi_bits;
            CHECK(T(midpoint).bits == even);
            const float toward_zero = float_of(bits_of(midpoint) - 1);
            const float away = float_of(bits_of(midpoint) + 1);
            CHECK(T(toward_zero).bits == lo_bits);
            CHECK(T(away).bits == hi_bits);
        }
    }
}

}  // namespace

TEST_SUITE("numeric") {

TEST_CASE("half -> float is exact for all 65,536 patterns") {
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const auto value = static_cast<float>(ds::half::from_bits(static_cast<std::uint16_t>(h)));
        const double expected = half_reference(static_cast<std::uint16_t>(h));
        if (std::isnan(expected)) REQUIRE(std::isnan(value));
        else REQUIRE(static_cast<double>(value) == expected);
        if (expected == 0) REQUIRE(std::signbit(value) == ((h & 0x8000) != 0));
    }
}

TEST_CASE("half round-trips every non-NaN pattern; NaN becomes canonical") {
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const auto original = ds::half::from_bits(static_cast<std::uint16_t>(h));
        const ds::half again(static_cast<float>(original));
        if (std::isnan(half_reference(static_cast<std::uint16_t>(h)))) REQUIRE(again.bits == 0x7fff);
        else REQUIRE(again.bits == h);
    }
}

TEST_CASE("float -> half rounds to nearest, ties to even, subnormals included") {
    check_rounding_at_midpoints<ds::half>(half_reference, 0x7bff);
}

TEST_CASE("float -> half overflow, underflow and specials") {
    CHECK(ds::half(65504.0f).bits == 0x7bff);
    CHECK(ds::half(65519.996f).bits == 0x7bff);
    CHECK(ds::half(65520.0f).bits == 0x7c00);  // the tie above the largest finite goes to inf
    CHECK(ds::half(-1e10f).bits == 0xfc00);
    CHECK(ds::half(INFINITY).bits == 0x7c00);
    CHECK(ds::half(-INFINITY).bits == 0xfc00);
    CHECK(ds::half(std::nanf("")).bits == 0x7fff);
    CHECK(ds::half(std::ldexp(1.0f, -25)).bits == 0x0000);       // half of the smallest subnormal: tie to 0
    CHECK(ds::half(std::ldexp(1.5f, -25)).bits == 0x0001);       // above the tie
    CHECK(ds::half(-std::ldexp(1.0f, -26)).bits == 0x8000);      // keeps the sign of zero
    CHECK(ds::half(1e-30f).bits == 0x0000);
}

TEST_CASE("bf16 -> float is exact and round-trips every non-NaN pattern") {
    for (std::uint32_t b = 0; b < 65536; ++b) {
        const auto original = ds::bf16::from_bits(static_cast<std::uint16_t>(b));
        const float value = static_cast<float>(original);
        const double expected = bf16_reference(static_cast<std::uint16_t>(b));
        if (std::isnan(expected)) {
            REQUIRE(std::isnan(value));
            REQUIRE(ds::bf16(value).bits == 0x7fff);
        } else {
            REQUIRE(static_cast<double>(value) == expected);
            REQUIRE(ds::bf16(value).bits == b);
        }
    }
}

TEST_CASE("float -> bf16 rounds to nearest, ties to even, subnormals included") {
    check_rounding_at_midpoints<ds::bf16>(bf16_reference, 0x7f7f);
    CHECK(ds::bf16(3.4028235e38f).bits == 0x7f80);  // above the largest bf16 (3.3895e38): rounds to inf
    CHECK(ds::bf16(-INFINITY).bits == 0xff80);
    CHECK(ds::bf16(std::nanf("")).bits == 0x7fff);
}

TEST_CASE("conversions are constant expressions") {
    static_assert(ds::half(1.0f).bits == 0x3c00);
    static_assert(ds::bf16(1.0f).bits == 0x3f80);
    static_assert(static_cast<float>(ds::half::from_bits(0x3555)) == 0.333251953125f);
    static_assert(ds::half(0.1f).bits == 0x2e66);
    static_assert(ds::bf16(0.1f).bits == 0x3dcd);
    CHECK(true);
}

#if DSPP_HAVE_CUDA_HEADERS
TEST_CASE("conversions match the CUDA headers' host implementations") {
    // Every 4099th float bit pattern (about a million, all exponents, both signs) and every
    // half/bf16 pattern widened back.
    auto compare = [](float f) {
        const __half h = __float2half_rn(f);
        const __nv_bfloat16 b = __float2bfloat16_rn(f);
        std::uint16_t cuda_half = 0, cuda_bf16 = 0;
        std::memcpy(&cuda_half, &h, 2);
        std::memcpy(&cuda_bf16, &b, 2);
        REQUIRE(ds::half(f).bits == cuda_half);
        REQUIRE(ds::bf16(f).bits == cuda_bf16);
    };
    for (std::uint64_t u = 0; u < (1ull << 32); u += 4099) compare(float_of(static_cast<std::uint32_t>(u)));
    for (std::uint32_t p = 0; p < 65536; ++p) {
        const auto bits = static_cast<std::uint16_t>(p);
        __half_raw raw;
        raw.x = bits;
        const float cuda = __half2float(__half(raw));
        const float ours = static_cast<float>(ds::half::from_bits(bits));
        if (std::isnan(cuda)) REQUIRE(std::isnan(ours));
        else REQUIRE(bits_of(cuda) == bits_of(ours));
        compare(ours);
    }
}
#else
TEST_CASE("conversions match the CUDA headers' host implementations" * doctest::skip()) {
    MESSAGE("skipped: CUDA headers not found at build time");
}
#endif

}  // TEST_SUITE
