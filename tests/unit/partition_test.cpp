// ZeRO partitioning against SPEC §12's worked numbers for the CIFAR Net (Ψ = 62,006).
#include <vector>

#include <doctest/doctest.h>

#include <ds/engine/partition.hpp>

#include "cifar10/net.hpp"

TEST_SUITE("partition") {

TEST_CASE("stages 1-2: padding to 2·dp and equal shards (SPEC §12)") {
    constexpr std::size_t psi = cifar10::CifarNet::param_count;
    static_assert(ds::FlatPartition(psi, 1).shard == 62006);
    static_assert(ds::FlatPartition(psi, 2).shard == 31004 && ds::FlatPartition(psi, 2).padded == 62008);
    static_assert(ds::FlatPartition(psi, 4).shard == 15502);
    static_assert(ds::FlatPartition(psi, 8).shard == 7752 && ds::FlatPartition(psi, 8).padded - psi == 10);
    constexpr ds::FlatPartition p(psi, 4);
    std::size_t covered = 0;
    for (std::size_t r = 0; r < 4; ++r) covered += p.overlap(100, 40000, r);
    CHECK(covered == 39900);
    CHECK(p.overlap(0, 15502, 0) == 15502);
    CHECK(p.overlap(0, 15502, 1) == 0);
}

TEST_CASE("stage 3: every tensor split into ceil(n/dp) chunks (SPEC §12, dp = 2)") {
    std::vector<ds::Segment> segments;
    for (const auto& p : cifar10::CifarNet::parameters) segments.push_back({p.offset, p.numel()});
    const ds::TensorPartition part(segments, 2);
    auto chunk_of = [&](std::size_t i) { return part.tensors[i].chunk; };
    CHECK(chunk_of(0) == 225);    // conv1.weight
    CHECK(chunk_of(1) == 3);      // conv1.bias
    CHECK(chunk_of(2) == 1200);   // conv2.weight
    CHECK(chunk_of(4) == 24000);  // fc1.weight
    CHECK(chunk_of(6) == 5040);   // fc2.weight
    CHECK(chunk_of(9) == 5);      // fc3.bias
    std::size_t shard = 0;
    for (const auto& t : part.tensors) {
        CHECK(t.local == shard);
        shard += t.chunk;
    }
    CHECK(part.shard == shard);
    CHECK(part.padded == 2 * shard);
}

}  // TEST_SUITE
