// The CIFAR Net trained through `ds::Engine<..., ds::Cuda>` (fp32, ZeRO stage 0, Adam,
// clipping 1.0, the example's config at a constant learning rate) at batch 16, one GPU:
// images/s over 200 steps after 20 of warm-up, each step as the example runs it (upload
// the batch, forward, download the logits, the loss on the host, backward, step) from
// batches ready in host memory, and the host time each call takes. Its PyTorch
// counterpart is the "torch CIFAR Net training as the example" row of pytorch_reference.py
// (upload, loss.item(), clipping, fused Adam).
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

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

int main() {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::printf("skipped: no CUDA device\n");
        return 77;
    }
    try {
        using Net = cifar10::CifarNet;
        constexpr std::size_t batch = 16, batches = 64, sample = Net::input_shape::size;
        constexpr int warmup = 20, steps = 200;
        ds::Config cfg = cifar10::ds_config;
        cfg.scheduler = {};
        ds::Engine<Net, ds::Adam<>, ds::Zero<0>, ds::FP32, ds::Cuda> engine(cfg);
        // The batches ready in host memory, as a data loader hands them over.
        const auto data = ds::data::make_synthetic(batch * batches, 3, 32, 32, 10, 1);
        std::vector<float> x(batch * batches * sample);
        std::vector<std::int32_t> labels(batch * batches);
        for (std::size_t i = 0; i < batch * batches; ++i) labels[i] = data.get(i, x.data() + i * sample);
        const ds::nn::CrossEntropyLoss criterion{10};
        // Host time in each call: forward waits for the logits, step for the gradient norm.
        double forward_s = 0, loss_s = 0, backward_s = 0, step_s = 0;
        const auto train = [&](int count) {
            for (int s = 0; s < count; ++s) {
                const std::size_t b = static_cast<std::size_t>(s) % batches;
                auto t = Clock::now();
                const auto logits = engine.forward({x.data() + b * batch * sample, batch * sample});
                forward_s += seconds_since(t);
                t = Clock::now();
                const auto loss = criterion(logits, {labels.data() + b * batch, batch});
                loss_s += seconds_since(t);
                t = Clock::now();
                engine.backward(loss);
                backward_s += seconds_since(t);
                t = Clock::now();
                engine.step();
                step_s += seconds_since(t);
            }
            DS_CUDA_CHECK(cudaDeviceSynchronize());
        };
        train(warmup);
        forward_s = loss_s = backward_s = step_s = 0;
        const auto start = Clock::now();
        train(steps);
        const double seconds = seconds_since(start);
        const auto us = [&](double s) { return s / steps * 1e6; };
        std::printf("| dspp engine: CIFAR Net training, batch 16, fp32 | %.1f | images/s | ds::Engine<..., ds::Cuda>, "
                    "host loss |\n",
                    static_cast<double>(batch) * steps / seconds);
        std::printf("| dspp engine: host time per step | %.1f | us | forward %.1f (waits for the logits), loss %.1f, "
                    "backward %.1f, step %.1f (waits for the norm) |\n",
                    us(seconds), us(forward_s), us(loss_s), us(backward_s), us(step_s));
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_gpu_train: %s\n", e.what());
        return 1;
    }
}
