#pragma once
// The CIFAR-10 example's DeepSpeed config as a constexpr value: DeepSpeedExamples'
// training/cifar/cifar10_deepspeed.py get_ds_config() for --dtype fp32 --stage 0.
// examples/cifar10/ds_config.json holds the same config; a unit test keeps the two equal.
#include <ds/config/config.hpp>

namespace cifar10 {

inline constexpr ds::Config ds_config{
    .train_batch_size = 16,
    .steps_per_print = 2000,
    .optimizer = {.type = ds::OptimizerType::Adam,
                  .params = {.lr = 0.001, .betas = {0.8, 0.999}, .eps = 1e-8, .weight_decay = 3e-7}},
    .scheduler = {.type = ds::SchedulerType::WarmupLR,
                  .params = {.warmup_min_lr = 0, .warmup_max_lr = 0.001, .warmup_num_steps = 1000}},
    .gradient_clipping = 1.0,
    .prescale_gradients = false,
    .fp16 = {.enabled = false,
             .loss_scale = 0,
             .initial_scale_power = 15,
             .loss_scale_window = 500,
             .hysteresis = 2,
             .min_loss_scale = 1,
             .fp16_master_weights_and_grads = false},
    .bf16 = {.enabled = false},
    .wall_clock_breakdown = false,
    .zero_optimization = {.stage = 0,
                          .contiguous_gradients = true,
                          .reduce_scatter = true,
                          .reduce_bucket_size = 50'000'000,
                          .allgather_bucket_size = 50'000'000,
                          .allgather_partitions = true,
                          .overlap_comm = true,
                          .cpu_offload = false},
};

}  // namespace cifar10
