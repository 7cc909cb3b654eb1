// Reading and writing ds_config.json: DeepSpeed's files load, bad files fail with a
// message naming the problem, and saved configs load back equal.
#include <filesystem>
#include <fstream>
#include <string>

#include <doctest/doctest.h>

#include <ds/config/json.hpp>
#include <ds/config/print.hpp>

#include "cifar10/ds_config.hpp"

namespace {

std::string error_of(const std::string& text, std::int64_t world = 1) {
    try {
        ds::parse_config(text, world, "test.json");
    } catch (const ds::ConfigError& e) {
        return e.what();
    }
    return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

const std::string minimal_prefix = R"({"train_batch_size": 16, )";

}  // namespace

TEST_SUITE("config.json") {

TEST_CASE("the CIFAR example's ds_config.json equals its constexpr config") {
    const auto loaded = ds::load_config(DSPP_EXAMPLES_DIR "/cifar10/ds_config.json", 1);
    CHECK(loaded.config == cifar10::ds_config);
    for (const auto& line : ds::diff(cifar10::ds_config, loaded.config)) FAIL_CHECK(line);
    REQUIRE(loaded.warnings.size() == 1);  // DeepSpeed warns about cpu_offload too
    CHECK(contains(loaded.warnings[0], "zero_optimization.cpu_offload is deprecated"));
    static_assert(ds::check(cifar10::ds_config, 16));
}

TEST_CASE("save writes JSON that loads back identical") {
    ds::Config configs[] = {
        cifar10::ds_config,
        ds::Config{.train_micro_batch_size_per_gpu = 4,
                   .gradient_accumulation_steps = 3,
                   .optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 0.1, .momentum = 0.9, .nesterov = true}},
                   .scheduler = {.type = ds::SchedulerType::OneCycle,
                                 .params = {.cycle_min_lr = 1e-4, .cycle_max_lr = 0.1, .cycle_second_step_size = 7}},
                   .fp16 = {.enabled = true, .loss_scale = 1024},
                   .zero_optimization = {.stage = 3, .stage3_param_persistence_threshold = 0},
                   .zero_allow_untested_optimizer = true,
                   .seed = 1234},
        ds::Config{.train_batch_size = 64,
                   .optimizer = {.type = ds::OptimizerType::AdamW, .params = {.lr = 0.123456789012345678}},
                   .scheduler = {.type = ds::SchedulerType::WarmupCosineLR,
                                 .params = {.warmup_num_steps = 10, .warmup_type = ds::WarmupType::linear,
                                            .total_num_steps = 100, .cos_min_ratio = 0.25}},
                   .bf16 = {.enabled = true}},
        ds::Config{.train_batch_size = 8,
                   .optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 0.1}},
                   .scheduler = {.type = ds::SchedulerType::LRRangeTest,
                                 .params = {.lr_range_test_min_lr = 2e-5, .lr_range_test_step_size = 50,
                                            .lr_range_test_step_rate = 3.5, .lr_range_test_staircase = true}}},
    };
    const auto file = std::filesystem::temp_directory_path() / "dspp_roundtrip.json";
    for (const auto& cfg : configs) {
        ds::save_config(cfg, file);
        const auto loaded = ds::load_config(file, 1);
        CHECK(loaded.config == cfg);
        CHECK(ds::diff(cfg, loaded.config).empty());
    }
    std::filesystem::remove(file);
}

TEST_CASE("duplicate keys are an error naming them") {
    const auto e = error_of(R"({"train_batch_size": 16, "fp16": {"enabled": true, "enabled": false}})");
    CHECK(contains(e, "Duplicate keys in DeepSpeed config: [fp16.enabled]"));
}

TEST_CASE("\"auto\" keeps the default") {
    const auto c = ds::parse_config(minimal_prefix + R"("gradient_clipping": "auto",
        "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}, "optimizer": {"type": "Adam"}})", 1).config;
    CHECK(c.gradient_clipping == 0.0);
    CHECK(c.zero_optimization.reduce_bucket_size == 500'000'000);
    CHECK(c.zero_optimization.stage == 2);
}

TEST_CASE("unknown keys: error with path and closest valid key") {
    auto e = error_of(minimal_prefix + R"("zero_optimization": {"stag": 1}})");
    CHECK(contains(e, "test.json: unknown key 'zero_optimization.stag'; did you mean 'zero_optimization.stage'?"));
    e = error_of(R"({"train_batch_sise": 16})");
    CHECK(contains(e, "did you mean 'train_batch_size'?"));
    e = error_of(minimal_prefix + R"("completely_unrelated_thing": 1})");
    CHECK(contains(e, "unknown key 'completely_unrelated_thing'"));
    CHECK_FALSE(contains(e, "did you mean"));
}

TEST_CASE("keys DeepSpeed knows but dspp does not implement are warnings naming them") {
    const auto loaded = ds::parse_config(minimal_prefix + R"("tensorboard": {"enabled": true},
        "zero_optimization": {"stage": 0, "zero_hpz_partition_size": 2}})", 1, "x.json");
    REQUIRE(loaded.warnings.size() == 2);
    CHECK(contains(loaded.warnings[0], "x.json: tensorboard: known to DeepSpeed but not implemented by dspp"));
    CHECK(contains(loaded.warnings[1], "zero_optimization.zero_hpz_partition_size"));
}

TEST_CASE("ZeRO tuning keys dspp does not act on yet are warnings, where DeepSpeed would use them") {
    const auto stage3 = ds::parse_config(minimal_prefix + R"("optimizer": {"type": "Adam"},
        "zero_optimization": {"stage": 3, "sub_group_size": 1000, "stage3_max_live_parameters": 10,
                              "stage3_prefetch_bucket_size": 10, "stage3_max_reuse_distance": 10,
                              "allgather_bucket_size": 1000}})", 1, "z.json");
    REQUIRE(stage3.warnings.size() == 4);  // allgather_bucket_size is a stage 1-2 key
    CHECK(contains(stage3.warnings[0], "z.json: zero_optimization.sub_group_size: not honoured by dspp yet"));
    CHECK(contains(stage3.warnings[1], "stage3_max_live_parameters"));
    CHECK(contains(stage3.warnings[2], "stage3_prefetch_bucket_size"));
    CHECK(contains(stage3.warnings[3], "stage3_max_reuse_distance"));
    const auto stage2 = ds::parse_config(minimal_prefix + R"("optimizer": {"type": "Adam"},
        "zero_optimization": {"stage": 2, "allgather_bucket_size": 1000, "sub_group_size": 1000}})", 1);
    REQUIRE(stage2.warnings.size() == 1);
    CHECK(contains(stage2.warnings[0], "zero_optimization.allgather_bucket_size: not honoured"));
    const auto defaults = ds::parse_config(minimal_prefix + R"("optimizer": {"type": "Adam"},
        "zero_optimization": {"stage": 3, "sub_group_size": 1e9}})", 1);
    CHECK(defaults.warnings.empty());  // the default, written out
}

TEST_CASE("wrong types name the key and the expected type") {
    CHECK(contains(error_of(minimal_prefix + R"("zero_optimization": {"stage": "2"}})"),
                   "zero_optimization.stage: expected an integer, got string \"2\""));
    CHECK(contains(error_of(minimal_prefix + R"("fp16": {"enabled": 1}})"),
                   "fp16.enabled: expected a boolean, got number 1"));
    CHECK(contains(error_of(minimal_prefix + R"("optimizer": {"type": "Adam", "params": {"betas": [0.9]}}})"),
                   "optimizer.params.betas: expected an array of 2 numbers"));
    CHECK(contains(error_of(minimal_prefix + R"("zero_optimization": {"reduce_bucket_size": 1.5}})"),
                   "zero_optimization.reduce_bucket_size: expected an integer, got number"));
    CHECK(contains(error_of(minimal_prefix + R"("optimizer": {"type": "adamax"}})"),
                   "optimizer.type: unknown value \"adamax\"; expected one of: none, Adam, AdamW, Lamb, Lion, SGD"));
    CHECK(contains(error_of(R"([1, 2])"), "expected a JSON object"));
}

TEST_CASE("all problems are reported together") {
    try {
        ds::parse_config(R"({"train_batch_size": true, "fp16": {"enabld": true}})", 1);
        FAIL("no error");
    } catch (const ds::ConfigError& e) {
        CHECK(e.problems().size() == 2);
    }
}

TEST_CASE("sizes written as 5e7 are integers; DeepSpeed's name case rules for optimizers") {
    const auto c = ds::parse_config(minimal_prefix + R"("zero_optimization": {"reduce_bucket_size": 5e7},
        "optimizer": {"type": "adamw"}})", 1).config;
    CHECK(c.zero_optimization.reduce_bucket_size == 50'000'000);
    CHECK(c.optimizer.type == ds::OptimizerType::AdamW);
    CHECK(contains(error_of(minimal_prefix + R"("optimizer": {"type": "sgd"}})"), "unknown value \"sgd\""));
}

TEST_CASE("optimizer params are checked against the type; max_grad_norm points to gradient_clipping") {
    CHECK(contains(error_of(minimal_prefix + R"("optimizer": {"type": "Adam", "params": {"momentum": 0.9}}})"),
                   "optimizer.params.momentum: not a parameter of Adam"));
    CHECK(contains(error_of(minimal_prefix + R"("optimizer": {"type": "Adam", "params": {"max_grad_norm": 1}}})"),
                   "use \"gradient_clipping\""));
    CHECK(contains(error_of(minimal_prefix + R"("scheduler": {"type": "WarmupLR", "params": {"total_num_steps": 9}},
        "optimizer": {"type": "Adam"}})"), "scheduler.params.total_num_steps: not a parameter of WarmupLR"));
}

TEST_CASE("DeepSpeed's LRRangeTest block loads, and its arguments belong to it alone") {
    const auto c = ds::parse_config(minimal_prefix + R"("optimizer": {"type": "Adam"},
        "scheduler": {"type": "LRRangeTest", "params": {"lr_range_test_min_lr": 1e-5, "lr_range_test_step_size": 200,
                      "lr_range_test_step_rate": 5, "lr_range_test_staircase": true}}})", 1).config;
    CHECK(c.scheduler.type == ds::SchedulerType::LRRangeTest);
    CHECK(c.scheduler.params.lr_range_test_min_lr == 1e-5);
    CHECK(c.scheduler.params.lr_range_test_step_size == 200);
    CHECK(c.scheduler.params.lr_range_test_step_rate == 5.0);
    CHECK(c.scheduler.params.lr_range_test_staircase);
    CHECK(contains(error_of(minimal_prefix + R"("optimizer": {"type": "Adam"},
        "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 0, "cycle_max_lr": 1, "lr_range_test_step_rate": 2}}})"),
                   "scheduler.params.lr_range_test_step_rate: not a parameter of OneCycle"));
    CHECK(contains(error_of(minimal_prefix + R"("optimizer": {"type": "Adam"},
        "scheduler": {"type": "LRRangeTest", "params": {"lr_range_test_step_size": 0}}})"),
                   "lr_range_test_step_size > 0"));
}

TEST_CASE("aliases and legacy forms") {
    auto c = ds::parse_config(minimal_prefix + R"("bfloat16": {"enabled": true}, "optimizer": {"type": "Adam"},
        "zero_optimization": {"stage": 3, "param_persistence_threshold": 0, "prefetch_bucket_size": 1000}})", 1).config;
    CHECK(c.bf16.enabled);
    CHECK(c.zero_optimization.stage3_param_persistence_threshold == 0);
    CHECK(c.zero_optimization.stage3_prefetch_bucket_size == 1000);
    const auto legacy = ds::parse_config(minimal_prefix + R"("zero_optimization": true, "optimizer": {"type": "Adam"}})", 1);
    CHECK(legacy.config.zero_optimization.stage == 1);
    CHECK(legacy.warnings.size() == 1);
}

TEST_CASE("the same rules as at compile time run after reading") {
    CHECK(contains(error_of(R"({"train_batch_size": 16, "fp16": {"enabled": true}, "bf16": {"enabled": true}})"),
                   "bfloat16 and fp16 modes cannot be simultaneously enabled"));
    CHECK(contains(error_of(R"({"train_batch_size": 16})", 3), "16 != 5 * 1 * 3"));
    CHECK(contains(error_of(R"({"train_batch_size": 16, "zero_optimization": {"cpu_offload": true,
        "offload_optimizer": {"device": "cpu"}, "stage": 2}, "optimizer": {"type": "Adam"}})"),
                   "Cannot provide deprecated parameter 'cpu_offload'"));
}

TEST_CASE("missing and malformed files are errors naming the file") {
    const auto missing = std::filesystem::temp_directory_path() / "dspp_no_such_config.json";
    try {
        ds::load_config(missing, 1);
        FAIL("no error");
    } catch (const ds::ConfigError& e) {
        CHECK(contains(e.what(), missing.string() + ": cannot open the config file"));
    }
    const auto truncated = std::filesystem::temp_directory_path() / "dspp_truncated.json";
    std::ofstream(truncated) << R"({"train_batch_size": 16, "fp16": {"enab)";
    try {
        ds::load_config(truncated, 1);
        FAIL("no error");
    } catch (const ds::ConfigError& e) {
        CHECK(contains(e.what(), truncated.string() + ": malformed JSON"));
    }
    std::filesystem::remove(truncated);
}

TEST_CASE("diff names each changed key with both values") {
    ds::Config a = cifar10::ds_config, b = cifar10::ds_config;
    b.zero_optimization.stage = 2;
    b.optimizer.params.betas[0] = 0.9;
    const auto lines = ds::diff(a, b);
    REQUIRE(lines.size() == 2);
    CHECK(lines[0] == "optimizer.params.betas.0: 0.8 -> 0.9");
    CHECK(lines[1] == "zero_optimization.stage: 0 -> 2");
}

}  // TEST_SUITE
