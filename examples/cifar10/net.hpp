#pragma once
// The CIFAR-10 tutorial's Net (DeepSpeedExamples training/cifar/cifar10_deepspeed.py),
// templated on the input so that Fashion-MNIST's 1×28×28 changes the flatten size at
// compile time: 16·5·5 = 400 for 3×32×32, 16·4·4 = 256 for 1×28×28.
#include <cstddef>

#include <ds/nn/conv2d.hpp>
#include <ds/nn/flatten.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/max_pool2d.hpp>
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

using CifarNet = Net<3, 32>;         // 62,006 parameters
using FashionMnistNet = Net<1, 28>;  // 44,426 parameters

}  // namespace cifar10
