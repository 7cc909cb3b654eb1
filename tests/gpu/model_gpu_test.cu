// The CIFAR Net on the GPU (`cuda::DeviceSequential`, cuBLASLt products and the layer
// kernels) against the same Net on the CPU (`nn::Sequential`, OpenBLAS and the direct
// convolutions), on fresh random parameters, images and output gradients: outputs, every
// parameter gradient and the input gradient of every layer after the first, for the
// CIFAR-10 (3×32×32) and Fashion-MNIST (1×28×28) shapes, for full and partial batches,
// and a Linear whose bias is off cuBLASLt's epilogue alignment (the ReLUs after a Linear or
// Conv2d run fused into it). Then the Net stored in bf16
// and fp16 on the GPU against the fp32 GPU Net on the same (rounded) values, its gradients
// added into fp32 and into its own dtype. And the MoE layers (top-1 and top-2, PR-MoE,
// noise, dropped tokens, bf16) against the CPU's.
// Without a CUDA device it prints "skipped: no CUDA device" and exits 77 (CTest: skipped).
#define DOCTEST_CONFIG_IMPLEMENT
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include <doctest/doctest.h>

#include "device_or_skip.hpp"

#include <ds/device/cuda/gemm.hpp>
#include <ds/device/cuda/memory.hpp>
#include <ds/device/cuda/sequential.cuh>
#include <ds/device/cuda/stream.hpp>
#include <ds/numeric/storage.hpp>
#include <ds/util/rng.hpp>

#include "cifar10/net.hpp"
#include "gpu/model_reference.hpp"

namespace {

// Each ReLU after a Linear or Conv2d runs in that layer's epilogue or bias pass (and Flatten
// runs nothing): the CIFAR Net's 12 layers make 7 passes; TinyNet's fused ReLU follows a
// Linear whose bias is off the epilogue's alignment, so its bias kernel applies it.
static_assert(ds::cuda::DeviceSequential<cifar10::CifarNet>::forward_passes == 7);
static_assert(ds::cuda::DeviceSequential<TinyNet>::forward_passes == 2);

std::vector<float> uniform(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
    ds::Rng rng(seed);
    std::vector<float> v(n);
    for (float& x : v) x = rng.uniform(-scale, scale);
    return v;
}
ds::cuda::DeviceBuffer<float> to_device(const std::vector<float>& host) {
    ds::cuda::DeviceBuffer<float> d(host.size());
    d.copy_from(host);
    return d;
}
std::vector<float> to_host(const float* device, std::size_t n) {
    std::vector<float> host(n);
    DS_CUDA_CHECK(cudaMemcpy(host.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost));
    return host;
}
/// The largest relative difference, with a floor for values near zero (sums of many terms
/// in another order: fp32 rounding differs).
double worst_relative(std::span<const float> got, std::span<const float> expected, double floor = 1e-3) {
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, std::abs(double(got[i]) - expected[i]) / std::max(std::abs(double(expected[i])), floor));
    return worst;
}

template <class Net>
void check_net(std::size_t max_batch, std::size_t batch) {
    ds::Rng rng(31);
    std::vector<float> params(Net::param_count);
    Net::init(params.data(), rng);
    const auto x = uniform(batch * Net::input_shape::size, 32);
    const auto dy = uniform(batch * Net::output_shape::size, 33, 0.1f);
    const ReferenceRun want = reference_run<Net>(params, x, dy, max_batch, batch);

    ds::cuda::Stream stream;
    ds::cuda::Gemm gemm;
    ds::cuda::DeviceSequential<Net> net(max_batch, {stream.get(), &gemm});
    auto d_params = to_device(params), d_x = to_device(x), d_dy = to_device(dy);
    DS_CUDA_CHECK(cudaDeviceSynchronize());  // the copies ran on the legacy stream; `stream` does not wait for it
    ds::cuda::DeviceBuffer<float> d_grads(params.size());
    DS_CUDA_CHECK(cudaMemsetAsync(d_grads.data(), 0, d_grads.bytes(), stream));
    const float* y = net.forward(d_x.data(), batch, d_params.data());
    net.backward(d_dy.data(), d_params.data(), d_grads.data());
    net.backward(d_dy.data(), d_params.data(), d_grads.data());  // gradients add up, as on the CPU
    stream.synchronize();
    const auto got_y = to_host(y, want.output.size());
    const auto got_grads = to_host(d_grads.data(), params.size());
    INFO("batch " << batch << " of " << max_batch);
    CHECK(worst_relative(got_y, want.output) < 1e-4);
    for (const auto& p : Net::parameters) {
        INFO(p.name());
        CHECK(worst_relative(std::span(got_grads).subspan(p.offset, p.numel()),
                             std::span(want.grads).subspan(p.offset, p.numel())) < 1e-3);
    }
}

template <class T>
std::vector<float> rounded(const std::vector<float>& v) {
    std::vector<float> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(T(v[i]));
    return out;
}
template <class T>
ds::cuda::DeviceBuffer<T> to_device_as(const std::vector<float>& host) {
    std::vector<T> narrow(host.begin(), host.end());
    ds::cuda::DeviceBuffer<T> d(host.size());
    d.copy_from(narrow);
    return d;
}
template <class T>
std::vector<float> to_host_from(const T* device, std::size_t n) {
    std::vector<T> host(n);
    DS_CUDA_CHECK(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost));
    return {host.begin(), host.end()};
}

/// Parameters (PyTorch's initialisation, seeded by `seed`), inputs and output gradients for
/// `batch` samples (seeds `seed` + 1 and + 2), all rounded to T.
struct RoundedCase {
    std::vector<float> params, x, dy;
};
template <class Net, class T>
RoundedCase rounded_case(std::size_t batch, std::uint64_t seed) {
    ds::Rng rng(seed);
    std::vector<float> params(Net::param_count);
    Net::init(params.data(), rng);
    return {rounded<T>(params), rounded<T>(uniform(batch * Net::input_shape::size, seed + 1)),
            rounded<T>(uniform(batch * Net::output_shape::size, seed + 2, 0.1f))};
}

/// ‖got − want‖ / ‖want‖.
double norm_relative(std::span<const float> got, std::span<const float> want) {
    double apart = 0, size = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        apart += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
        size += double(want[i]) * want[i];
    }
    return std::sqrt(apart / size);
}

/// The Net stored in T against the fp32 Net on T-rounded parameters, inputs and output
/// gradients: 2-byte activations round at every layer, so the outputs agree to `tolerance`
/// (in norm) and each tensor's gradient, added into G, to 4× that.
template <class Net, class T, class G>
void check_narrow_net(double tolerance) {
    using Narrow = typename Net::template with_storage<T>;
    constexpr std::size_t batch = 16;
    const auto [params, x, dy] = rounded_case<Net, T>(batch, 41);

    ds::cuda::Stream stream;
    ds::cuda::Gemm gemm;
    ds::cuda::DeviceSequential<Net> wide(batch, {stream.get(), &gemm});
    ds::cuda::DeviceSequential<Narrow> narrow(batch, {stream.get(), &gemm});
    auto p32 = to_device(params), x32 = to_device(x), dy32 = to_device(dy);
    auto p16 = to_device_as<T>(params), x16 = to_device_as<T>(x), dy16 = to_device_as<T>(dy);
    DS_CUDA_CHECK(cudaDeviceSynchronize());
    ds::cuda::DeviceBuffer<float> g32(params.size());
    ds::cuda::DeviceBuffer<G> g16(params.size());
    DS_CUDA_CHECK(cudaMemsetAsync(g32.data(), 0, g32.bytes(), stream));
    DS_CUDA_CHECK(cudaMemsetAsync(g16.data(), 0, g16.bytes(), stream));
    const float* y32 = wide.forward(x32.data(), batch, p32.data());
    wide.backward(dy32.data(), p32.data(), g32.data());
    const T* y16 = narrow.forward(x16.data(), batch, p16.data());
    narrow.backward(dy16.data(), p16.data(), g16.data());
    stream.synchronize();
    const auto want_y = to_host(y32, batch * Net::output_shape::size);
    const auto want_g = to_host(g32.data(), params.size());
    CHECK(norm_relative(to_host_from(y16, want_y.size()), want_y) < tolerance);
    const auto got_g = to_host_from(g16.data(), params.size());
    for (const auto& p : Net::parameters) {
        INFO(p.name());
        CHECK(norm_relative(std::span(got_g).subspan(p.offset, p.numel()),
                            std::span(want_g).subspan(p.offset, p.numel())) < 4 * tolerance);
    }
}

/// The Net's MoE layers on the GPU against the CPU's, stored in T: the same routing of
/// every MoE layer (the router is the CPU's, on the GPU's logits), its combine weights and
/// the output within `tolerance` (the output in norm) and each parameter's gradient within
/// 10× that (worst relative difference; in 2-byte T 4× that in norm).
template <class Net, class T>
void check_moe_net(std::size_t max_batch, std::size_t batch, const ds::nn::MoESettings& settings, double tolerance) {
    using Stored = typename Net::template with_storage<T>;
    const auto [params, x, dy] = rounded_case<Net, T>(batch, 51);
    const MoEReferenceRun want = moe_reference_run<Net, T>(params, x, dy, max_batch, batch, settings);

    ds::cuda::Stream stream;
    ds::cuda::Gemm gemm;
    ds::cuda::DeviceSequential<Stored> net(max_batch, {stream.get(), &gemm});
    net.configure_moe(settings);
    auto d_params = to_device_as<T>(params), d_x = to_device_as<T>(x), d_dy = to_device_as<T>(dy);
    DS_CUDA_CHECK(cudaDeviceSynchronize());
    ds::cuda::DeviceBuffer<float> d_grads(params.size());
    DS_CUDA_CHECK(cudaMemsetAsync(d_grads.data(), 0, d_grads.bytes(), stream));
    const T* y = net.forward(d_x.data(), batch, d_params.data());
    net.backward(d_dy.data(), d_params.data(), d_grads.data());
    stream.synchronize();

    INFO("k " << settings.k << ", batch " << batch << " of " << max_batch << ", " << sizeof(T) << "-byte values");
    const auto& moe = net.template layer<moe_layer_index>();
    for (std::size_t i = 0; i < want.routings.size(); ++i) {
        INFO("MoE layer " << i);
        REQUIRE(moe.routing(i).expert == want.routings[i].expert);  // the same tokens to the same experts
        REQUIRE(moe.routing(i).slot == want.routings[i].slot);
        const auto& weight = moe.routing(i).weight;
        REQUIRE(weight.size() == want.routings[i].weight.size());
        CHECK(worst_relative(weight, want.routings[i].weight) < tolerance);  // softmax of nearly equal logits
    }
    // The output in norm: one 2-byte rounding flip moves a small value by a few per cent.
    CHECK(norm_relative(to_host_from(y, want.output.size()), want.output) < tolerance);
    const auto got_grads = to_host(d_grads.data(), params.size());
    for (const auto& p : Net::parameters) {
        INFO(p.name());
        const auto got = std::span(got_grads).subspan(p.offset, p.numel());
        const auto expected = std::span(want.grads).subspan(p.offset, p.numel());
        if constexpr (std::is_same_v<T, float>) CHECK(worst_relative(got, expected) < 10 * tolerance);
        else CHECK(norm_relative(got, expected) < 4 * tolerance);  // 2-byte rounding flips: in norm
    }
}

}  // namespace

TEST_SUITE("gpu") {

TEST_CASE("MoE layers on the GPU: routing, outputs and gradients of the CPU layers") {
    using ds::nn::NoisyGate;
    // Top-1 with RSample noise and random token selection; 16 tokens over 2 experts of capacity 8.
    check_moe_net<MoENet2, float>(16, 16, {.k = 1, .noisy_gate_policy = NoisyGate::rsample}, 1e-4);
    check_moe_net<MoENet2, float>(16, 5, {.k = 1, .min_capacity = 1}, 1e-4);  // a partial batch: empty slots
    // Top-2 with Jitter over PR-MoE's two layers (2 and 4 experts), tokens dropped at capacity 0.5.
    check_moe_net<PrMoENet, float>(16, 16, {.k = 2, .capacity_factor = 0.5, .noisy_gate_policy = NoisyGate::jitter},
                                   1e-4);
    // bf16 values (the layer computes in fp32 and rounds its output once, as the CPU's does).
    check_moe_net<MoENet2, ds::bf16>(16, 16, {.k = 1}, 1e-2);
}


TEST_CASE("the CIFAR Net stored in bf16 and fp16 on the GPU: outputs and gradients of the fp32 GPU Net") {
    check_narrow_net<cifar10::CifarNet, ds::bf16, float>(2e-2);     // BF16 at stage 0: fp32 gradients
    check_narrow_net<cifar10::CifarNet, ds::bf16, ds::bf16>(2e-2);  // stages 1-3: bf16 gradients
    check_narrow_net<cifar10::CifarNet, ds::half, ds::half>(5e-3);  // FP16: 3 more mantissa bits
}


TEST_CASE("the CIFAR Net on the GPU: outputs and gradients of the CPU Net") {
    check_net<cifar10::CifarNet>(16, 16);
    check_net<cifar10::CifarNet>(16, 5);
    check_net<cifar10::FashionMnistNet>(32, 32);
    check_net<TinyNet>(9, 9);  // a bias off the epilogue's alignment: added by a kernel
}

}  // TEST_SUITE

int main(int argc, char** argv) {
    if (const int code = device_or_skip()) return code;
    doctest::Context context(argc, argv);
    return context.run();
}
