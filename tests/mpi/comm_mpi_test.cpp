// The MPI communicator under mpirun (-np 2 and -np 4 in CTest): the same collective laws
// as the threaded one, plus expert groups. Every rank runs the doctest cases; the exit
// code is the worst of all ranks.
#define DOCTEST_CONFIG_IMPLEMENT
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

int main(int argc, char** argv) {
    ds::comm::MpiSession session(&argc, &argv);
    doctest::Context context(argc, argv);
    int failed = context.run();
    int worst = failed;
    MPI_Allreduce(&failed, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return worst;
}
