#pragma once
/// @file
/// `ds::cpu::convert`: bulk conversions between float and the 2-byte storage types,
/// bit-identical to `ds::bf16` / `ds::half` element by element, NaNs included.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include <ds/device/cpu/simd.hpp>
#include <ds/numeric/bf16.hpp>
#include <ds/numeric/half.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::cpu {

namespace detail {

using vu32 = std::uint32_t __attribute__((vector_size(lanes * sizeof(std::uint32_t))));
using vi32 = std::int32_t __attribute__((vector_size(lanes * sizeof(std::int32_t))));
using vu16 = std::uint16_t __attribute__((vector_size(lanes * sizeof(std::uint16_t))));

// bf16 is the upper half of a float: widening is a shift, narrowing is bf16's integer
// round-to-nearest-even with NaNs made canonical — the same formula, lane-wise.
inline void widen_bf16(const bf16* in, float* out, std::size_t n) {
    std::size_t i = 0;
    for (const std::size_t whole = n - n % lanes; i < whole; i += lanes) {
        vu16 h;
        std::memcpy(&h, in + i, sizeof h);
        const vu32 u = __builtin_convertvector(h, vu32) << 16;
        std::memcpy(out + i, &u, sizeof u);
    }
    for (; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

inline void narrow_bf16(const float* in, bf16* out, std::size_t n) {
    std::size_t i = 0;
#if defined(__AVX2__)
    // 16 at a time: round each half, then pack the two halves' upper words into one register
    // (GCC's generic u32 -> u16 vector conversion costs several shuffles per vector).
    const auto round = [](__m256i u) {
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
        const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
        const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
        return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fff), nan);
    };
    for (const std::size_t whole = n - n % 16; i < whole; i += 16) {
        const __m256i a = round(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i)));
        const __m256i b = round(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i + 8)));
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), packed);
    }
#endif
    for (const std::size_t whole = n - n % lanes; i < whole; i += lanes) {
        vu32 u;
        std::memcpy(&u, in + i, sizeof u);
        const vi32 nan = reinterpret_cast<vi32>(u & 0x7fffffffu) > 0x7f800000;
        vu32 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        r = nan ? vu32{} + 0x7fffu : r;
        const vu16 h = __builtin_convertvector(r, vu16);
        std::memcpy(out + i, &h, sizeof h);
    }
    for (; i < n; ++i) out[i] = bf16(in[i]);
}

// half: the F16C instructions where the target has them (round-to-nearest-even like
// ds::half). They differ from ds::half only on NaNs — F16C sets the quiet bit and keeps a
// payload — so NaN lanes are patched without a branch: widening rebuilds sign, exponent
// and payload exactly, narrowing writes the canonical 0x7fff.
inline void widen_half(const half* in, float* out, std::size_t n) {
    std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
    const __m256i exponent = _mm256_set1_epi32(0x7c00);
    for (const std::size_t whole = n - n % 8; i < whole; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
        const __m256i w = _mm256_cvtepu16_epi32(h);
        const __m256i special = _mm256_cmpeq_epi32(_mm256_and_si256(w, exponent), exponent);  // inf or NaN
        const __m256i exact = _mm256_or_si256(
            _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x8000)), 16),
                            _mm256_set1_epi32(0x7f800000)),
            _mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x3ff)), 13));
        const __m256 v = _mm256_blendv_ps(_mm256_cvtph_ps(h), _mm256_castsi256_ps(exact), _mm256_castsi256_ps(special));
        _mm256_storeu_ps(out + i, v);
    }
#endif
    for (; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

inline void narrow_half(const float* in, half* out, std::size_t n) {
    std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
    for (const std::size_t whole = n - n % 8; i < whole; i += 8) {
        const __m256 v = _mm256_loadu_ps(in + i);
        const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        const __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(nan), _mm256_extracti128_si256(nan, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_blendv_epi8(h, _mm_set1_epi16(0x7fff), nan16));
    }
#endif
    for (; i < n; ++i) out[i] = half(in[i]);
}

}  // namespace detail

/// out[i] = To(in[i]) for i < n: widening is exact, narrowing rounds to nearest even.
template <storage_float From, storage_float To>
void convert(const From* in, To* out, std::size_t n) {
    if constexpr (std::is_same_v<From, To>) {
        if (in != out) std::copy_n(in, n, out);
    } else if constexpr (std::is_same_v<From, bf16> && std::is_same_v<To, float>) {
        detail::widen_bf16(in, out, n);
    } else if constexpr (std::is_same_v<From, float> && std::is_same_v<To, bf16>) {
        detail::narrow_bf16(in, out, n);
    } else if constexpr (std::is_same_v<From, half> && std::is_same_v<To, float>) {
        detail::widen_half(in, out, n);
    } else if constexpr (std::is_same_v<From, float> && std::is_same_v<To, half>) {
        detail::narrow_half(in, out, n);
    } else {  // between the two narrow types: through float, a block at a time
        float block[256];
        for (std::size_t i = 0; i < n; i += 256) {
            const std::size_t m = std::min<std::size_t>(256, n - i);
            convert(in + i, block, m);
            convert(block, out + i, m);
        }
    }
}

/// Processes a narrow-typed array a block of floats at a time: `f(const float* block,
/// std::size_t first, std::size_t count)` sees the widened values of [first, first + count).
template <std::size_t Block = 1024, storage_float T, class F>
void for_each_widened(const T* x, std::size_t n, F&& f) {
    if constexpr (std::is_same_v<T, float>) {
        for (std::size_t i = 0; i < n; i += Block) f(x + i, i, std::min(Block, n - i));
    } else {
        alignas(64) float block[Block];
        for (std::size_t i = 0; i < n; i += Block) {
            const std::size_t m = std::min(Block, n - i);
            convert(x + i, block, m);
            f(static_cast<const float*>(block), i, m);
        }
    }
}

/// dst[i] = G(float(dst[i]) + float(T(src[i]))): a gradient computed in float is rounded to
/// the compute dtype `T` (as the layer's own gradient would be) and added into the
/// accumulation buffer of dtype `G` (float or the compute dtype).
template <storage_float T, storage_float G>
void accumulate_rounded(const float* src, G* dst, std::size_t n) {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<G, float>) {
        for (std::size_t i = 0; i < n; ++i) dst[i] += src[i];
    } else {
        constexpr std::size_t block = 512;
        alignas(64) T rounded[block];
        alignas(64) float a[block], b[block];
        for (std::size_t i = 0; i < n; i += block) {
            const std::size_t m = std::min(block, n - i);
            convert(src + i, rounded, m);
            convert(rounded, a, m);
            convert(dst + i, b, m);
            for (std::size_t k = 0; k < m; ++k) b[k] += a[k];
            convert(b, dst + i, m);
        }
    }
}

/// dst[i] = T(float(dst[i]) + float(src[i])), in dtype T.
template <storage_float T>
void add_into(T* dst, const T* src, std::size_t n) {
    if constexpr (std::is_same_v<T, float>) {
        for (std::size_t i = 0; i < n; ++i) dst[i] += src[i];
    } else {
        constexpr std::size_t block = 512;
        alignas(64) float a[block], b[block];
        for (std::size_t i = 0; i < n; i += block) {
            const std::size_t m = std::min(block, n - i);
            convert(src + i, a, m);
            convert(dst + i, b, m);
            for (std::size_t k = 0; k < m; ++k) b[k] += a[k];
            convert(b, dst + i, m);
        }
    }
}

/// x[i] = T(float(x[i]) · factor).
template <storage_float T>
void scale(T* x, std::size_t n, float factor) {
    if constexpr (std::is_same_v<T, float>) {
        for (std::size_t i = 0; i < n; ++i) x[i] *= factor;
    } else {
        constexpr std::size_t block = 512;
        alignas(64) float a[block];
        for (std::size_t i = 0; i < n; i += block) {
            const std::size_t m = std::min(block, n - i);
            convert(x + i, a, m);
            for (std::size_t k = 0; k < m; ++k) a[k] *= factor;
            convert(a, x + i, m);
        }
    }
}

/// Σ x[i]² of the widened values, chunk by chunk exactly as the float overload sums.
template <narrow_float T>
double sum_of_squares(const T* x, std::size_t n) {
    double total = 0.0;
    for_each_widened(x, n, [&](const float* block, std::size_t, std::size_t m) { total += sum_of_squares(block, m); });
    return total;
}

}  // namespace ds::cpu
