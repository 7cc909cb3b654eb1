// The CIFAR Net on the GPU (`cuda::DeviceSequential`, cuBLASLt products and the layer
// kernels) against the same Net on the CPU (`nn::Sequential`, OpenBLAS and the direct
// convolutions), on fresh random parameters, images and output gradients: outputs, every
// parameter gradient and the input gradient of every layer after the first, for the
// CIFAR-10 (3×32×32) and Fashion-MNIST (1×28×28) shapes, for full and partial batches,
// and a Linear whose bias is off cuBLASLt's epilogue alignment.
// Without a CUDA device it prints "skipped: no CUDA device" and exits 77 (CTest: skipped).
#define DOCTEST_CONFIG_IMPLEMENT
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <doctest/doctest.h>

#include "device_or_skip.hpp"

#include <ds/device/cuda/gemm.hpp>
#include <ds/device/cuda/memory.hpp>
#include <ds/device/cuda/sequential.cuh>
#include <ds/device/cuda/stream.hpp>
#include <ds/util/rng.hpp>

#include "cifar10/net.hpp"
#include "gpu/model_reference.hpp"

namespace {

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

}  // namespace

TEST_SUITE("gpu") {

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
