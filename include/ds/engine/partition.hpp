#pragma once
/// @file
/// How ZeRO splits the flat buffers across data-parallel ranks (SPEC §6).

#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

#include <ds/engine/flat_optimizer.hpp>

namespace ds {

/// Stages 1-2: the flat buffer padded with zeros to a multiple of 2·dp (the NCCL start
/// alignment of 2 elements per rank) and cut into dp equal contiguous shards; all padding
/// is at the end, in the last rank's shard. Rank r owns [r·shard, (r+1)·shard).
struct FlatPartition {
    std::size_t elements;  ///< Ψ, unpadded
    std::size_t ranks;     ///< dp
    std::size_t padded;    ///< Ψ rounded up to a multiple of 2·dp
    std::size_t shard;     ///< padded / dp

    constexpr FlatPartition(std::size_t psi, std::size_t dp)
        : elements(psi), ranks(dp), padded((psi + 2 * dp - 1) / (2 * dp) * (2 * dp)), shard(padded / dp) {}
    constexpr std::size_t begin(std::size_t rank) const { return rank * shard; }
    constexpr std::size_t end(std::size_t rank) const { return (rank + 1) * shard; }
    /// How many of [lo, hi) rank `rank` owns.
    constexpr std::size_t overlap(std::size_t lo, std::size_t hi, std::size_t rank) const {
        const std::size_t a = std::max(lo, begin(rank)), b = std::min(hi, end(rank));
        return a < b ? b - a : 0;
    }
};

/// Stage 3: each parameter tensor split on its own into ⌈n/dp⌉-element chunks (the tail
/// zero-padded); rank r owns chunk r of every tensor, all its chunks stored back to back.
struct TensorPartition {
    struct Chunk {
        std::size_t offset;  ///< the tensor's offset in the full flat buffer
        std::size_t count;   ///< the tensor's elements
        std::size_t chunk;   ///< ⌈count / dp⌉: elements per rank
        std::size_t local;   ///< where this tensor's chunk starts in a rank's shard
    };
    std::vector<Chunk> tensors;
    std::size_t ranks = 1;
    std::size_t shard = 0;  ///< elements per rank: Σ chunk
    std::size_t padded = 0; ///< Σ chunk · dp: the Ψ the collectives move

    TensorPartition(std::span<const Segment> segments, std::size_t dp) : ranks(dp) {
        for (const Segment& s : segments) {
            const std::size_t chunk = (s.count + dp - 1) / dp;
            tensors.push_back({s.offset, s.count, chunk, shard});
            shard += chunk;
        }
        padded = shard * dp;
    }
};

}  // namespace ds
