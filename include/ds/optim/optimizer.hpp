#pragma once
/// @file
/// The `ds::optimizer` concept: what an optimizer policy provides.

#include <concepts>
#include <cstddef>
#include <cstdint>

#include <ds/config/config.hpp>

namespace ds {

/// An optimizer policy describes the math; the engine decides where it runs.
///
/// A model provides:
/// - `Hyper`: a structural aggregate of hyper-parameters, and `defaults`, its value
///   (a template argument, so `Adam<{.lr = 1e-2}>` is a different default);
/// - `hyper_from(params)`: the hyper-parameters an `optimizer.params` block asks for
///   (numbers come from the config at run time, DESIGN principle 7);
/// - `accepts(type)`: whether a config's `optimizer.type` may run on this policy;
/// - `state_buffers`: fp32 state values kept per parameter (Adam: m and v);
/// - `update(hyper, lr, step)`: the functor for applied step `step` (1-based), called as
///   `u(i, params, grads, states)` for element i of flat fp32 buffers, on host or device.
///   Its return type is spelled as the functor's own name (`AdamUpdate`), not through the
///   policy (`Adam<...>::Update`): nvcc 13 names a kernel's template arguments in generated
///   host code, and a class-type template argument such as `Adam<AdamHyper{...}>` does not
///   survive that round trip.
///
/// Laws: `hyper_from(OptimizerParams{})` with the config defaults equals SPEC §2's
/// defaults; `accepts` is true for at least the policy's own `type`.
template <class O>
concept optimizer = requires(const OptimizerParams& params) {
    typename O::Hyper;
    { O::type } -> std::convertible_to<OptimizerType>;
    { O::defaults } -> std::convertible_to<typename O::Hyper>;
    { O::hyper_from(params) } -> std::same_as<typename O::Hyper>;
    { O::accepts(O::type) } -> std::same_as<bool>;
    { O::state_buffers } -> std::convertible_to<std::size_t>;
    O::update(O::defaults, 1.0, std::int64_t{1});
} && O::accepts(O::type);

}  // namespace ds
