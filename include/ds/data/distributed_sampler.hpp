#pragma once
/// @file
/// `DistributedSampler`: each rank's share of a per-epoch permutation (SPEC §9).

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <vector>

#include <ds/util/rng.hpp>

namespace ds::data {

/// PyTorch's DistributedSampler semantics: the indices (shuffled from seed + epoch, or in
/// file order) are padded by repeating from the start to a multiple of the world size, and
/// rank r takes every world-th index starting at r, so every rank sees ⌈n / world⌉ samples.
/// Unlike DeepSpeed, which never calls `set_epoch`, the order changes every epoch.
class DistributedSampler {
public:
    DistributedSampler(std::size_t dataset_size, std::size_t world_size = 1, std::size_t rank = 0,
                       bool shuffle = true, std::uint64_t seed = 0)
        : size_(dataset_size), world_(world_size), rank_(rank), shuffle_(shuffle), seed_(seed) {
        if (world_size == 0 || rank >= world_size)
            throw std::invalid_argument("DistributedSampler: rank must be in [0, world_size)");
        if (dataset_size == 0) throw std::invalid_argument("DistributedSampler: the dataset is empty");
    }

    /// Samples per rank per epoch.
    std::size_t samples_per_rank() const { return (size_ + world_ - 1) / world_; }

    /// This rank's indices for `epoch`.
    std::vector<std::size_t> indices(std::uint64_t epoch) const {
        std::vector<std::size_t> order(size_);
        std::iota(order.begin(), order.end(), std::size_t{0});
        if (shuffle_) {
            Rng rng(seed_ + epoch, 0xda7a);
            for (std::size_t i = size_ - 1; i > 0; --i)  // Fisher-Yates
                std::swap(order[i], order[rng.below(static_cast<std::uint32_t>(i + 1))]);
        }
        const std::size_t total = samples_per_rank() * world_;
        for (std::size_t i = size_; i < total; ++i) order.push_back(order[i - size_]);
        std::vector<std::size_t> mine;
        mine.reserve(samples_per_rank());
        for (std::size_t i = rank_; i < total; i += world_) mine.push_back(order[i]);
        return mine;
    }

private:
    std::size_t size_, world_, rank_;
    bool shuffle_;
    std::uint64_t seed_;
};

}  // namespace ds::data
