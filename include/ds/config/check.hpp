#pragma once
/// @file
/// `ds::check`: DeepSpeed's configuration rules as one constexpr function.
///
/// The same function validates constexpr configs (`static_assert`) and configs read
/// from JSON at run time, so both reject exactly the same files with the same text.

#include <cstdint>
#include <string_view>

#include <ds/config/check_result.hpp>
#include <ds/config/config.hpp>
#include <ds/config/reflect.hpp>

namespace ds {

/// The batch-size triplet after DeepSpeed's derivation (SPEC §1.3).
struct BatchSizes {
    std::int64_t train_batch_size;
    std::int64_t train_micro_batch_size_per_gpu;
    std::int64_t gradient_accumulation_steps;
};

namespace detail {

/// Derives the missing batch sizes; fails only when neither train nor micro is given.
constexpr bool derive_batch_sizes(const Config& c, std::int64_t world, BatchSizes& out) {
    const auto& train = c.train_batch_size;
    const auto& micro = c.train_micro_batch_size_per_gpu;
    const auto& gas = c.gradient_accumulation_steps;
    if (train && micro && gas) out = {train.value, micro.value, gas.value};
    else if (train && micro) out = {train.value, micro.value, train.value / micro.value / world};
    else if (train && gas) out = {train.value, train.value / world / gas.value, gas.value};
    else if (micro && gas) out = {micro.value * gas.value * world, micro.value, gas.value};
    else if (train) out = {train.value, train.value / world, 1};
    else if (micro) out = {micro.value * world, micro.value, 1};
    else return false;
    return true;
}

constexpr CheckResult broken(std::string_view rule) {
    CheckResult r;
    r << rule;
    return r;
}

template <class Params, class Accepts>
constexpr CheckResult check_params(const Params& params, std::string_view block, std::string_view type_name,
                                   Accepts accepts) {
    CheckResult r;
    for_each_field_pair(params, Params{}, [&](std::string_view key, const auto& value, const auto& fallback) {
        if (r && !accepts(key) && !(value == fallback))
            r << block << ".params." << key << " is not a parameter of " << type_name;
    });
    return r;
}

constexpr CheckResult check_batch(const Config& c, std::int64_t world) {
    // Guard the divisions below; DeepSpeed would raise ZeroDivisionError instead.
    if (c.train_batch_size && c.train_batch_size.value <= 0)
        return broken("Train batch size: ") << c.train_batch_size.value << " has to be greater than 0";
    if (c.train_micro_batch_size_per_gpu && c.train_micro_batch_size_per_gpu.value <= 0)
        return broken("Micro batch size per gpu: ") << c.train_micro_batch_size_per_gpu.value
                                                    << " has to be greater than 0";
    if (c.gradient_accumulation_steps && c.gradient_accumulation_steps.value <= 0)
        return broken("Gradient accumulation steps: ") << c.gradient_accumulation_steps.value
                                                        << " has to be greater than 0";
    BatchSizes b{};
    if (!derive_batch_sizes(c, world, b))
        return broken("Either train_batch_size or train_micro_batch_size_per_gpu needs to be provided");
    if (b.train_batch_size <= 0)
        return broken("Train batch size: ") << b.train_batch_size << " has to be greater than 0";
    if (b.train_micro_batch_size_per_gpu <= 0)
        return broken("Micro batch size per gpu: ") << b.train_micro_batch_size_per_gpu
                                                    << " has to be greater than 0";
    if (b.gradient_accumulation_steps <= 0)
        return broken("Gradient accumulation steps: ") << b.gradient_accumulation_steps
                                                       << " has to be greater than 0";
    if (b.train_batch_size != b.train_micro_batch_size_per_gpu * b.gradient_accumulation_steps * world)
        return broken("Check batch related parameters. train_batch_size is not equal to "
                      "micro_batch_per_gpu * gradient_acc_step * world_size ")
               << b.train_batch_size << " != " << b.train_micro_batch_size_per_gpu << " * "
               << b.gradient_accumulation_steps << " * " << world;
    return {};
}

constexpr CheckResult check_precision(const Config& c) {
    const auto& f = c.fp16;
    if (f.enabled && c.bf16.enabled) return broken("bfloat16 and fp16 modes cannot be simultaneously enabled");
    if (f.loss_scale < 0) return broken("fp16.loss_scale must be >= 0 (0 selects dynamic loss scaling)");
    if (f.initial_scale_power && (f.initial_scale_power.value < 0 || f.initial_scale_power.value > 63))
        return broken("fp16.initial_scale_power must be in [0, 63], got ") << f.initial_scale_power.value;
    if (f.loss_scale_window && f.loss_scale_window.value < 1)
        return broken("fp16.loss_scale_window must be >= 1, got ") << f.loss_scale_window.value;
    if (f.hysteresis && f.hysteresis.value < 1)
        return broken("fp16.hysteresis must be >= 1, got ") << f.hysteresis.value;
    if (f.min_loss_scale && !(f.min_loss_scale.value > 0)) return broken("fp16.min_loss_scale must be > 0");
    if (f.fp16_master_weights_and_grads &&
        !(f.enabled && c.zero_optimization.stage == 2 &&
          optimizer_offload_device(c.zero_optimization) == OffloadDevice::cpu))
        return broken("fp16_master_weights_and_grads requires fp16, ZeRO stage 2 and offload_optimizer on cpu");
    return {};
}

constexpr CheckResult check_zero(const Config& c) {
    const auto& z = c.zero_optimization;
    if (z.stage < 0 || z.stage > 3) return broken("zero_optimization.stage must be 0, 1, 2 or 3, got ") << z.stage;
    if (z.allgather_bucket_size % 2 != 0)
        return broken("allgather_bucket_size must be a multiple of nccl_start_alignment_factor, 2");
    if (z.reduce_bucket_size <= 0 || z.allgather_bucket_size <= 0)
        return broken("zero_optimization bucket sizes must be > 0");
    if (z.cpu_offload.has_value && !(z.offload_optimizer == OffloadConfig{}))
        return broken("Cannot provide deprecated parameter 'cpu_offload' and replacing parameter "
                      "'offload_optimizer' together");
    if (z.offload_optimizer.ratio < 1.0 && z.stage != 3)
        return broken("offload_optimizer.ratio < 1 requires ZeRO stage 3");
    if ((z.stage == 1 || z.stage == 2) && c.optimizer.type == OptimizerType::none)
        return broken("zero stage ") << z.stage << " requires an optimizer";
    const bool tested = c.optimizer.type == OptimizerType::Adam || c.optimizer.type == OptimizerType::AdamW ||
                        c.optimizer.type == OptimizerType::Lion || c.optimizer.type == OptimizerType::none;
    if (z.stage > 0 && !tested && !c.zero_allow_untested_optimizer)
        return broken("You are using an untested ZeRO Optimizer (") << name_of(c.optimizer.type)
               << "). Please add \"zero_allow_untested_optimizer\": true in the configuration file to use it";
    if (z.stage == 2 && z.reduce_scatter && c.gradient_predivide_factor != 1.0)
        return broken("gradient_predivide_factor != 1.0 is not yet supported with ZeRO-2 with reduce scatter enabled");
    if (z.stage == 2 && z.reduce_scatter && c.prescale_gradients)
        return broken("Prescaling is not yet supported with ZeRO-2 with reduce scatter enabled");
    return {};
}

constexpr CheckResult check_optimizer(const Config& c) {
    const auto& o = c.optimizer;
    const auto type = o.type;
    if (type == OptimizerType::none) {
        if (!(o.params == OptimizerParams{})) return broken("optimizer.params given without an optimizer.type");
        return {};
    }
    if (auto r = check_params(o.params, "optimizer", name_of(type),
                              [type](std::string_view key) { return optimizer_accepts(type, key); });
        !r)
        return r;
    const auto& p = o.params;
    if (!(p.lr >= 0)) return broken("optimizer.params.lr: Invalid learning rate, must be >= 0");
    if (!(p.betas[0] >= 0 && p.betas[0] < 1)) return broken("optimizer.params.betas: Invalid beta parameter at index 0");
    if (!(p.betas[1] >= 0 && p.betas[1] < 1)) return broken("optimizer.params.betas: Invalid beta parameter at index 1");
    if (!(p.eps >= 0)) return broken("optimizer.params.eps: Invalid epsilon value, must be >= 0");
    if (!(p.weight_decay >= 0)) return broken("optimizer.params.weight_decay: Invalid weight_decay value, must be >= 0");
    if (p.nesterov && (p.momentum <= 0 || p.dampening != 0))
        return broken("optimizer.params.nesterov requires a momentum and zero dampening");
    if (type == OptimizerType::Lamb && !(c.fp16.enabled && c.fp16.loss_scale == 0))
        return broken("Lamb requires dynamic loss scaling: fp16.enabled true with fp16.loss_scale 0");
    return {};
}

constexpr CheckResult check_scheduler(const Config& c) {
    const auto& s = c.scheduler;
    const auto type = s.type;
    if (type == SchedulerType::none) {
        if (!(s.params == SchedulerParams{})) return broken("scheduler.params given without a scheduler.type");
        return {};
    }
    if (c.optimizer.type == OptimizerType::none)
        return broken("scheduler ") << name_of(type) << " requires an optimizer";
    if (auto r = check_params(s.params, "scheduler", name_of(type),
                              [type](std::string_view key) { return scheduler_accepts(type, key); });
        !r)
        return r;
    const auto& p = s.params;
    if (p.warmup_num_steps < 0) return broken("scheduler.params.warmup_num_steps must be >= 0");
    if ((type == SchedulerType::WarmupDecayLR || type == SchedulerType::WarmupCosineLR) && !p.total_num_steps)
        return broken(name_of(type)) << " requires scheduler.params.total_num_steps";
    const std::int64_t warmup = p.warmup_num_steps < 2 ? 2 : p.warmup_num_steps;
    if (type == SchedulerType::WarmupCosineLR && p.total_num_steps.value == warmup)
        return broken("WarmupCosineLR needs total_num_steps != max(2, warmup_num_steps): the cosine phase "
                      "would divide by zero");
    if (type == SchedulerType::OneCycle) {
        if (!p.cycle_min_lr || !p.cycle_max_lr)
            return broken("OneCycle requires scheduler.params.cycle_min_lr and cycle_max_lr");
        if (p.cycle_first_step_size <= 0 || p.cycle_second_step_size.value_or(1) <= 0)
            return broken("OneCycle step sizes must be > 0");
    }
    if (type == SchedulerType::LRRangeTest && p.lr_range_test_step_size <= 0)
        return broken("LRRangeTest needs scheduler.params.lr_range_test_step_size > 0: the lr's interval "
                      "divides by it");
    return {};
}

}  // namespace detail

/// Validates `cfg` for `world_size` data-parallel ranks; the first broken rule wins.
///
/// Rules, in order: world size; DeepSpeed's batch-size derivation and check (SPEC §1.3,
/// with its messages); fp16/bf16 exclusivity and loss-scale ranges; ZeRO stage range,
/// even `allgather_bucket_size`, `cpu_offload` with `offload_optimizer`, optimizer
/// requirements of stages 1-2, untested optimizers under ZeRO, ZeRO-2 reduce-scatter
/// limits; the optimizer's parameters (names per type, ranges, Lamb needs dynamic fp16
/// scaling); the scheduler's parameters; `steps_per_print`, clipping and predivide ranges.
constexpr CheckResult check(const Config& cfg, std::int64_t world_size) {
    using namespace detail;
    if (world_size < 1) return broken("world_size must be at least 1, got ") << world_size;
    for (auto r : {check_batch(cfg, world_size), check_precision(cfg), check_zero(cfg), check_optimizer(cfg),
                   check_scheduler(cfg)})
        if (!r) return r;
    if (cfg.steps_per_print && cfg.steps_per_print.value <= 0) return broken("steps_per_print must be > 0");
    if (!(cfg.gradient_clipping >= 0)) return broken("gradient_clipping must be >= 0 (0 disables clipping)");
    if (!(cfg.gradient_predivide_factor > 0)) return broken("gradient_predivide_factor must be > 0");
    return {};
}

/// The batch sizes of a config that passed `check(cfg, world_size)`.
constexpr BatchSizes batch_sizes(const Config& cfg, std::int64_t world_size) {
    BatchSizes b{};
    detail::derive_batch_sizes(cfg, world_size, b);
    return b;
}

/// `cfg` with the derived batch-size triplet filled in, as `dspp-config validate` prints it.
constexpr Config normalized(Config cfg, std::int64_t world_size) {
    const BatchSizes b = batch_sizes(cfg, world_size);
    cfg.train_batch_size = b.train_batch_size;
    cfg.train_micro_batch_size_per_gpu = b.train_micro_batch_size_per_gpu;
    cfg.gradient_accumulation_steps = b.gradient_accumulation_steps;
    return cfg;
}

/// Compile-time validation with the broken rule's text in the diagnostic:
/// `static_assert(ds::static_check<cfg, 2>())`.
template <Config C, std::int64_t WorldSize = 1>
constexpr bool static_check() {
    return require_valid<check(C, WorldSize)>();
}

}  // namespace ds
