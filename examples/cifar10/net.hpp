#pragma once
// The CIFAR-10 tutorial's Net (DeepSpeedExamples training/cifar/cifar10_deepspeed.py),
// templated on the input so that Fashion-MNIST's 1×28×28 changes the flatten size at
// compile time: 16·5·5 = 400 for 3×32×32, 16·4·4 = 256 for 1×28×28.
#include <cstddef>

#include <ds/nn/conv2d.hpp>
#include <ds/nn/flatten.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/max_pool2d.hpp>
#include <ds/nn/moe.hpp>
#include <ds/nn/relu.hpp>
#include <ds/nn/sequential.hpp>

namespace cifar10 {

using namespace ds::nn;

/// Side of the feature maps after conv(5) → pool(2) → conv(5) → pool(2).
constexpr std::size_t pooled_side(std::size_t side) { return ((side - 4) / 2 - 4) / 2; }

template <std::size_t Channels, std::size_t Side, std::size_t Classes = 10>
using Net = Sequential<Image<Channels, Side, Side>,
                       Named<"conv1", Conv2d<Channels, 6, 5>>, ReLU, MaxPool2d<2>,
                       Named<"conv2", Conv2d<6, 16, 5>>, ReLU, MaxPool2d<2>,
                       Flatten,
                       Named<"fc1", Linear<16 * pooled_side(Side) * pooled_side(Side), 120>>, ReLU,
                       Named<"fc2", Linear<120, 84>>, ReLU,
                       Named<"fc3", Linear<84, Classes>>>;

/// The example's `--moe` Net: fc3 becomes the expert of one MoE layer per `--num-experts`
/// entry (`moe_layer_list`), followed by fc4 (84 → 10), as in the Python example.
template <std::size_t Channels, std::size_t Side, MoEMlp Mlp, std::size_t... Experts>
using MoENet = Sequential<Image<Channels, Side, Side>,
                          Named<"conv1", Conv2d<Channels, 6, 5>>, ReLU, MaxPool2d<2>,
                          Named<"conv2", Conv2d<6, 16, 5>>, ReLU, MaxPool2d<2>,
                          Flatten,
                          Named<"fc1", Linear<16 * pooled_side(Side) * pooled_side(Side), 120>>, ReLU,
                          Named<"fc2", Linear<120, 84>>, ReLU,
                          Named<"moe_layer_list", MoE<Linear<84, 84>, Mlp, Experts...>>,
                          Named<"fc4", Linear<84, 10>>>;

using CifarNet = Net<3, 32>;         // 62,006 parameters
using FashionMnistNet = Net<1, 28>;  // 44,426 parameters

}  // namespace cifar10
