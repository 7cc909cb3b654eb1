// The CPU reference run of tests/gpu/engine_gpu_test.cu (see engine_reference.hpp).
#include "gpu/engine_reference.hpp"

#include <cstdint>

#include <ds/data/synthetic.hpp>
#include <ds/engine/engine.hpp>
#include <ds/nn/cross_entropy.hpp>

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
    const auto data = ds::data::make_synthetic(16 * static_cast<std::size_t>(steps), 3, 32, 32, 10, 6);
    std::vector<float> x(16 * cifar10::CifarNet::input_shape::size);
    std::vector<std::int32_t> labels(16);
    TrainingRun run;
    for (int s = 0; s < steps; ++s) {
        for (std::size_t j = 0; j < 16; ++j)
            labels[j] = data.get(static_cast<std::size_t>(s) * 16 + j, x.data() + j * cifar10::CifarNet::input_shape::size);
        const auto loss = ds::nn::CrossEntropyLoss{10}(engine.forward(x), labels);
        engine.backward(loss);
        engine.step();
        run.losses.push_back(loss.value);
    }
    run.params = engine.full_parameters();
    return run;
}
