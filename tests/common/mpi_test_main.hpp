#pragma once
// main() for doctest binaries run under mpirun: every rank runs the cases inside an
// MpiSession, and the exit code is the worst of all ranks. Include it in exactly one file,
// after DOCTEST_CONFIG_IMPLEMENT and doctest.
#include <mpi.h>

#include <ds/comm/mpi.hpp>

int main(int argc, char** argv) {
    ds::comm::MpiSession session(&argc, &argv);
    doctest::Context context(argc, argv);
    int failed = context.run();
    int worst = failed;
    MPI_Allreduce(&failed, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return worst;
}
