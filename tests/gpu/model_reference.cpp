// The CPU reference runs of tests/gpu/model_gpu_test.cu (see model_reference.hpp).
#include "gpu/model_reference.hpp"

#include <algorithm>
#include <type_traits>

#include <ds/numeric/bf16.hpp>

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

template <class Net, class T>
MoEReferenceRun moe_reference_run(std::span<const float> params, std::span<const float> x, std::span<const float> dy,
                                  std::size_t max_batch, std::size_t batch, const ds::nn::MoESettings& settings) {
    typename Net::template with_storage<T> net(max_batch);
    net.configure_moe(settings);
    const std::vector<T> p(params.begin(), params.end()), in(x.begin(), x.end());
    std::vector<T> grad(dy.begin(), dy.end());
    MoEReferenceRun run;
    const T* y = net.forward(in.data(), batch, p.data());
    for (std::size_t i = 0; i < batch * Net::output_shape::size; ++i) run.output.push_back(static_cast<float>(y[i]));
    const auto& moe = net.template layer<moe_layer_index>();
    for (std::size_t i = 0; i < std::remove_cvref_t<decltype(moe)>::layers; ++i) run.routings.push_back(moe.routing(i));
    run.grads.assign(params.size(), 0.0f);
    net.backward(grad.data(), p.data(), run.grads.data());
    return run;
}

#define DSPP_MOE_REFERENCE(Net, T)                                                                                \
    template MoEReferenceRun moe_reference_run<Net, T>(std::span<const float>, std::span<const float>,           \
                                                       std::span<const float>, std::size_t, std::size_t,         \
                                                       const ds::nn::MoESettings&);
DSPP_MOE_REFERENCE(MoENet2, float)
DSPP_MOE_REFERENCE(MoENet2, ds::bf16)
DSPP_MOE_REFERENCE(PrMoENet, float)
