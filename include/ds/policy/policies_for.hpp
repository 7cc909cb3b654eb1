#pragma once
/// @file
/// From a constexpr `ds::Config` to the policy set it asks for, and the check that a
/// config agrees with policies chosen explicitly.

#include <type_traits>

#include <ds/config/check_result.hpp>
#include <ds/config/config.hpp>
#include <ds/optim/adam.hpp>
#include <ds/optim/lamb.hpp>
#include <ds/optim/lion.hpp>
#include <ds/optim/sgd.hpp>
#include <ds/optim/loss_scaler.hpp>
#include <ds/optim/optimizer.hpp>
#include <ds/policy/device.hpp>
#include <ds/policy/precision.hpp>
#include <ds/policy/zero.hpp>

namespace ds {

/// The four compile-time choices of an engine, bundled.
template <optimizer Optimizer, zero_policy ZeroPolicy, precision_policy Precision, device_policy Device = Cpu>
struct Policies {
    using optimizer_policy = Optimizer;
    using zero_policy = ZeroPolicy;
    using precision_policy = Precision;
    using device_policy = Device;
};

namespace detail {

template <Config C>
constexpr auto optimizer_for() {
    constexpr auto type = C.optimizer.type;
    if constexpr (type == OptimizerType::Adam || type == OptimizerType::none)
        return std::type_identity<Adam<Adam<>::hyper_from(effective_params(C.optimizer))>>{};
    else if constexpr (type == OptimizerType::AdamW)
        return std::type_identity<AdamW<AdamW<>::hyper_from(effective_params(C.optimizer))>>{};
    else if constexpr (type == OptimizerType::SGD)
        return std::type_identity<SGD<SGD<>::hyper_from(effective_params(C.optimizer))>>{};
    else if constexpr (type == OptimizerType::Lion)
        return std::type_identity<Lion<Lion<>::hyper_from(effective_params(C.optimizer))>>{};
    else
        return std::type_identity<Lamb<Lamb<>::hyper_from(effective_params(C.optimizer))>>{};
}

template <Config C>
constexpr auto precision_for() {
    if constexpr (C.fp16.enabled && C.fp16.loss_scale > 0) return std::type_identity<FP16<StaticLossScaler>>{};
    else if constexpr (C.fp16.enabled) return std::type_identity<FP16<DynamicLossScaler>>{};
    else if constexpr (C.bf16.enabled) return std::type_identity<BF16>{};
    else return std::type_identity<FP32>{};
}

/// The precision a config asks for, by name.
constexpr std::string_view config_dtype(const Config& c) {
    return c.fp16.enabled ? "fp16" : c.bf16.enabled ? "bf16" : "fp32";
}

}  // namespace detail

/// The policies a constexpr config selects: `Adam<...>` carrying the config's numbers as
/// its defaults, `Zero<stage>`, the precision from `fp16`/`bf16`, and `Device`.
/// A config without an optimizer block gets `Adam<>` with DeepSpeed's defaults.
template <Config C, device_policy Device = Cpu>
using PoliciesFor = Policies<typename decltype(detail::optimizer_for<C>())::type, Zero<C.zero_optimization.stage>,
                             typename decltype(detail::precision_for<C>())::type, Device>;

/// Whether `cfg` asks for what `P` was built with: ZeRO stage, precision (and static or
/// dynamic fp16 scaling), optimizer family. Numbers may differ: they are read at run time.
template <class P>
constexpr CheckResult check_agrees(const Config& cfg) {
    using O = typename P::optimizer_policy;
    using Z = typename P::zero_policy;
    using Precision = typename P::precision_policy;
    CheckResult r;
    if (cfg.zero_optimization.stage != Z::stage)
        return r << "zero_optimization.stage is " << cfg.zero_optimization.stage << " but the engine is built for ds::Zero<"
                 << Z::stage << ">";
    if (detail::config_dtype(cfg) != Precision::name)
        return r << "the config selects " << detail::config_dtype(cfg) << " but the engine is built for "
                 << Precision::name;
    if constexpr (Precision::scales_loss) {
        constexpr bool static_policy = std::is_same_v<typename Precision::scaler, StaticLossScaler>;
        if (static_policy != (cfg.fp16.loss_scale > 0))
            return r << "fp16.loss_scale " << (cfg.fp16.loss_scale > 0 ? "selects a static" : "selects dynamic")
                     << " loss scale but the engine is built for " << (static_policy ? "a static" : "a dynamic") << " one";
    }
    if (cfg.optimizer.type != OptimizerType::none && !O::accepts(cfg.optimizer.type))
        return r << "optimizer.type is " << name_of(cfg.optimizer.type) << " but the engine is built for "
                 << name_of(O::type);
    if (O::type == OptimizerType::AdamW && cfg.optimizer.type == OptimizerType::Adam && !cfg.optimizer.params.adam_w_mode)
        return r << "optimizer Adam with adam_w_mode false (L2) but the engine is built for AdamW";
    return r;
}

/// Compile-time agreement, with the mismatch's text in the diagnostic.
template <class P, Config C>
constexpr bool static_agrees() {
    return require_valid<check_agrees<P>(C)>();
}

}  // namespace ds
