#pragma once
/// @file
/// Launch shapes for the element-wise kernels' grid-stride loops, and `plain_t`, the name
/// every launch gives its element types.

#include <array>
#include <cstddef>
#include <type_traits>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::cuda {

/// The current device's multiprocessor count, asked of the driver once per device and
/// thread (every element-wise launch needs it).
inline int multiprocessors() {
    int device = 0;
    DS_CUDA_CHECK(cudaGetDevice(&device));
    thread_local std::array<int, 64> known{};  // 0: not asked yet
    const auto at = static_cast<std::size_t>(device);
    if (at < known.size() && known[at] > 0) return known[at];
    int sms = 0;
    DS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (at < known.size()) known[at] = sms;
    return sms;
}

/// Blocks of `threads` for a grid-stride loop over n elements: enough to fill the current
/// device (8 blocks per SM), no more, so each thread handles several elements.
inline unsigned grid_for(std::size_t n, unsigned threads) {
    const int sms = multiprocessors();
    const std::size_t wanted = (n + threads - 1) / threads;
    const std::size_t cap = static_cast<std::size_t>(sms) * 8;
    return static_cast<unsigned>(wanted < cap ? (wanted > 0 ? wanted : 1) : cap);
}

namespace detail {
// Each element type's name, written out here (declarations only, for `plain_t`).
float* plain(const float*);
double* plain(const double*);
bf16* plain(const bf16*);
half* plain(const half*);
}  // namespace detail

/// The element type T is, named as itself. nvcc's host stub spells each kernel's template
/// arguments as the launch wrote them, so a dtype that reached a launch through a member
/// alias of a model-dependent class (`Engine<Net, ...>::compute_type`) would be spelled with
/// the model's class-type template arguments (layer names), which the stub cannot compile.
/// Every kernel and functor instantiation takes its element types through `plain_t`.
template <class T>
using plain_t = std::remove_pointer_t<decltype(detail::plain(static_cast<T*>(nullptr)))>;

}  // namespace ds::cuda
