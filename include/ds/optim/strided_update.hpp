#pragma once
/// @file
/// `ds::update_strided`: one GPU thread's share of the fused optimizer update, written once
/// for both compilers (DESIGN principle 3) so that the CPU tests run it too.
///
/// The update is memory-bound (Adam moves 28 bytes per element for a few flops), and a
/// memory-bound kernel reaches copy bandwidth only with enough loads in flight. A plain
/// grid-stride loop has one element's loads outstanding per thread; here every load of
/// `Unroll` elements is issued before any arithmetic, so a thread keeps Unroll × (2 + States)
/// independent loads in flight, each still coalesced across its warp.

#include <cstddef>
#include <type_traits>

#include <ds/util/host_device.hpp>

namespace ds {

namespace detail {

/// Elements `at`, `at + stride`, … `at + (Count - 1)·stride`: loads, updates, stores.
template <std::size_t Count, std::size_t States, class Update, class G, class T>
DS_HOST_DEVICE void update_round(const Update& update, float* params, T* compute, const G* grads, float grad_factor,
                                 float* const* states, std::size_t at, std::size_t stride) {
    constexpr std::size_t slots = States > 0 ? States : 1;
    float p[Count], g[Count], s[slots][Count];
    DS_UNROLL(8)
    for (std::size_t u = 0; u < Count; ++u) {
        const std::size_t i = at + u * stride;
        p[u] = params[i];
        g[u] = static_cast<float>(grads[i]) * grad_factor;
        for (std::size_t k = 0; k < States; ++k) s[k][u] = states[k][i];
    }
    DS_UNROLL(8)
    for (std::size_t u = 0; u < Count; ++u) {
        float* own[slots];
        for (std::size_t k = 0; k < States; ++k) own[k] = &s[k][u];
        update(0, &p[u], &g[u], own);
    }
    DS_UNROLL(8)
    for (std::size_t u = 0; u < Count; ++u) {
        const std::size_t i = at + u * stride;
        params[i] = p[u];
        for (std::size_t k = 0; k < States; ++k) states[k][i] = s[k][u];
        if constexpr (!std::is_same_v<T, float>) compute[i] = T(p[u]);
    }
}

}  // namespace detail

/// Elements `first`, `first + stride`, `first + 2·stride`, … below `n` of a flat fp32 shard
/// through an element-wise optimizer's `update` functor (`AdamUpdate`, `LionUpdate`,
/// `SgdUpdate`): gradient `grads[i]` widened and multiplied by `grad_factor`, the `States`
/// buffers `states[k][i]` updated in place, and, when T is not float, the updated value
/// rounded into `compute[i]`. Each element gets exactly the arithmetic of
/// `update(i, params, g, states)`.
template <std::size_t Unroll, std::size_t States, class Update, class G, class T>
DS_HOST_DEVICE void update_strided(const Update& update, float* params, T* compute, const G* grads, float grad_factor,
                                   float* const* states, std::size_t n, std::size_t first, std::size_t stride) {
    static_assert(Unroll > 0);
    std::size_t i = first;
    for (; i + (Unroll - 1) * stride < n; i += Unroll * stride)
        detail::update_round<Unroll, States>(update, params, compute, grads, grad_factor, states, i, stride);
    for (; i < n; i += stride)  // the last elements, fewer than Unroll
        detail::update_round<1, States>(update, params, compute, grads, grad_factor, states, i, stride);
}

}  // namespace ds
