#pragma once
/// @file
/// Precision policies: the dtype of parameters, activations and gradients, and what stays fp32.

#include <concepts>
#include <string_view>
#include <type_traits>

#include <ds/numeric/bf16.hpp>
#include <ds/numeric/half.hpp>
#include <ds/optim/loss_scaler.hpp>
#include <ds/policy/zero.hpp>

namespace ds {

/// Everything in fp32; the model's parameters are the optimizer's parameters.
struct FP32 {
    using compute_type = float;  ///< parameters and activations
    using grad_type = float;     ///< gradients as accumulated across micro-steps
    static constexpr bool has_master_weights = false;
    static constexpr bool scales_loss = false;
    static constexpr std::string_view name = "fp32";
};

/// bf16 parameters, activations and gradients; fp32 master weights and states. Without
/// ZeRO the gradients accumulate in fp32 (see `grad_accumulation_t`).
struct BF16 {
    using compute_type = bf16;
    using grad_type = bf16;
    static constexpr bool has_master_weights = true;
    static constexpr bool scales_loss = false;
    static constexpr std::string_view name = "bf16";
};

/// fp16 parameters, activations and gradients; fp32 master weights and states; the loss is
/// multiplied by `Scaler`'s scale before backward and gradients are unscaled before the step.
template <loss_scaler Scaler = DynamicLossScaler>
struct FP16 {
    using compute_type = half;
    using grad_type = half;
    using scaler = Scaler;
    static constexpr bool has_master_weights = true;
    static constexpr bool scales_loss = true;
    static constexpr std::string_view name = "fp16";
};

/// A precision policy: dtypes of compute and gradients and whether fp32 copies and scaling exist.
/// Law: a policy without master weights computes in float (the optimizer updates what it computes with).
template <class P>
concept precision_policy = requires {
    typename P::compute_type;
    typename P::grad_type;
    { P::has_master_weights } -> std::convertible_to<bool>;
    { P::scales_loss } -> std::convertible_to<bool>;
    { P::name } -> std::convertible_to<std::string_view>;
} && (P::has_master_weights || std::same_as<typename P::compute_type, float>);

/// The dtype gradients accumulate in across micro-steps, as DeepSpeed's `get_data_types`
/// decides it: the model's dtype, except bf16 without ZeRO, which accumulates in fp32 (its
/// BF16_Optimizer's full-size fp32 gradient buffer, SPEC §0 and §4.4).
template <precision_policy P, zero_policy Z>
using grad_accumulation_t =
    std::conditional_t<std::is_same_v<P, BF16> && Z::stage == 0, float, typename P::grad_type>;

/// The scaler an engine with precision P keeps: `P::scaler` for fp16, else a static 1.
template <precision_policy P>
struct loss_scaler_of {
    using type = StaticLossScaler;
};
template <precision_policy P>
    requires P::scales_loss
struct loss_scaler_of<P> {
    using type = typename P::scaler;
};

static_assert(precision_policy<FP32> && precision_policy<BF16> && precision_policy<FP16<>> &&
              precision_policy<FP16<StaticLossScaler>>);

}  // namespace ds
