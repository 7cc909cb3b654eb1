// The CUDA backend's speed figures (issue 6), timed with CUDA events: the device-to-device
// copy bandwidth the fused optimizer update is measured against, the fused Adam update
// (fp32, and bf16 gradients writing a bf16 compute copy) in GB/s, and cuBLASLt GEMMs in
// TFLOP/s (bf16 at 4096³ and 8192³, fp16, fp32 and TF32 at 4096³, on random values), and
// the CIFAR Net's training step at batch 16 in images/s (`cuda::DeviceSequential`, softmax
// cross-entropy, fused Adam: the work of the engine's step on one GPU), eager and replayed
// as a CUDA graph (what launching costs). A plain program rather than a
// Google Benchmark suite: the GPU machines have no Debian packages. Each figure is the
// median of 5 timed runs of `iterations` launches, after a warm-up; each row is printed as
// it is measured, so a failure later keeps the figures before it.
// Without a CUDA device it prints "skipped: no CUDA device" and exits 77.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/gemm.hpp>
#include <ds/device/cuda/layer_kernels.cuh>
#include <ds/device/cuda/memory.hpp>
#include <ds/device/cuda/optimizer_step.cuh>
#include <ds/device/cuda/sequential.cuh>
#include <ds/device/cuda/stream.hpp>
#include <ds/optim/adam.hpp>

#include "cifar10/net.hpp"

namespace {

/// Median milliseconds per launch of `body` over 5 runs of `iterations`.
double median_ms(const ds::cuda::Stream& stream, int iterations, const std::function<void()>& body) {
    body();  // warm-up (and cuBLASLt's plan)
    stream.synchronize();
    std::vector<double> runs;
    for (int r = 0; r < 5; ++r) {
        ds::cuda::Event start(true), stop(true);
        start.record(stream);
        for (int i = 0; i < iterations; ++i) body();
        stop.record(stream);
        stop.synchronize();
        runs.push_back(stop.elapsed_ms(start) / iterations);
    }
    std::sort(runs.begin(), runs.end());
    return runs[2];
}

void fill(void* p, std::size_t bytes, const ds::cuda::Stream& stream) {
    DS_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
}

/// Values in [-1, 1) from a hash of the index: GEMMs on zeros draw less power and run faster
/// than on real data.
template <class T>
__global__ void fill_random_kernel(T* x, std::size_t n) {
    const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
    for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u;
        h ^= h >> 16;
        h *= 0x85ebca6bu;
        h ^= h >> 13;
        x[i] = T(static_cast<float>(h >> 8) / 8388608.0f - 1.0f);
    }
}
template <class T>
void fill_random(T* x, std::size_t n, const ds::cuda::Stream& stream) {
    fill_random_kernel<<<1024, 256, 0, stream>>>(x, n);
    DS_CUDA_CHECK_LAUNCH();
}

/// What `body` enqueues on `stream`, captured once as an instantiated CUDA graph.
class CapturedGraph {
public:
    CapturedGraph(const ds::cuda::Stream& stream, const std::function<void()>& body) {
        DS_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        try {
            body();
        } catch (...) {
            cudaStreamEndCapture(stream, &graph_);  // leaves the stream usable
            if (graph_) cudaGraphDestroy(graph_);
            throw;
        }
        DS_CUDA_CHECK(cudaStreamEndCapture(stream, &graph_));
        if (const cudaError_t e = cudaGraphInstantiate(&exec_, graph_, 0); e != cudaSuccess) {
            cudaGraphDestroy(graph_);
            DS_CUDA_CHECK(e);
        }
    }
    ~CapturedGraph() {
        cudaGraphExecDestroy(exec_);
        cudaGraphDestroy(graph_);
    }
    CapturedGraph(const CapturedGraph&) = delete;
    CapturedGraph& operator=(const CapturedGraph&) = delete;
    void launch(const ds::cuda::Stream& stream) const { DS_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

private:
    cudaGraph_t graph_ = nullptr;
    cudaGraphExec_t exec_ = nullptr;
};

/// One row of the Markdown table, printed at once: a failure later keeps the figures before it.
void row(const std::string& name, double value, const char* unit, const std::string& note = "") {
    std::printf("| %s | %.1f | %s | %s |\n", name.c_str(), value, unit, note.c_str());
    std::fflush(stdout);
}

std::string percent_of(double part, double whole) {
    return std::to_string(static_cast<int>(100.0 * part / whole + 0.5)) + " %";
}

/// An idle card runs at a low clock: keep it busy for `seconds` before the first timed figure.
void warm_up(double seconds, const ds::cuda::Stream& stream, const std::function<void()>& body) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
        for (int i = 0; i < 20; ++i) body();
        stream.synchronize();
    }
}

}  // namespace

int main(int argc, char** argv) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::printf("skipped: no CUDA device\n");
        return 77;
    }
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;  // CI smoke: small sizes
    try {
        cudaDeviceProp prop{};
        DS_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        ds::cuda::Stream stream;
        std::printf("device: %s, %d SMs, %.0f GiB\n", prop.name, prop.multiProcessorCount,
                    static_cast<double>(prop.totalGlobalMem) / (1 << 30));
        std::printf("| figure | value | unit | note |\n|---|---|---|---|\n");

        // Device-to-device copy: read + write of 1 GiB (what a streaming kernel can reach),
        // on a warm card, and again after the Adam rows: they are measured against the larger.
        const std::size_t copy_bytes = quick ? (std::size_t{64} << 20) : (std::size_t{1} << 30);
        ds::cuda::DeviceBuffer<std::byte> from(copy_bytes), to(copy_bytes);
        fill(from.data(), copy_bytes, stream);
        const auto copy = [&] {
            DS_CUDA_CHECK(cudaMemcpyAsync(to.data(), from.data(), copy_bytes, cudaMemcpyDeviceToDevice, stream));
        };
        warm_up(quick ? 0.05 : 0.3, stream, copy);
        const auto copy_gbs = [&] { return 2.0 * static_cast<double>(copy_bytes) / median_ms(stream, 10, copy) / 1e6; };
        const double copy_before = copy_gbs();
        row("device-to-device copy", copy_before, "GB/s", "read + write");

        // Fused Adam over a 64 M-element shard: fp32 (28 B/element: p, g, m, v read; p, m, v
        // written) and bf16 gradients with a bf16 compute copy (14 + 14 B/element).
        const std::size_t n = quick ? (std::size_t{1} << 22) : (std::size_t{1} << 26);
        ds::cuda::DeviceBuffer<float> params(n), m(n), v(n), grads(n);
        ds::cuda::DeviceBuffer<ds::bf16> grads16(n), compute16(n);
        for (auto* b : {&params, &grads}) fill_random(b->data(), b->size(), stream);
        for (auto* b : {&m, &v}) fill(b->data(), b->bytes(), stream);  // a first step's states
        fill_random(grads16.data(), grads16.size(), stream);
        const auto update = ds::Adam<>::update(ds::Adam<>::defaults, 1e-3, 10);
        const ds::cuda::StatePointers<2> states{{m.data(), v.data()}};
        const double adam_ms = median_ms(stream, 20, [&] {
            ds::cuda::optimizer_step<2>(update, params.data(), static_cast<float*>(nullptr), grads.data(), 1.0f, states,
                                        n, stream);
        });
        const double adam_gbs = 28.0 * static_cast<double>(n) / adam_ms / 1e6;
        row("fused Adam, fp32", adam_gbs, "GB/s", percent_of(adam_gbs, copy_before) + " of the copy above");
        const double mixed_ms = median_ms(stream, 20, [&] {
            ds::cuda::optimizer_step<2>(update, params.data(), compute16.data(), grads16.data(), 0.5f, states, n, stream);
        });
        const double mixed_gbs = 28.0 * static_cast<double>(n) / mixed_ms / 1e6;
        row("fused Adam, bf16 grads + bf16 copy", mixed_gbs, "GB/s", percent_of(mixed_gbs, copy_before) + " of the copy above");
        const double copy_after = copy_gbs();
        row("device-to-device copy, again", copy_after, "GB/s", "read + write, after Adam");
        const double copy_best = std::max(copy_before, copy_after);
        row("fused Adam, fp32, against the faster copy", 100.0 * adam_gbs / copy_best, "%", "goal 85 %");

        // cuBLASLt GEMMs, row-major C = A·B.
        ds::cuda::Gemm gemm;
        const auto gemm_row = [&]<class T>(T, std::size_t size, bool tf32, const char* name) {
            ds::cuda::DeviceBuffer<T> a(size * size), b(size * size), c(size * size);
            for (auto* x : {&a, &b, &c}) fill_random(x->data(), x->size(), stream);
            gemm.use_tf32 = tf32;
            const double ms = median_ms(stream, 10, [&] {
                gemm(ds::cuda::Op::none, ds::cuda::Op::none, size, size, size, 1.0f, a.data(), size, b.data(), size,
                     0.0f, c.data(), size, stream);
            });
            const double s = static_cast<double>(size);
            row(std::string(name) + " " + std::to_string(size) + "^3", 2.0 * s * s * s / ms / 1e9, "TFLOP/s",
                size == 8192 ? "this card's measured peak" : "");
        };
        const std::size_t big = quick ? 1024 : 4096;
        gemm_row(ds::bf16{}, big, false, "cuBLASLt bf16 GEMM");
        if (!quick) gemm_row(ds::bf16{}, 8192, false, "cuBLASLt bf16 GEMM");
        gemm_row(ds::half{}, big, false, "cuBLASLt fp16 GEMM");
        gemm_row(float{}, big, false, "cuBLASLt fp32 GEMM");
        gemm_row(float{}, big, true, "cuBLASLt TF32 GEMM");

        // The CIFAR Net's training step at batch 16, fp32: forward, loss, backward, Adam.
        {
            using Net = cifar10::CifarNet;
            constexpr std::size_t batch = 16, classes = Net::output_shape::size;
            ds::cuda::Gemm net_gemm;
            ds::cuda::DeviceSequential<Net> net(batch, {stream.get(), &net_gemm});
            ds::cuda::DeviceBuffer<float> w(Net::param_count), g(Net::param_count), m1(Net::param_count),
                v1(Net::param_count), x(batch * Net::input_shape::size), dlogits(batch * classes);
            ds::cuda::DeviceBuffer<std::int32_t> labels(batch);
            ds::cuda::DeviceBuffer<double> losses(batch);
            fill_random(w.data(), w.size(), stream);
            fill_random(x.data(), x.size(), stream);
            for (auto* b : {&m1, &v1}) fill(b->data(), b->bytes(), stream);
            fill(labels.data(), labels.bytes(), stream);
            const ds::cuda::StatePointers<2> net_states{{m1.data(), v1.data()}};
            const auto step = [&] {
                DS_CUDA_CHECK(cudaMemsetAsync(g.data(), 0, g.bytes(), stream));
                const float* logits = net.forward(x.data(), batch, w.data());
                ds::cuda::softmax_cross_entropy(logits, labels.data(), classes, batch, losses.data(), dlogits.data(),
                                                stream);
                net.backward(dlogits.data(), w.data(), g.data());
                ds::cuda::optimizer_step<2>(update, w.data(), static_cast<float*>(nullptr), g.data(), 1.0f, net_states,
                                            Net::param_count, stream);
            };
            const double step_ms = median_ms(stream, 50, step);
            row("CIFAR Net train step, batch 16, fp32", batch / step_ms * 1e3, "images/s",
                "data on the GPU: forward, loss, backward, fused Adam (no engine)");
            // The same step captured once and replayed as a CUDA graph: how much of the eager
            // step is launching. Informative (PyTorch's row is eager); a refused capture is
            // reported, not fatal.
            try {
                const CapturedGraph graph(stream, step);
                const double graph_ms = median_ms(stream, 50, [&] { graph.launch(stream); });
                row("CIFAR Net train step, batch 16, fp32, as a CUDA graph", batch / graph_ms * 1e3, "images/s",
                    "the row above captured once and replayed");
            } catch (const std::exception& e) {
                std::printf("| CIFAR Net train step as a CUDA graph | - | images/s | capture failed: %s |\n", e.what());
            }
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_gpu: %s\n", e.what());
        return 1;
    }
}
