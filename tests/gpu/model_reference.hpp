#pragma once
// The CPU side of the GPU model test, compiled by the host compiler alone: the Net's
// forward and two backwards on `nn::Sequential` (OpenBLAS, the direct convolutions).
#include <cstddef>
#include <span>
#include <vector>

#include <ds/nn/linear.hpp>
#include <ds/nn/moe.hpp>
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

/// Small Nets around the MoE layers the GPU's are checked on: the CIFAR example's (2
/// experts) and PR-MoE's (two layers, 2 and 4 experts, a shared residual MLP).
using MoENet2 = ds::nn::Sequential<ds::nn::Features<20>, ds::nn::Linear<20, 12>, ds::nn::ReLU,
                                   ds::nn::MoE<ds::nn::Linear<12, 12>, ds::nn::MoEMlp::standard, 2>,
                                   ds::nn::Linear<12, 5>>;
using PrMoENet = ds::nn::Sequential<ds::nn::Features<20>, ds::nn::Linear<20, 12>, ds::nn::ReLU,
                                    ds::nn::MoE<ds::nn::Linear<12, 12>, ds::nn::MoEMlp::residual, 2, 4>,
                                    ds::nn::Linear<12, 5>>;
/// Where the MoE layer sits in both.
inline constexpr std::size_t moe_layer_index = 2;

struct MoEReferenceRun : ReferenceRun {
    std::vector<ds::nn::Routing> routings;  ///< of each MoE layer, in the forward
};

/// `reference_run` for a Net with one MoE layer (at `moe_layer_index`) configured with
/// `settings`, in training mode, stored in T (the values are rounded to it), one backward
/// with its gradients in fp32.
template <class Net, class T>
MoEReferenceRun moe_reference_run(std::span<const float> params, std::span<const float> x, std::span<const float> dy,
                                  std::size_t max_batch, std::size_t batch, const ds::nn::MoESettings& settings);
