// ds::comm::CudaMpi under mpirun -np 2 (CTest), both ranks on one GPU: every collective of
// the communicator concept moves device buffers between the ranks as the MPI collective
// moves host ones (sums, blocks, gathers, exchanges, broadcast), in fp32 and bf16, and on a
// split sub-group. Exits 77 on every rank without a CUDA device.
#define DOCTEST_CONFIG_IMPLEMENT
#include <cstdint>
#include <vector>

#include <doctest/doctest.h>

#include "device_or_skip.hpp"

#include <ds/comm/cuda_mpi.hpp>
#include <ds/device/cuda/memory.hpp>

namespace {

template <class T>
std::vector<float> widen(const std::vector<T>& v) {
    std::vector<float> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(v[i]);
    return out;
}

/// Rank r's value i: r + i / 8 (exact in bf16 for these sizes).
template <class T>
std::vector<T> values_of(int rank, std::size_t n) {
    std::vector<T> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = T(static_cast<float>(rank) + static_cast<float>(i % 64) / 8.0f);
    return v;
}

template <class T>
void check_collectives(ds::comm::CudaMpi& comm) {
    const int p = comm.size(), me = comm.rank();
    const std::size_t n = 96;
    ds::cuda::DeviceBuffer<T> a(n * static_cast<std::size_t>(p)), b(n * static_cast<std::size_t>(p));
    std::vector<T> host(n * static_cast<std::size_t>(p));
    // all_reduce: Σ_r (r + i/8)
    a.copy_from(values_of<T>(me, a.size()));
    comm.all_reduce(a.data(), a.size(), ds::comm::ReduceOp::sum);
    a.copy_to(host);
    for (std::size_t i = 0; i < host.size(); ++i)
        CHECK(static_cast<float>(host[i]) == static_cast<float>(p * (p - 1) / 2) + p * static_cast<float>(i % 64) / 8.0f);
    // reduce_scatter: block `me` of the sum
    a.copy_from(values_of<T>(me, a.size()));
    ds::cuda::DeviceBuffer<T> block(n);
    comm.reduce_scatter(a.data(), block.data(), n, ds::comm::ReduceOp::sum);
    std::vector<T> got(n);
    block.copy_to(got);
    for (std::size_t i = 0; i < n; ++i) {
        const std::size_t at = static_cast<std::size_t>(me) * n + i;
        CHECK(static_cast<float>(got[i]) == static_cast<float>(p * (p - 1) / 2) + p * static_cast<float>(at % 64) / 8.0f);
    }
    // all_gather: block r = rank r's n values
    block.copy_from(values_of<T>(me, n));
    comm.all_gather(block.data(), b.data(), n);
    b.copy_to(host);
    for (int r = 0; r < p; ++r)
        CHECK(widen(std::vector<T>(host.begin() + r * n, host.begin() + (r + 1) * n)) == widen(values_of<T>(r, n)));
    // all_to_all: block r of my output is block `me` of rank r's input (rank r sends r + i/8)
    a.copy_from(values_of<T>(me, a.size()));
    comm.all_to_all(a.data(), b.data(), n);
    b.copy_to(host);
    for (int r = 0; r < p; ++r) {
        const auto theirs = values_of<T>(r, n * static_cast<std::size_t>(p));
        for (std::size_t i = 0; i < n; ++i)
            CHECK(static_cast<float>(host[r * n + i]) == static_cast<float>(theirs[static_cast<std::size_t>(me) * n + i]));
    }
    // broadcast from the last rank
    a.copy_from(values_of<T>(me, a.size()));
    comm.broadcast(a.data(), a.size(), p - 1);
    a.copy_to(host);
    CHECK(widen(host) == widen(values_of<T>(p - 1, host.size())));
}

}  // namespace

TEST_CASE("CudaMpi: device-buffer collectives between ranks sharing one GPU") {
    ds::comm::CudaMpi world;
    REQUIRE(world.size() >= 2);
    check_collectives<float>(world);
    check_collectives<ds::bf16>(world);
    auto pairs = world.split(world.rank() % 2, world.rank());
    check_collectives<float>(pairs);
    CHECK(world.counters()[ds::comm::Op::all_to_all] > 0);
}

int main(int argc, char** argv) {
    ds::comm::MpiSession session(&argc, &argv);
    if (const int code = device_or_skip()) return code;
    doctest::Context context(argc, argv);
    int failed = context.run();
    int worst = failed;
    MPI_Allreduce(&failed, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return worst;
}
