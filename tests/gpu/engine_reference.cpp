// The CPU reference run of tests/gpu/engine_gpu_test.cu (see engine_reference.hpp).
#include "gpu/engine_reference.hpp"

#include <stdexcept>

#include <ds/comm/threads.hpp>
#include <ds/engine/engine.hpp>

#include "cifar10/ds_config.hpp"
#include "cifar10/net.hpp"

ds::Config engine_test_config(int ranks, Dtype dtype) {
    ds::Config cfg = cifar10::ds_config;
    cfg.train_batch_size = 16 * ranks;
    cfg.bf16.enabled = dtype == Dtype::bf16;
    cfg.fp16.enabled = dtype == Dtype::fp16;
    cfg.scheduler = {};  // a constant learning rate: 50 steps of WarmupLR barely move
    cfg.seed = 5;
    return cfg;
}

template <class P>
TrainingRun train_on_cpu_in(int steps, Dtype dtype) {
    ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, P> engine(engine_test_config(1, dtype));
    return train_steps(engine, steps);
}

ds::nn::MoESettings moe_test_settings() { return {.k = 1, .noisy_gate_policy = ds::nn::NoisyGate::rsample}; }

TrainingRun train_moe_on_cpu(int steps) {
    ds::Engine<cifar10::MoENet<3, 32, ds::nn::MoEMlp::residual, 2, 4>, ds::Adam<>, ds::Zero<0>, ds::FP32> engine(
        engine_test_config());
    engine.configure_moe(moe_test_settings());
    return train_steps(engine, steps);
}

TrainingRun train_on_cpu(int steps, Dtype dtype) {
    switch (dtype) {
        case Dtype::bf16: return train_on_cpu_in<ds::BF16>(steps, dtype);
        case Dtype::fp16: return train_on_cpu_in<ds::FP16<>>(steps, dtype);
        default: return train_on_cpu_in<ds::FP32>(steps, dtype);
    }
}

std::vector<TrainingRun> train_on_cpu_ranks(int steps, int ranks) {
    std::vector<TrainingRun> runs(static_cast<std::size_t>(ranks));
    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& world) {
        const auto r = static_cast<std::size_t>(world.rank());
        ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, ds::FP32, ds::Cpu, ds::comm::Threads> engine(
            engine_test_config(ranks), std::move(world));
        runs[r] = train_steps(engine, steps);
    });
    return runs;
}

SavedOnCpu train_and_save_on_cpu(int steps, const std::filesystem::path& dir) {
    ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, ds::FP32> engine(engine_test_config());
    train_steps(engine, steps);
    engine.save_checkpoint(dir);
    return {engine.full_parameters(),
            {{engine.optimizer().state(0).begin(), engine.optimizer().state(0).end()},
             {engine.optimizer().state(1).begin(), engine.optimizer().state(1).end()}}};
}

TrainingRun resume_on_cpu(const std::filesystem::path& dir, int first, int steps) {
    ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, ds::FP32> engine(engine_test_config());
    if (!engine.load_checkpoint(dir)) throw std::runtime_error(dir.string() + ": no checkpoint to resume from");
    return train_steps(engine, steps, first);
}
