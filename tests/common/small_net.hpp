#pragma once
// The small Net the multi-rank engine tests train (1×16×16 images, 4 classes), its
// synthetic batches, and the data-parallel loop that feeds each rank its slice.
#include <cstddef>
#include <cstdint>
#include <vector>

#include <ds/data/synthetic.hpp>
#include <ds/nn/cross_entropy.hpp>

#include "cifar10/net.hpp"

namespace small_net {

using Net = cifar10::Net<1, 16, 4>;
constexpr std::size_t global_batch = 8, input = 256;

struct Batches {
    std::vector<float> inputs;
    std::vector<std::int32_t> labels;
};

/// `steps` global batches of synthetic images drawn from `seed`.
inline Batches make_batches(int steps, std::uint64_t seed) {
    const auto d = ds::data::make_synthetic(global_batch * steps, 1, 16, 16, 4, seed);
    Batches b{std::vector<float>(d.size() * input), std::vector<std::int32_t>(d.size())};
    for (std::size_t i = 0; i < d.size(); ++i) b.labels[i] = d.get(i, b.inputs.data() + i * input);
    return b;
}

/// Optimizer steps [first, first + steps) of `data`: rank r of n takes samples
/// [r·m, (r+1)·m) of each micro-batch of the global batch (m = global / (n · gas)).
template <class E>
void train(E& engine, const Batches& data, int first, int steps) {
    const auto n = static_cast<std::size_t>(engine.world_size());
    const auto gas = static_cast<std::size_t>(engine.gradient_accumulation_steps());
    const std::size_t micro = global_batch / gas / n, rank = static_cast<std::size_t>(engine.global_rank());
    for (int s = first; s < first + steps; ++s)
        for (std::size_t g = 0; g < gas; ++g) {
            const std::size_t at = s * global_batch + g * (global_batch / gas) + rank * micro;
            const auto out = engine.forward({data.inputs.data() + at * input, micro * input});
            engine.backward(ds::nn::CrossEntropyLoss{4}(out, {data.labels.data() + at, micro}));
            engine.step();
        }
}

}  // namespace small_net
