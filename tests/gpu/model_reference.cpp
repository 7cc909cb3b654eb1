// The CPU reference runs of tests/gpu/model_gpu_test.cu (see model_reference.hpp).
#include "gpu/model_reference.hpp"

#include <algorithm>

#include "cifar10/net.hpp"

template <class Net>
ReferenceRun reference_run(std::span<const float> params, std::span<const float> x, std::span<const float> dy,
                           std::size_t max_batch, std::size_t batch) {
    Net net(max_batch);
    ReferenceRun run;
    const float* y = net.forward(x.data(), batch, params.data());
    run.output.assign(y, y + batch * Net::output_shape::size);
    run.grads.assign(params.size(), 0.0f);
    std::vector<float> grad(dy.begin(), dy.end());
    for (int pass = 0; pass < 2; ++pass) net.backward(grad.data(), params.data(), run.grads.data());
    return run;
}

template ReferenceRun reference_run<cifar10::CifarNet>(std::span<const float>, std::span<const float>,
                                                       std::span<const float>, std::size_t, std::size_t);
template ReferenceRun reference_run<cifar10::FashionMnistNet>(std::span<const float>, std::span<const float>,
                                                              std::span<const float>, std::size_t, std::size_t);
template ReferenceRun reference_run<TinyNet>(std::span<const float>, std::span<const float>, std::span<const float>,
                                             std::size_t, std::size_t);
