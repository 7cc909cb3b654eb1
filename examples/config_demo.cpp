// config_demo: a DeepSpeed config checked by the compiler, the policies it selects, and the
// same config read back from the CIFAR example's ds_config.json at run time.
//
//   build/bin/config_demo [path/to/ds_config.json] [world_size]
#include <cstdlib>
#include <iostream>
#include <string>

#include <ds/ds.hpp>

#include "cifar10/ds_config.hpp"

// The README's example: a config as a constexpr value, validated at compile time.
constexpr ds::Config cfg{
    .train_batch_size = 16,
    .optimizer = {.type = ds::OptimizerType::Adam, .params = {.lr = 1e-3, .betas = {0.8, 0.999}}},
    .scheduler = {.type = ds::SchedulerType::WarmupLR, .params = {.warmup_num_steps = 1000}},
    .gradient_clipping = 1.0,
    .bf16 = {.enabled = true},
    .zero_optimization = {.stage = 2, .reduce_bucket_size = 50'000'000},
};
static_assert(ds::static_check<cfg, /*world_size=*/2>());   // a broken rule fails here, with its text

using Policies = ds::PoliciesFor<cfg>;                       // Adam<...>, Zero<2>, BF16, Cpu
static_assert(std::is_same_v<Policies::zero_policy, ds::Zero<2>>);
static_assert(std::is_same_v<Policies::precision_policy, ds::BF16>);

int main(int argc, char** argv) {
    const std::string file = argc > 1 ? argv[1] : "examples/cifar10/ds_config.json";
    const long world_size = argc > 2 ? std::atol(argv[2]) : 1;
    std::cout << "compile-time config -> " << ds::name_of(Policies::optimizer_policy::type) << ", ZeRO stage "
              << Policies::zero_policy::stage << ", " << Policies::precision_policy::name << ", "
              << Policies::device_policy::name << "\n";
    try {
        const auto loaded = ds::load_config(file, world_size);
        for (const auto& w : loaded.warnings) std::cout << "warning: " << w << "\n";
        const auto batch = ds::batch_sizes(loaded.config, world_size);
        std::cout << file << " on " << world_size << " rank(s): micro batch " << batch.train_micro_batch_size_per_gpu
                  << ", gradient accumulation " << batch.gradient_accumulation_steps << "\n";
        const auto changes = ds::diff(cifar10::ds_config, loaded.config);
        std::cout << (changes.empty() ? "identical to the example's constexpr config\n"
                                      : "differs from the example's constexpr config:\n");
        for (const auto& line : changes) std::cout << "  " << line << "\n";
    } catch (const ds::ConfigError& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
}
