// Communicators in one process: the threaded world (N = 1, 2, 4) and the single rank keep
// the collective laws (tests/common/collective_laws.hpp); plus the launcher environment.
// doctest's assertions may be used from the threads a test case starts.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/distributed.hpp>
#include <ds/comm/single.hpp>
#include <ds/comm/threads.hpp>

#include "common/collective_laws.hpp"

TEST_SUITE("comm") {

TEST_CASE("the threaded communicator keeps the collective laws on 1, 2 and 4 ranks") {
    for (int n : {1, 2, 4}) ds::comm::run_ranks(n, [](ds::comm::Threads& comm) { laws::check_collectives(comm); });
}

TEST_CASE("the single-rank communicator keeps the collective laws") {
    ds::comm::Single single;
    laws::check_collectives(single);
}

TEST_CASE("expert groups: blocked expert-parallel, strided expert-data-parallel") {
    ds::comm::run_ranks(4, [](ds::comm::Threads& world) {
        laws::check_expert_groups(world, 2);
        laws::check_expert_groups(world, 4);
        laws::check_expert_groups(world, 1);
    });
    ds::comm::run_ranks(2, [](ds::comm::Threads& world) {
        CHECK_THROWS_AS(ds::comm::expert_groups(world, 3), std::invalid_argument);
    });
}

TEST_CASE("threaded reductions are bit-identical on every rank, in rank order") {
    // 0.1 + 1e8 − 1e8 + ... depends on the order; every rank must see the same bits.
    std::vector<float> results(4);
    ds::comm::run_ranks(4, [&](ds::comm::Threads& comm) {
        const float values[] = {0.1f, 1e8f, -1e8f, 0.3f};
        float v = values[comm.rank()];
        comm.all_reduce(&v, 1, ds::comm::ReduceOp::sum);
        results[comm.rank()] = v;
    });
    CHECK(results[0] == ((0.1f + 1e8f) + -1e8f) + 0.3f);
    for (float r : results) CHECK(r == results[0]);
}

TEST_CASE("max reductions let NaN through, so overflow checks see it") {
    ds::comm::run_ranks(2, [](ds::comm::Threads& comm) {
        float v = comm.rank() == 1 ? NAN : 1.0f;
        comm.all_reduce(&v, 1, ds::comm::ReduceOp::max);
        CHECK(std::isnan(v));
    });
}

TEST_CASE("rank_zero_first runs rank 0's work before everyone else's") {
    std::vector<int> order;
    std::mutex m;
    ds::comm::run_ranks(4, [&](ds::comm::Threads& comm) {
        ds::comm::rank_zero_first(comm, [&] {
            std::lock_guard lock(m);
            order.push_back(comm.rank());
        });
    });
    REQUIRE(order.size() == 4);
    CHECK(order[0] == 0);
}

TEST_CASE("a rank that fails releases the others' collectives, in the world and in sub-groups") {
    // Without the abort the surviving ranks would wait forever (CTest's timeout would end it).
    using ds::comm::PeerFailed;
    using ds::comm::Threads;
    std::atomic<int> released{0};
    const auto fails_late = [](const Threads& comm) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the others are already waiting
        throw std::domain_error("rank " + std::to_string(comm.rank()) + "'s own error");
    };
    SUBCASE("in the world") {
        CHECK_THROWS_WITH_AS(ds::comm::run_ranks(3,
                                                 [&](Threads& comm) {
                                                     if (comm.rank() == 1) fails_late(comm);
                                                     float v = 1.0f;
                                                     try {
                                                         comm.all_reduce(&v, 1, ds::comm::ReduceOp::sum);
                                                     } catch (const PeerFailed&) {
                                                         ++released;
                                                         // and every later collective fails at once
                                                         CHECK_THROWS_AS(comm.barrier(), PeerFailed);
                                                         throw;
                                                     }
                                                 }),
                             "rank 1's own error", std::domain_error);
        CHECK(released == 2);
    }
    SUBCASE("in a sub-group made by split") {
        CHECK_THROWS_WITH_AS(ds::comm::run_ranks(4,
                                                 [&](Threads& world) {
                                                     Threads pair = world.split(world.rank() / 2, 0);
                                                     if (world.rank() == 3) fails_late(world);
                                                     float v = 1.0f;
                                                     try {
                                                         pair.all_reduce(&v, 1, ds::comm::ReduceOp::sum);
                                                         CHECK(v == 2.0f);  // ranks 0 and 1 complete theirs
                                                         world.barrier();   // which rank 3 never reaches
                                                     } catch (const PeerFailed&) {
                                                         ++released;
                                                         throw;
                                                     }
                                                 }),
                             "rank 3's own error", std::domain_error);
        CHECK(released == 3);
    }
}

namespace {

/// An element whose assignment, in the thread that set `stall`, waits until `released` is set:
/// it holds a rank inside a collective's copying while another rank aborts the world.
struct StallingValue {
    int v = 0;
    static inline thread_local bool stall = false;
    static inline std::atomic<bool> copying{false}, released{false};
    StallingValue& operator=(const StallingValue& other) {
        if (stall) {
            copying = true;
            while (!released) std::this_thread::yield();
        }
        v = other.v;
        return *this;
    }
};

/// An element whose assignment throws in the thread that set `throws`.
struct ThrowingValue {
    int v = 0;
    static inline thread_local bool throws = false;
    ThrowingValue& operator=(const ThrowingValue& other) {
        if (throws) throw std::length_error("copy failed");
        v = other.v;
        return *this;
    }
};

}  // namespace

TEST_CASE("an abort does not end a collective that every rank of its group has entered") {
    // Ranks 0 and 1 all-gather as a pair; rank 2 fails while rank 0 is still copying from
    // rank 1's buffer. Rank 1 must wait for rank 0 to finish before it returns (and frees its
    // buffer): both complete the all-gather, and only their next world collective fails.
    using ds::comm::PeerFailed;
    using ds::comm::Threads;
    StallingValue::copying = false;
    StallingValue::released = false;
    std::atomic<int> completed{0};
    CHECK_THROWS_WITH_AS(ds::comm::run_ranks(3,
                                             [&](Threads& world) {
                                                 Threads pair = world.split(world.rank() == 2, 0);
                                                 if (world.rank() == 2) {
                                                     while (!StallingValue::copying) std::this_thread::yield();
                                                     world.abort();
                                                     StallingValue::released = true;
                                                     throw std::domain_error("rank 2 failed");
                                                 }
                                                 std::vector<StallingValue> mine(1000), all(2000);
                                                 for (auto& x : mine) x.v = world.rank() + 1;
                                                 StallingValue::stall = world.rank() == 0;
                                                 pair.all_gather(mine.data(), all.data(), mine.size());
                                                 StallingValue::stall = false;
                                                 for (std::size_t i = 0; i < all.size(); ++i)
                                                     REQUIRE(all[i].v == (i < 1000 ? 1 : 2));
                                                 ++completed;
                                                 CHECK_THROWS_AS(world.barrier(), PeerFailed);
                                             }),
                         "rank 2 failed", std::domain_error);
    CHECK(completed == 2);
}

TEST_CASE("a rank whose copy throws inside a collective still lets the others finish it") {
    // The throwing rank attends the closing meeting while its exception unwinds; without it
    // the other rank would wait there forever.
    std::atomic<int> completed{0};
    CHECK_THROWS_WITH_AS(ds::comm::run_ranks(2,
                                             [&](ds::comm::Threads& comm) {
                                                 std::vector<ThrowingValue> mine(8), all(16);
                                                 for (auto& x : mine) x.v = comm.rank() + 1;
                                                 ThrowingValue::throws = comm.rank() == 0;
                                                 comm.all_gather(mine.data(), all.data(), mine.size());
                                                 ThrowingValue::throws = false;
                                                 CHECK(all[0].v == 1);
                                                 CHECK(all[8].v == 2);
                                                 ++completed;
                                                 CHECK_THROWS_AS(comm.barrier(), ds::comm::PeerFailed);
                                             }),
                         "copy failed", std::length_error);
    CHECK(completed == 1);
}

TEST_CASE("init_distributed reads torchrun's and mpirun's variables") {
    for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                          "OMPI_COMM_WORLD_LOCAL_RANK"})
        unsetenv(v);
    auto env = ds::comm::init_distributed();
    CHECK(env.rank == 0);
    CHECK(env.world_size == 1);
    setenv("OMPI_COMM_WORLD_RANK", "3", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
    env = ds::comm::init_distributed();
    CHECK(env.rank == 3);
    CHECK(env.world_size == 4);
    CHECK(env.local_rank == 1);
    setenv("RANK", "2", 1);
    env = ds::comm::init_distributed();
    CHECK(env.rank == 2);  // RANK wins over OpenMPI's
    setenv("RANK", "9", 1);
    CHECK_THROWS_AS(ds::comm::init_distributed(), std::invalid_argument);
    setenv("RANK", "x", 1);
    CHECK_THROWS_AS(ds::comm::init_distributed(), std::invalid_argument);
    for (const char* v : {"RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"})
        unsetenv(v);
}

}  // TEST_SUITE
