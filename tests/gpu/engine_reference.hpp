#pragma once
// The engine test's training run, shared by the GPU test and its host-compiled CPU reference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <vector>

#include <ds/config/config.hpp>
#include <ds/data/synthetic.hpp>
#include <ds/nn/cross_entropy.hpp>
#include <ds/nn/moe.hpp>

/// The parameters before the first step, every step's loss and the parameters after the last.
struct TrainingRun {
    std::vector<float> initial;
    std::vector<double> losses;
    std::vector<float> params;
    std::int64_t skipped = 0;  ///< steps skipped for overflow (fp16)
};

/// |got − expected| relative to |expected|, or to `floor` when that is larger.
inline double relative(double got, double expected, double floor) {
    return std::abs(got - expected) / std::max(std::abs(expected), floor);
}

/// How far two runs from the same start ended apart, against how far they moved:
/// ‖a − b‖ / ‖b − initial‖. The measure for two backends: Adam's first step moves a
/// parameter by ±lr whatever its gradient's size, so a gradient that is zero up to rounding
/// (and so of either sign) parts one parameter by 2·lr, which a per-parameter bound would
/// call a failure and this one sees as the rounding it is.
inline double drift(const TrainingRun& a, const TrainingRun& b) {
    double apart = 0, moved = 0;
    for (std::size_t i = 0; i < b.params.size(); ++i) {
        apart += (double(a.params[i]) - b.params[i]) * (double(a.params[i]) - b.params[i]);
        moved += (double(b.params[i]) - b.initial[i]) * (double(b.params[i]) - b.initial[i]);
    }
    return std::sqrt(apart / moved);
}

/// The share of parameters within `bound` of each other (relative, floor 1e-2).
inline double share_within(const TrainingRun& a, const TrainingRun& b, double bound) {
    std::size_t close = 0;
    for (std::size_t i = 0; i < b.params.size(); ++i) close += relative(a.params[i], b.params[i], 1e-2) < bound;
    return static_cast<double>(close) / static_cast<double>(b.params.size());
}

/// The engines' precisions the GPU tests compare.
enum class Dtype { fp32, bf16, fp16 };

/// The example's config for the engine test: Adam at a constant 1e-3, clipping 1.0, batch 16
/// per rank over `ranks` ranks, in `dtype` (fp16: the example's dynamic loss scaling).
ds::Config engine_test_config(int ranks = 1, Dtype dtype = Dtype::fp32);

/// `steps` steps of `engine` (a CIFAR Net engine, batch 16 per rank) on the same synthetic
/// batches: step s of rank r takes the (s·ranks + r)-th batch of 16, so ranks differ. A run
/// resumed at step `first` takes the batches from there.
template <class Engine>
TrainingRun train_steps(Engine& engine, int steps, int first = 0) {
    constexpr std::size_t batch = 16, image = Engine::input_size;
    const auto rank = static_cast<std::size_t>(engine.global_rank()), ranks = static_cast<std::size_t>(engine.world_size());
    const auto data = ds::data::make_synthetic(batch * ranks * static_cast<std::size_t>(first + steps), 3, 32, 32, 10, 6);
    std::vector<float> x(batch * image);
    std::vector<std::int32_t> labels(batch);
    TrainingRun run;
    run.initial = engine.full_parameters();
    for (int s = 0; s < steps; ++s) {
        const std::size_t at = (static_cast<std::size_t>(first + s) * ranks + rank) * batch;
        for (std::size_t j = 0; j < batch; ++j) labels[j] = data.get(at + j, x.data() + j * image);
        const auto loss = ds::nn::CrossEntropyLoss{10}(engine.forward(x), labels);
        engine.backward(loss);
        engine.step();
        run.losses.push_back(loss.value);
    }
    run.params = engine.full_parameters();
    run.skipped = engine.skipped_steps();
    return run;
}

/// The CPU engine's run at ZeRO stage 0 in `dtype`.
TrainingRun train_on_cpu(int steps, Dtype dtype = Dtype::fp32);
/// The example's PR-MoE Net (`--num-experts 2 4 --mlp-type residual`) with run_ds_prmoe.sh's
/// gating (top-1, RSample noise), for the engine test of MoE on the GPU.
ds::nn::MoESettings moe_test_settings();
/// The CPU engine's run of that Net at ZeRO stage 0, fp32.
TrainingRun train_moe_on_cpu(int steps);
/// The CPU engine's runs over `ranks` ranks (`comm::Threads`), rank by rank.
std::vector<TrainingRun> train_on_cpu_ranks(int steps, int ranks);

/// A CPU engine's checkpoint (fp32, stage 0): what it saved, to compare with a loading engine.
struct SavedOnCpu {
    std::vector<float> params;
    std::vector<std::vector<float>> optimizer_states;  ///< Adam's exp_avg, exp_avg_sq
};
/// The CPU engine (fp32, stage 0) after `steps` steps, saved to `dir` as `global_step<steps>`.
SavedOnCpu train_and_save_on_cpu(int steps, const std::filesystem::path& dir);
/// A CPU engine (fp32, stage 0) that loads `dir`'s latest checkpoint (saved at step `first`)
/// and trains `steps` more; `initial` is what it loaded.
TrainingRun resume_on_cpu(const std::filesystem::path& dir, int first, int steps);
