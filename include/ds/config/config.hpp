#pragma once
/// @file
/// `ds::Config`: DeepSpeed's `ds_config.json` as a constexpr aggregate.
///
/// Every member carries the JSON key's name and nesting exactly, and its default is
/// DeepSpeed 0.16.5's (SPEC §1.2). The structs are reflected with Boost.Hana at the
/// bottom of this header, so JSON load/save, printing and diffing walk them by name.
/// All members are structural, so a `Config` can be a template argument.

#include <array>
#include <cstdint>
#include <string_view>

#include <boost/hana/adapt_struct.hpp>

#include <ds/config/enums.hpp>
#include <ds/config/maybe.hpp>

namespace ds {

/// `optimizer.params`: the union of the keyword arguments of every supported optimizer.
/// Which keys each `optimizer.type` accepts is `optimizer_accepts()`.
struct OptimizerParams {
    double lr = 1e-3;                          ///< all
    std::array<double, 2> betas{0.9, 0.999};   ///< Adam, AdamW, Lamb, Lion
    double eps = 1e-8;                         ///< Adam, AdamW, Lamb
    double weight_decay = 0.0;                 ///< all
    bool adam_w_mode = true;                   ///< Adam: decoupled weight decay unless false (SPEC §2.1)
    bool bias_correction = true;               ///< Adam, AdamW, Lamb
    bool torch_adam = false;                   ///< Adam, AdamW: accepted for compatibility, same math
    double momentum = 0.0;                     ///< SGD
    double dampening = 0.0;                    ///< SGD
    bool nesterov = false;                     ///< SGD
    double max_coeff = 10.0;                   ///< Lamb: upper clamp of the trust ratio
    double min_coeff = 0.01;                   ///< Lamb: lower clamp of the trust ratio
    bool eps_inside_sqrt = false;              ///< Lamb
    constexpr bool operator==(const OptimizerParams&) const = default;
};

/// `optimizer`: absent (`type == none`) by default, like DeepSpeed.
struct OptimizerConfig {
    OptimizerType type = OptimizerType::none;
    OptimizerParams params{};
    constexpr bool operator==(const OptimizerConfig&) const = default;
};

/// `scheduler.params`: the union of the arguments of every supported scheduler.
/// Which keys each `scheduler.type` accepts is `scheduler_accepts()`.
struct SchedulerParams {
    double warmup_min_lr = 0.0;                 ///< WarmupLR, WarmupDecayLR
    double warmup_max_lr = 1e-3;                ///< WarmupLR, WarmupDecayLR
    std::int64_t warmup_num_steps = 1000;       ///< WarmupLR, WarmupDecayLR, WarmupCosineLR
    WarmupType warmup_type = WarmupType::log;   ///< WarmupLR, WarmupDecayLR, WarmupCosineLR
    Maybe<std::int64_t> total_num_steps{};        ///< WarmupDecayLR, WarmupCosineLR (required)
    double warmup_min_ratio = 0.0;              ///< WarmupCosineLR
    double cos_min_ratio = 1e-4;                ///< WarmupCosineLR
    Maybe<double> cycle_min_lr{};                 ///< OneCycle (required)
    Maybe<double> cycle_max_lr{};                 ///< OneCycle (required)
    double decay_lr_rate = 0.0;                 ///< OneCycle
    std::int64_t cycle_first_step_size = 2000;  ///< OneCycle
    Maybe<std::int64_t> cycle_second_step_size{}; ///< OneCycle; unset means equal to the first
    std::int64_t cycle_first_stair_count = 0;   ///< OneCycle (accepted, unused, as in DeepSpeed)
    std::int64_t cycle_second_stair_count = 0;  ///< OneCycle (accepted, unused, as in DeepSpeed)
    std::int64_t decay_step_size = 0;           ///< OneCycle
    bool cycle_momentum = true;                 ///< OneCycle
    double cycle_min_mom = 0.8;                 ///< OneCycle
    double cycle_max_mom = 0.9;                 ///< OneCycle
    double decay_mom_rate = 0.0;                ///< OneCycle
    double lr_range_test_min_lr = 1e-3;         ///< LRRangeTest
    std::int64_t lr_range_test_step_size = 2000; ///< LRRangeTest
    double lr_range_test_step_rate = 1.0;       ///< LRRangeTest
    bool lr_range_test_staircase = false;       ///< LRRangeTest
    constexpr bool operator==(const SchedulerParams&) const = default;
};

/// `scheduler`: absent (`type == none`) by default, like DeepSpeed.
struct SchedulerConfig {
    SchedulerType type = SchedulerType::none;
    SchedulerParams params{};
    constexpr bool operator==(const SchedulerConfig&) const = default;
};

/// `fp16`. The dynamic-scaling keys are `Maybe` because DeepSpeed builds its scaler
/// from them only when at least one is given (SPEC §1.4); see `dynamic_loss_scale_args()`.
struct Fp16Config {
    bool enabled = false;
    bool auto_cast = false;
    double loss_scale = 0.0;                  ///< 0: dynamic scaling; > 0: this static scale
    Maybe<int> initial_scale_power{};           ///< default 16 when any dynamic key is given
    Maybe<int> loss_scale_window{};             ///< default 1000
    Maybe<int> hysteresis{};                    ///< default 2
    Maybe<bool> consecutive_hysteresis{};       ///< default false
    Maybe<double> min_loss_scale{};             ///< default 1
    bool fp16_master_weights_and_grads = false;
    constexpr bool operator==(const Fp16Config&) const = default;
};

/// `bf16` (the legacy key `bfloat16` is read as this one).
struct Bf16Config {
    bool enabled = false;
    constexpr bool operator==(const Bf16Config&) const = default;
};

/// `zero_optimization.offload_optimizer` and `.offload_param`.
struct OffloadConfig {
    OffloadDevice device = OffloadDevice::none;
    bool pin_memory = false;
    double ratio = 1.0;  ///< offload_optimizer only; < 1 needs stage 3
    constexpr bool operator==(const OffloadConfig&) const = default;
};

/// `zero_optimization`. Sizes count elements, not bytes. The `stage3_` keys also load
/// from their short aliases (`prefetch_bucket_size`, ...), as in DeepSpeed.
struct ZeroConfig {
    int stage = 0;
    bool contiguous_gradients = true;
    bool reduce_scatter = true;
    std::int64_t reduce_bucket_size = 500'000'000;
    std::int64_t allgather_bucket_size = 500'000'000;  ///< must be even
    bool allgather_partitions = true;                  ///< parsed, a no-op, as in DeepSpeed
    Maybe<bool> overlap_comm{};                          ///< unset: true for stage 3 only
    Maybe<bool> cpu_offload{};                           ///< deprecated spelling of offload_optimizer
    OffloadConfig offload_optimizer{};
    OffloadConfig offload_param{};
    std::int64_t sub_group_size = 1'000'000'000;
    std::int64_t stage3_prefetch_bucket_size = 50'000'000;
    std::int64_t stage3_param_persistence_threshold = 100'000;
    std::int64_t stage3_max_live_parameters = 1'000'000'000;
    std::int64_t stage3_max_reuse_distance = 1'000'000'000;
    bool stage3_gather_16bit_weights_on_model_save = false;
    bool round_robin_gradients = false;
    constexpr bool operator==(const ZeroConfig&) const = default;
};

/// The whole `ds_config.json`. `Config{}` is DeepSpeed's behaviour for an empty file.
///
/// @code
/// constexpr ds::Config cfg{
///     .train_batch_size = 16,
///     .optimizer = {.type = ds::OptimizerType::Adam, .params = {.lr = 1e-3}},
///     .zero_optimization = {.stage = 2},
/// };
/// static_assert(ds::check(cfg, /*world_size=*/2));
/// @endcode
struct Config {
    Maybe<std::int64_t> train_batch_size{};
    Maybe<std::int64_t> train_micro_batch_size_per_gpu{};
    Maybe<std::int64_t> gradient_accumulation_steps{};
    Maybe<std::int64_t> steps_per_print{};  ///< unset: no progress log (DeepSpeed's code, not its docs)
    OptimizerConfig optimizer{};
    SchedulerConfig scheduler{};
    double gradient_clipping = 0.0;       ///< 0 disables clipping
    bool prescale_gradients = false;
    double gradient_predivide_factor = 1.0;
    Fp16Config fp16{};
    Bf16Config bf16{};
    bool wall_clock_breakdown = false;
    ZeroConfig zero_optimization{};
    bool zero_allow_untested_optimizer = false;
    bool zero_force_ds_cpu_optimizer = true;
    bool dataloader_drop_last = false;
    std::int64_t seed = 0;                ///< dspp's key: seeds initialisation and the data sampler
    constexpr bool operator==(const Config&) const = default;
};

/// Whether `optimizer.params.<key>` is an argument of optimizer `type` (SPEC §2).
constexpr bool optimizer_accepts(OptimizerType type, std::string_view key) {
    using T = OptimizerType;
    if (key == "lr" || key == "weight_decay") return type != T::none;
    if (key == "betas") return type == T::Adam || type == T::AdamW || type == T::Lamb || type == T::Lion;
    if (key == "eps" || key == "bias_correction") return type == T::Adam || type == T::AdamW || type == T::Lamb;
    if (key == "adam_w_mode" || key == "torch_adam") return type == T::Adam || type == T::AdamW;
    if (key == "momentum" || key == "dampening" || key == "nesterov") return type == T::SGD;
    if (key == "max_coeff" || key == "min_coeff" || key == "eps_inside_sqrt") return type == T::Lamb;
    return false;
}

/// Whether `scheduler.params.<key>` is an argument of scheduler `type` (SPEC §3).
constexpr bool scheduler_accepts(SchedulerType type, std::string_view key) {
    using T = SchedulerType;
    const bool warmup = type == T::WarmupLR || type == T::WarmupDecayLR;
    if (key == "warmup_min_lr" || key == "warmup_max_lr") return warmup;
    if (key == "warmup_num_steps" || key == "warmup_type") return warmup || type == T::WarmupCosineLR;
    if (key == "total_num_steps") return type == T::WarmupDecayLR || type == T::WarmupCosineLR;
    if (key == "warmup_min_ratio" || key == "cos_min_ratio") return type == T::WarmupCosineLR;
    if (key.starts_with("lr_range_test_"))
        return type == T::LRRangeTest && (key == "lr_range_test_min_lr" || key == "lr_range_test_step_size" ||
                                          key == "lr_range_test_step_rate" || key == "lr_range_test_staircase");
    return type == T::OneCycle &&
           (key == "cycle_min_lr" || key == "cycle_max_lr" || key == "decay_lr_rate" ||
            key == "cycle_first_step_size" || key == "cycle_second_step_size" || key == "cycle_first_stair_count" ||
            key == "cycle_second_stair_count" || key == "decay_step_size" || key == "cycle_momentum" ||
            key == "cycle_min_mom" || key == "cycle_max_mom" || key == "decay_mom_rate");
}

/// Arguments of the ZeRO `DynamicLossScaler`, resolved as DeepSpeed does (SPEC §1.4, §4.1).
struct DynamicLossScaleArgs {
    double init_scale;
    int scale_window;
    double min_scale;
    int delayed_shift;  ///< hysteresis
    bool consecutive_hysteresis;
    constexpr bool operator==(const DynamicLossScaleArgs&) const = default;
};

/// The scaler's arguments: the config's values with §1.2 defaults when any dynamic key
/// is given, otherwise the scaler class defaults (2^32, window 1000, min 1, hysteresis 1).
constexpr DynamicLossScaleArgs dynamic_loss_scale_args(const Fp16Config& fp16) {
    const bool any = fp16.initial_scale_power.has_value || fp16.loss_scale_window.has_value ||
                     fp16.hysteresis.has_value || fp16.consecutive_hysteresis.has_value ||
                     fp16.min_loss_scale.has_value;
    if (!any) return {4294967296.0, 1000, 1.0, 1, false};
    double scale = 1.0;
    for (int i = 0; i < fp16.initial_scale_power.value_or(16); ++i) scale *= 2.0;
    return {scale, fp16.loss_scale_window.value_or(1000), fp16.min_loss_scale.value_or(1.0),
            fp16.hysteresis.value_or(2), fp16.consecutive_hysteresis.value_or(false)};
}

/// `optimizer.params` as DeepSpeed applies them: "AdamW" decouples weight decay whatever
/// `adam_w_mode` says, "Adam" only when it is true (SPEC §2.1).
constexpr OptimizerParams effective_params(const OptimizerConfig& optimizer) {
    OptimizerParams p = optimizer.params;
    if (optimizer.type == OptimizerType::AdamW) p.adam_w_mode = true;
    return p;
}

/// `overlap_comm` as DeepSpeed resolves it: the given value, else true for stage 3 only.
constexpr bool overlap_comm(const ZeroConfig& zero) { return zero.overlap_comm.value_or(zero.stage == 3); }

/// The optimizer offload device, honouring the deprecated `cpu_offload` spelling.
constexpr OffloadDevice optimizer_offload_device(const ZeroConfig& zero) {
    if (zero.cpu_offload.has_value) return zero.cpu_offload.value ? OffloadDevice::cpu : OffloadDevice::none;
    return zero.offload_optimizer.device;
}

}  // namespace ds

// Reflection: the member lists below are the JSON keys, in the order they are written.
BOOST_HANA_ADAPT_STRUCT(ds::OptimizerParams, lr, betas, eps, weight_decay, adam_w_mode, bias_correction, torch_adam,
                        momentum, dampening, nesterov, max_coeff, min_coeff, eps_inside_sqrt);
BOOST_HANA_ADAPT_STRUCT(ds::OptimizerConfig, type, params);
BOOST_HANA_ADAPT_STRUCT(ds::SchedulerParams, warmup_min_lr, warmup_max_lr, warmup_num_steps, warmup_type,
                        total_num_steps, warmup_min_ratio, cos_min_ratio, cycle_min_lr, cycle_max_lr, decay_lr_rate,
                        cycle_first_step_size, cycle_second_step_size, cycle_first_stair_count,
                        cycle_second_stair_count, decay_step_size, cycle_momentum, cycle_min_mom, cycle_max_mom,
                        decay_mom_rate, lr_range_test_min_lr, lr_range_test_step_size, lr_range_test_step_rate,
                        lr_range_test_staircase);
BOOST_HANA_ADAPT_STRUCT(ds::SchedulerConfig, type, params);
BOOST_HANA_ADAPT_STRUCT(ds::Fp16Config, enabled, auto_cast, loss_scale, initial_scale_power, loss_scale_window,
                        hysteresis, consecutive_hysteresis, min_loss_scale, fp16_master_weights_and_grads);
BOOST_HANA_ADAPT_STRUCT(ds::Bf16Config, enabled);
BOOST_HANA_ADAPT_STRUCT(ds::OffloadConfig, device, pin_memory, ratio);
BOOST_HANA_ADAPT_STRUCT(ds::ZeroConfig, stage, contiguous_gradients, reduce_scatter, reduce_bucket_size,
                        allgather_bucket_size, allgather_partitions, overlap_comm, cpu_offload, offload_optimizer,
                        offload_param, sub_group_size, stage3_prefetch_bucket_size,
                        stage3_param_persistence_threshold, stage3_max_live_parameters, stage3_max_reuse_distance,
                        stage3_gather_16bit_weights_on_model_save, round_robin_gradients);
BOOST_HANA_ADAPT_STRUCT(ds::Config, train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps,
                        steps_per_print, optimizer, scheduler, gradient_clipping, prescale_gradients,
                        gradient_predivide_factor, fp16, bf16, wall_clock_breakdown, zero_optimization,
                        zero_allow_untested_optimizer, zero_force_ds_cpu_optimizer, dataloader_drop_last, seed);
