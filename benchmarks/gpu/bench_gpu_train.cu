// The CIFAR Net trained through `ds::Engine<..., ds::Cuda>` (fp32, ZeRO stage 0, Adam,
// clipping 1.0, the example's config at a constant learning rate) at batch 16, one GPU:
// images/s over 200 steps after 20 of warm-up, each step as the example runs it (upload
// the batch, forward, download the logits, the loss on the host, backward, step). Its
// PyTorch counterpart is the "torch CIFAR Net train step" row of pytorch_reference.py.
// A separate program from bench_gpu, so that the engine's host dependencies cannot keep the
// kernel figures from building. Without a CUDA device: "skipped: no CUDA device", exit 77.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <cuda_runtime_api.h>

#include <ds/data/synthetic.hpp>
#include <ds/device/cuda/engine.cuh>
#include <ds/engine/engine.hpp>
#include <ds/nn/cross_entropy.hpp>

#include "cifar10/ds_config.hpp"
#include "cifar10/net.hpp"

int main() {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::printf("skipped: no CUDA device\n");
        return 77;
    }
    try {
        using Net = cifar10::CifarNet;
        constexpr std::size_t batch = 16;
        constexpr int warmup = 20, steps = 200;
        ds::Config cfg = cifar10::ds_config;
        cfg.scheduler = {};
        ds::Engine<Net, ds::Adam<>, ds::Zero<0>, ds::FP32, ds::Cuda> engine(cfg);
        const auto data = ds::data::make_synthetic(batch * 64, 3, 32, 32, 10, 1);
        std::vector<float> x(batch * Net::input_shape::size);
        std::vector<std::int32_t> labels(batch);
        const ds::nn::CrossEntropyLoss criterion{10};
        const auto train = [&](int count) {
            for (int s = 0; s < count; ++s) {
                for (std::size_t j = 0; j < batch; ++j)
                    labels[j] = data.get((static_cast<std::size_t>(s) % 64) * batch + j, x.data() + j * Net::input_shape::size);
                engine.backward(criterion(engine.forward(x), labels));
                engine.step();
            }
            DS_CUDA_CHECK(cudaDeviceSynchronize());
        };
        train(warmup);
        const auto start = std::chrono::steady_clock::now();
        train(steps);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::printf("| dspp engine: CIFAR Net training, batch 16, fp32 | %.1f | images/s | ds::Engine<..., ds::Cuda>, "
                    "host loss |\n",
                    static_cast<double>(batch) * steps / seconds);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_gpu_train: %s\n", e.what());
        return 1;
    }
}
