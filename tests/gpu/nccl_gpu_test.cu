// ds::comm::Nccl on one GPU: every collective of the communicator concept moves device
// buffers as a world of one must (reductions are identities, gathers and all-to-alls copy),
// in fp32, bf16 and int32; sub-groups by ncclCommSplit; the counters count what was asked;
// an invalid call throws CudaError naming NCCL. Exits 77 without a CUDA device.
#define DOCTEST_CONFIG_IMPLEMENT
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "device_or_skip.hpp"

#include <ds/comm/nccl.hpp>
#include <ds/device/cuda/memory.hpp>

namespace {

template <class T>
std::vector<T> iota(std::size_t n, float scale) {
    std::vector<T> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = T(static_cast<float>(i) * scale);
    return v;
}

template <class T>
void check_world_of_one(ds::comm::Nccl& comm) {
    const std::size_t n = 1000;
    const auto values = iota<T>(n, 0.5f);
    ds::cuda::DeviceBuffer<T> a(n), b(n);
    a.copy_from(values);
    std::vector<T> back(n);
    const auto same = [&](const ds::cuda::DeviceBuffer<T>& d) {
        d.copy_to(back);
        std::size_t wrong = 0;
        for (std::size_t i = 0; i < n; ++i) wrong += static_cast<float>(back[i]) != static_cast<float>(values[i]);
        return wrong == 0;
    };
    comm.all_reduce(a.data(), n, ds::comm::ReduceOp::sum);
    CHECK(same(a));
    comm.all_reduce(a.data(), n, ds::comm::ReduceOp::max);
    CHECK(same(a));
    comm.reduce_scatter(a.data(), b.data(), n, ds::comm::ReduceOp::sum);
    CHECK(same(b));
    comm.all_gather(a.data(), b.data(), n);
    CHECK(same(b));
    comm.all_to_all(a.data(), b.data(), n);
    CHECK(same(b));
    const std::vector<std::size_t> counts{n};
    comm.reduce_scatter_v(a.data(), b.data(), counts, ds::comm::ReduceOp::sum);
    CHECK(same(b));
    comm.broadcast(a.data(), n, 0);
    CHECK(same(a));
    comm.all_gather_async(a.data(), b.data(), n).wait();
    CHECK(same(b));
}

}  // namespace

TEST_SUITE("gpu") {

TEST_CASE("NCCL, one rank: every collective of the concept, sub-groups, counters and errors") {
    auto world = ds::comm::Nccl::single();
    CHECK(world.rank() == 0);
    CHECK(world.size() == 1);
    check_world_of_one<float>(world);
    check_world_of_one<ds::bf16>(world);
    check_world_of_one<std::int32_t>(world);
    CHECK(world.counters()[ds::comm::Op::all_reduce] == 3 * 2 * 2 * 1000);  // 2 per type, counted 2n
    auto sub = world.split(0, 0);
    CHECK(sub.size() == 1);
    sub.barrier();
    check_world_of_one<float>(sub);
    CHECK_THROWS_AS(world.broadcast(static_cast<float*>(nullptr), 10, 3), ds::CudaError);  // root 3 of 1
}

}  // TEST_SUITE

int main(int argc, char** argv) {
    if (const int code = device_or_skip()) return code;
    doctest::Context context(argc, argv);
    return context.run();
}
