// ds::check: DeepSpeed's configuration rules (SPEC §1), at compile time and at run time.
#include <string>

#include <doctest/doctest.h>

#include <ds/config/check.hpp>

using ds::Config;
using ds::OptimizerType;

namespace {
constexpr Config batch(ds::Maybe<std::int64_t> train, ds::Maybe<std::int64_t> micro, ds::Maybe<std::int64_t> gas) {
    Config c{};
    c.train_batch_size = train;
    c.train_micro_batch_size_per_gpu = micro;
    c.gradient_accumulation_steps = gas;
    return c;
}
std::string what(const Config& c, std::int64_t world = 1) { return std::string(ds::check(c, world).what()); }
}  // namespace

TEST_SUITE("config.check") {

TEST_CASE("an empty config fails like DeepSpeed: a batch size is required") {
    CHECK(what(Config{}) == "Either train_batch_size or train_micro_batch_size_per_gpu needs to be provided");
}

TEST_CASE("batch-size triplet derivation (DeepSpeed TestBatchConfig, world 2)") {
    static_assert(ds::check(batch(32, 16, 1), 2));
    static_assert(ds::check(batch(32, 8, 2), 2));
    CHECK(what(batch(33, 17, 2), 2).find("33 != 17 * 2 * 2") != std::string::npos);
    CHECK(what(batch(32, 18, 1), 2).find("32 != 18 * 1 * 2") != std::string::npos);
    // Two of three given.
    constexpr auto from_train_micro = ds::batch_sizes(batch(32, 8, {}), 2);
    static_assert(from_train_micro.gradient_accumulation_steps == 2);
    constexpr auto from_train_gas = ds::batch_sizes(batch(32, {}, 2), 2);
    static_assert(from_train_gas.train_micro_batch_size_per_gpu == 8);
    constexpr auto from_micro_gas = ds::batch_sizes(batch({}, 8, 2), 2);
    static_assert(from_micro_gas.train_batch_size == 32);
    // One given.
    constexpr auto only_train = ds::batch_sizes(batch(64, {}, {}), 1);
    static_assert(only_train.train_micro_batch_size_per_gpu == 64 && only_train.gradient_accumulation_steps == 1);
    constexpr auto only_micro = ds::batch_sizes(batch({}, 4, {}), 8);
    static_assert(only_micro.train_batch_size == 32);
    CHECK(what(batch({}, {}, 4)) == "Either train_batch_size or train_micro_batch_size_per_gpu needs to be provided");
}

TEST_CASE("the CIFAR example's batch 16 is valid on 1, 2, 4, 8, 16 ranks and not on 3") {
    constexpr Config c = batch(16, {}, {});
    for (int world : {1, 2, 4, 8, 16}) {
        CHECK(ds::check(c, world));
        CHECK(ds::batch_sizes(c, world).train_micro_batch_size_per_gpu == 16 / world);
    }
    CHECK(what(c, 3) ==
          "Check batch related parameters. train_batch_size is not equal to micro_batch_per_gpu * "
          "gradient_acc_step * world_size 16 != 5 * 1 * 3");
}

TEST_CASE("non-positive batch values are named, not divided by") {
    CHECK(what(batch(0, {}, {})) == "Train batch size: 0 has to be greater than 0");
    CHECK(what(batch(16, 0, {})) == "Micro batch size per gpu: 0 has to be greater than 0");
    CHECK(what(batch(16, {}, -1)) == "Gradient accumulation steps: -1 has to be greater than 0");
    CHECK(what(batch(2, {}, {}), 4) == "Micro batch size per gpu: 0 has to be greater than 0");
    CHECK(what(batch(16, {}, {}), 0) == "world_size must be at least 1, got 0");
}

TEST_CASE("normalized fills in the derived triplet") {
    constexpr Config n = ds::normalized(batch(16, {}, {}), 4);
    static_assert(n.train_micro_batch_size_per_gpu.value == 4 && n.gradient_accumulation_steps.value == 1);
    static_assert(n.train_batch_size.value == 16);
}

constexpr Config base{.train_batch_size = 16, .optimizer = {.type = OptimizerType::Adam}};

TEST_CASE("fp16 and bf16 are exclusive") {
    Config c = base;
    c.fp16.enabled = c.bf16.enabled = true;
    CHECK(what(c) == "bfloat16 and fp16 modes cannot be simultaneously enabled");
    c.fp16.enabled = false;
    CHECK(ds::check(c, 1));
}

TEST_CASE("zero stage range, even allgather bucket, bucket sizes") {
    Config c = base;
    c.zero_optimization.stage = 4;
    CHECK(what(c) == "zero_optimization.stage must be 0, 1, 2 or 3, got 4");
    c.zero_optimization.stage = 1;
    c.zero_optimization.allgather_bucket_size = 5'000'001;
    CHECK(what(c) == "allgather_bucket_size must be a multiple of nccl_start_alignment_factor, 2");
    c.zero_optimization.allgather_bucket_size = 500;
    c.zero_optimization.reduce_bucket_size = 0;
    CHECK(what(c) == "zero_optimization bucket sizes must be > 0");
}

TEST_CASE("deprecated cpu_offload together with offload_optimizer") {
    Config c = base;
    c.zero_optimization.cpu_offload = true;
    CHECK(ds::check(c, 1));
    c.zero_optimization.offload_optimizer.device = ds::OffloadDevice::cpu;
    CHECK(what(c) == "Cannot provide deprecated parameter 'cpu_offload' and replacing parameter "
                     "'offload_optimizer' together");
    c.zero_optimization.cpu_offload = {};
    CHECK(ds::check(c, 1));
    CHECK(ds::optimizer_offload_device(c.zero_optimization) == ds::OffloadDevice::cpu);
}

TEST_CASE("ZeRO stages 1 and 2 need an optimizer; untested optimizers need the opt-in") {
    Config c = batch(16, {}, {});
    c.zero_optimization.stage = 2;
    CHECK(what(c) == "zero stage 2 requires an optimizer");
    c.zero_optimization.stage = 3;
    CHECK(ds::check(c, 1));  // stage 3 without an optimizer is inference: allowed
    c.optimizer.type = OptimizerType::SGD;
    CHECK(what(c).find("untested ZeRO Optimizer (SGD)") != std::string::npos);
    c.zero_allow_untested_optimizer = true;
    CHECK(ds::check(c, 1));
    c.optimizer.type = OptimizerType::Lion;
    c.zero_allow_untested_optimizer = false;
    CHECK(ds::check(c, 1));
}

TEST_CASE("Lamb needs dynamic fp16 loss scaling, so Lamb + bf16 fails") {
    Config c = base;
    c.optimizer.type = OptimizerType::Lamb;
    c.bf16.enabled = true;
    CHECK(what(c) == "Lamb requires dynamic loss scaling: fp16.enabled true with fp16.loss_scale 0");
    c.bf16.enabled = false;
    c.fp16.enabled = true;
    CHECK(ds::check(c, 1));
    c.fp16.loss_scale = 128;
    CHECK_FALSE(ds::check(c, 1));
}

TEST_CASE("optimizer params must belong to the optimizer type") {
    Config c = base;
    c.optimizer.params.momentum = 0.9;
    CHECK(what(c) == "optimizer.params.momentum is not a parameter of Adam");
    c.optimizer.type = OptimizerType::SGD;
    CHECK(ds::check(c, 1));
    c.optimizer.params.betas = {0.5, 0.5};
    CHECK(what(c) == "optimizer.params.betas is not a parameter of SGD");
}

TEST_CASE("optimizer hyper-parameter ranges") {
    Config c = base;
    c.optimizer.params.lr = -1;
    CHECK(what(c).find("Invalid learning rate") != std::string::npos);
    c.optimizer.params.lr = 1e-3;
    c.optimizer.params.betas = {1.0, 0.999};
    CHECK(what(c).find("Invalid beta parameter at index 0") != std::string::npos);
    c.optimizer.params.betas = {0.9, -0.1};
    CHECK(what(c).find("Invalid beta parameter at index 1") != std::string::npos);
}

TEST_CASE("schedulers: required arguments and arguments of another type") {
    Config c = base;
    c.scheduler.type = ds::SchedulerType::WarmupDecayLR;
    CHECK(what(c) == "WarmupDecayLR requires scheduler.params.total_num_steps");
    c.scheduler.params.total_num_steps = 10000;
    CHECK(ds::check(c, 1));
    c.scheduler.type = ds::SchedulerType::WarmupLR;
    CHECK(what(c) == "scheduler.params.total_num_steps is not a parameter of WarmupLR");
    c.scheduler = {.type = ds::SchedulerType::OneCycle};
    CHECK(what(c) == "OneCycle requires scheduler.params.cycle_min_lr and cycle_max_lr");
    c.scheduler.params.cycle_min_lr = 1e-4;
    c.scheduler.params.cycle_max_lr = 1e-3;
    CHECK(ds::check(c, 1));
    c.scheduler = {.type = ds::SchedulerType::WarmupCosineLR, .params = {.total_num_steps = 1000}};
    CHECK(what(c).find("divide by zero") != std::string::npos);
    c.scheduler = {.type = ds::SchedulerType::LRRangeTest};
    CHECK(ds::check(c, 1));  // every argument has a default
    c.scheduler.params.lr_range_test_step_size = 0;
    CHECK(what(c).find("LRRangeTest needs scheduler.params.lr_range_test_step_size > 0") == 0);
    c.scheduler.params.lr_range_test_step_size = 100;
    c.scheduler.params.warmup_max_lr = 0.1;
    CHECK(what(c) == "scheduler.params.warmup_max_lr is not a parameter of LRRangeTest");
    c.scheduler = {.type = ds::SchedulerType::WarmupLR, .params = {.lr_range_test_staircase = true}};
    CHECK(what(c) == "scheduler.params.lr_range_test_staircase is not a parameter of WarmupLR");
    Config no_optimizer = batch(16, {}, {});
    no_optimizer.scheduler.type = ds::SchedulerType::WarmupLR;
    CHECK(what(no_optimizer) == "scheduler WarmupLR requires an optimizer");
}

TEST_CASE("ZeRO-2 with reduce_scatter forbids predivide and prescale") {
    Config c = base;
    c.zero_optimization.stage = 2;
    c.gradient_predivide_factor = 2.0;
    CHECK(what(c).find("gradient_predivide_factor != 1.0 is not yet supported") == 0);
    c.zero_optimization.reduce_scatter = false;
    CHECK(ds::check(c, 1));
    c.zero_optimization.reduce_scatter = true;
    c.gradient_predivide_factor = 1.0;
    c.prescale_gradients = true;
    CHECK(what(c) == "Prescaling is not yet supported with ZeRO-2 with reduce scatter enabled");
}

TEST_CASE("fp16 block ranges and fp16_master_weights_and_grads") {
    Config c = base;
    c.fp16 = {.enabled = true, .loss_scale_window = 0};
    CHECK(what(c) == "fp16.loss_scale_window must be >= 1, got 0");
    c.fp16 = {.enabled = true, .hysteresis = 0};
    CHECK(what(c) == "fp16.hysteresis must be >= 1, got 0");
    c.fp16 = {.enabled = true, .fp16_master_weights_and_grads = true};
    CHECK(what(c).find("fp16_master_weights_and_grads requires") == 0);
    c.zero_optimization.stage = 2;
    c.zero_optimization.offload_optimizer.device = ds::OffloadDevice::cpu;
    CHECK(ds::check(c, 1));
}

TEST_CASE("dynamic loss-scale arguments: config values, else the scaler class defaults") {
    constexpr auto none = ds::dynamic_loss_scale_args({.enabled = true});
    static_assert(none == ds::DynamicLossScaleArgs{4294967296.0, 1000, 1.0, 1, false});
    constexpr auto example = ds::dynamic_loss_scale_args(
        {.enabled = true, .initial_scale_power = 15, .loss_scale_window = 500, .hysteresis = 2, .min_loss_scale = 1.0});
    static_assert(example == ds::DynamicLossScaleArgs{32768.0, 500, 1.0, 2, false});
    constexpr auto one_key = ds::dynamic_loss_scale_args({.enabled = true, .loss_scale_window = 100});
    static_assert(one_key == ds::DynamicLossScaleArgs{65536.0, 100, 1.0, 2, false});
    CHECK(true);
}

TEST_CASE("overlap_comm resolves to true for stage 3 only") {
    static_assert(!ds::overlap_comm({.stage = 2}));
    static_assert(ds::overlap_comm({.stage = 3}));
    static_assert(!ds::overlap_comm({.stage = 3, .overlap_comm = false}));
    static_assert(ds::overlap_comm({.stage = 0, .overlap_comm = true}));
    CHECK(true);
}

TEST_CASE("a failed check converts to false and carries text; a valid one is empty") {
    constexpr auto ok = ds::check(base, 1);
    static_assert(static_cast<bool>(ok) && ok.what().empty());
    constexpr auto bad = ds::check(Config{}, 1);
    static_assert(!bad && !bad.what().empty());
    CHECK(ds::static_check<base, 16>());
}

}  // TEST_SUITE
