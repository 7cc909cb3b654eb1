#pragma once
/// @file
/// ReLU's element math, shared by the CPU layer and the CUDA kernels (DESIGN principle 3).

#include <ds/util/host_device.hpp>

namespace ds::nn::math {

/// max(x, 0); like `x > 0 ? x : 0` everywhere dspp computes it.
DS_HOST_DEVICE float relu(float x) { return x > 0.0f ? x : 0.0f; }
/// The gradient through ReLU from its output y: dy where y > 0, else 0.
DS_HOST_DEVICE float relu_backward(float y, float dy) { return y > 0.0f ? dy : 0.0f; }

}  // namespace ds::nn::math
