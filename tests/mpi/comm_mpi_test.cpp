// The MPI communicator under mpirun (-np 2 and -np 4 in CTest): the same collective laws
// as the threaded one, plus expert groups. Every rank runs the doctest cases; the exit
// code is the worst of all ranks.
#define DOCTEST_CONFIG_IMPLEMENT
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/mpi.hpp>

#include "common/collective_laws.hpp"

TEST_CASE("MPI keeps the collective laws") {
    ds::comm::Mpi world;
    laws::check_collectives(world);
}

TEST_CASE("MPI expert groups") {
    ds::comm::Mpi world;
    laws::check_expert_groups(world, 1);
    if (world.size() % 2 == 0) laws::check_expert_groups(world, 2);
    laws::check_expert_groups(world, world.size());
}

TEST_CASE("overlapping non-blocking collectives complete in any wait order") {
    ds::comm::Mpi world;
    std::vector<float> a(1000, 1.0f), b(1000, 2.0f);
    auto first = world.all_reduce_async(a.data(), a.size(), ds::comm::ReduceOp::sum);
    auto second = world.all_reduce_async(b.data(), b.size(), ds::comm::ReduceOp::sum);
    second.wait();
    first.wait();
    CHECK(a[999] == static_cast<float>(world.size()));
    CHECK(b[0] == 2.0f * static_cast<float>(world.size()));
}

TEST_CASE("a communication thread runs the async collectives in order, beside blocking ones") {
    ds::comm::Mpi world(ds::comm::Progress::thread);
    REQUIRE(world.progress() == ds::comm::Progress::thread);
    const int n = world.size();
    const auto r = static_cast<float>(world.rank());
    std::vector<float> a(1000, 1.0f), gathered(4 * static_cast<std::size_t>(n)), scattered(3);
    std::vector<float> mine{r, r, r, r}, blocks(3 * static_cast<std::size_t>(n), r + 1.0f);
    auto sum = world.all_reduce_async(a.data(), a.size(), ds::comm::ReduceOp::sum);
    auto gather = world.all_gather_async(mine.data(), gathered.data(), 4);
    auto scatter = world.reduce_scatter_async(blocks.data(), scattered.data(), 3, ds::comm::ReduceOp::sum);
    double blocking = 1.0;  // a blocking collective while the thread's are in flight
    world.all_reduce(&blocking, 1, ds::comm::ReduceOp::sum);
    scatter.wait();
    gather.wait();
    sum.wait();
    CHECK(blocking == n);
    CHECK(a[0] == static_cast<float>(n));
    for (int k = 0; k < n; ++k) CHECK(gathered[4 * static_cast<std::size_t>(k) + 3] == static_cast<float>(k));
    CHECK(scattered[2] == static_cast<float>(n * (n + 1) / 2));  // Σ (rank + 1)
    ds::comm::Mpi pairs = world.split(world.rank() % 2, world.rank());
    CHECK(pairs.progress() == ds::comm::Progress::thread);
}

#include "common/mpi_test_main.hpp"
