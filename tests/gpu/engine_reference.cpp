// The CPU reference run of tests/gpu/engine_gpu_test.cu (see engine_reference.hpp).
#include "gpu/engine_reference.hpp"

#include <ds/engine/engine.hpp>

#include "cifar10/ds_config.hpp"
#include "cifar10/net.hpp"

ds::Config engine_test_config() {
    ds::Config cfg = cifar10::ds_config;
    cfg.scheduler = {};  // a constant learning rate: 50 steps of WarmupLR barely move
    cfg.seed = 5;
    return cfg;
}

TrainingRun train_on_cpu(int steps) {
    ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, ds::FP32> engine(engine_test_config());
    return train_steps(engine, steps);
}
