#pragma once
// The CPU side of the GPU engine test, compiled by the host compiler alone.
#include <vector>

#include <ds/config/config.hpp>

/// The losses of every step and the parameters after the last.
struct TrainingRun {
    std::vector<double> losses;
    std::vector<float> params;
};

/// The example's config for the engine test: Adam at a constant 1e-3, clipping 1.0, batch 16.
ds::Config engine_test_config();

/// `steps` steps of the CIFAR Net on the synthetic batches the GPU run sees, on the CPU engine.
TrainingRun train_on_cpu(int steps);
