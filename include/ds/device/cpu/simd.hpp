#pragma once
/// @file
/// `ds::cpu::vfloat`: the widest float vector the target has, through GCC's vector extensions.
///
/// One source serves AVX-512 (16 lanes), AVX/AVX2 (8) and SSE (4): the width follows the
/// compiler's target flags (`-march=native` in dspp's build, `DSPP_NATIVE`). Loads and
/// stores are unaligned; `a * b + c` becomes an FMA under `-ffp-contract=fast`.

#include <cstddef>
#include <cstring>

namespace ds::cpu {

#if defined(__AVX512F__)
inline constexpr std::size_t lanes = 16;
#elif defined(__AVX__)
inline constexpr std::size_t lanes = 8;
#else
inline constexpr std::size_t lanes = 4;
#endif

/// `lanes` floats in one register.
using vfloat = float __attribute__((vector_size(lanes * sizeof(float))));

inline vfloat load(const float* p) {
    vfloat v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof v); }
/// Stores the first `n` lanes (n ≤ lanes).
inline void store_first(float* p, vfloat v, std::size_t n) { std::memcpy(p, &v, n * sizeof(float)); }
inline vfloat broadcast(float x) { return vfloat{} + x; }
/// The sum of the lanes.
inline float reduce_add(vfloat v) {
    float s = 0.0f;
    for (std::size_t i = 0; i < lanes; ++i) s += v[i];
    return s;
}

/// Vectors needed to cover n floats.
constexpr std::size_t vectors_for(std::size_t n) { return (n + lanes - 1) / lanes; }

}  // namespace ds::cpu

namespace ds::cpu {

/// Σ x[i]², accurate and fast: float vector partial sums over chunks of 1,024 values, each
/// chunk added to a double. Deterministic for a given n (no threads, fixed order).
inline double sum_of_squares(const float* x, std::size_t n) {
    constexpr std::size_t chunk = 1024, unroll = 4;
    double total = 0.0;
    const std::size_t whole = n - n % chunk;
    for (std::size_t i = 0; i < whole; i += chunk) {
        vfloat acc[unroll] = {};
        for (std::size_t k = 0; k < chunk; k += unroll * lanes)
            for (std::size_t u = 0; u < unroll; ++u) {
                const vfloat v = load(x + i + k + u * lanes);
                acc[u] += v * v;
            }
        total += static_cast<double>(reduce_add((acc[0] + acc[1]) + (acc[2] + acc[3])));
    }
    for (std::size_t i = whole; i < n; ++i) total += static_cast<double>(x[i]) * x[i];
    return total;
}

}  // namespace ds::cpu

namespace ds::cpu {

/// Σ x[i] in float with vector partial sums (a fixed order: deterministic for a given n).
inline float sum(const float* x, std::size_t n) {
    vfloat acc[2] = {};
    const std::size_t whole = n - n % (2 * lanes);
    for (std::size_t i = 0; i < whole; i += 2 * lanes) {
        acc[0] += load(x + i);
        acc[1] += load(x + i + lanes);
    }
    float total = reduce_add(acc[0] + acc[1]);
    for (std::size_t i = whole; i < n; ++i) total += x[i];
    return total;
}

}  // namespace ds::cpu
