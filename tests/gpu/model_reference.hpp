#pragma once
// The CPU side of the GPU model test, compiled by the host compiler alone: the Net's
// forward and two backwards on `nn::Sequential` (OpenBLAS, the direct convolutions).
#include <cstddef>
#include <span>
#include <vector>

#include <ds/nn/linear.hpp>
#include <ds/nn/relu.hpp>
#include <ds/nn/sequential.hpp>

/// Odd sizes: the first bias starts 60 bytes into the buffer, off cuBLASLt's 16-byte epilogue alignment.
using TinyNet = ds::nn::Sequential<ds::nn::Features<5>, ds::nn::Linear<5, 3>, ds::nn::ReLU, ds::nn::Linear<3, 7>>;

struct ReferenceRun {
    std::vector<float> output;  ///< batch × outputs
    std::vector<float> grads;   ///< the parameter gradients of two backwards from `dy`, added
};

template <class Net>
ReferenceRun reference_run(std::span<const float> params, std::span<const float> x, std::span<const float> dy,
                           std::size_t max_batch, std::size_t batch);
