#pragma once
// The engine test's training run, shared by the GPU test and its host-compiled CPU reference.
#include <cstdint>
#include <vector>

#include <ds/config/config.hpp>
#include <ds/data/synthetic.hpp>
#include <ds/nn/cross_entropy.hpp>

/// The losses of every step and the parameters after the last.
struct TrainingRun {
    std::vector<double> losses;
    std::vector<float> params;
};

/// The example's config for the engine test: Adam at a constant 1e-3, clipping 1.0, batch 16.
ds::Config engine_test_config();

/// `steps` steps of `engine` (a CIFAR Net engine, batch 16) on the same synthetic batches.
template <class Engine>
TrainingRun train_steps(Engine& engine, int steps) {
    constexpr std::size_t batch = 16, image = Engine::input_size;
    const auto data = ds::data::make_synthetic(batch * static_cast<std::size_t>(steps), 3, 32, 32, 10, 6);
    std::vector<float> x(batch * image);
    std::vector<std::int32_t> labels(batch);
    TrainingRun run;
    for (int s = 0; s < steps; ++s) {
        for (std::size_t j = 0; j < batch; ++j) labels[j] = data.get(static_cast<std::size_t>(s) * batch + j, x.data() + j * image);
        const auto loss = ds::nn::CrossEntropyLoss{10}(engine.forward(x), labels);
        engine.backward(loss);
        engine.step();
        run.losses.push_back(loss.value);
    }
    run.params = engine.full_parameters();
    return run;
}

/// The CPU engine's run.
TrainingRun train_on_cpu(int steps);
