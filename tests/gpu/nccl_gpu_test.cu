// ds::comm::Nccl on one GPU: every collective of the communicator concept moves device
// buffers as a world of one must (reductions are identities, gathers and all-to-alls copy),
// in fp32, bf16 and int32; sub-groups by ncclCommSplit; the counters count what was asked;
// an invalid call throws CudaError naming NCCL. Then the engine over it: ZeRO stages 2 and 3
// with overlap_comm, whose reductions and gathers really run on NCCL's stream while the
// compute stream goes on (the CudaSingle world of the other engine tests completes each
// call at once), train as stage 0. Exits 77 without a CUDA device.
#define DOCTEST_CONFIG_IMPLEMENT
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "device_or_skip.hpp"

#include <ds/comm/nccl.hpp>
#include <ds/device/cuda/engine.cuh>
#include <ds/device/cuda/memory.hpp>
#include <ds/engine/engine.hpp>

#include "cifar10/net.hpp"
#include "gpu/engine_reference.hpp"

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
    int current = -1;
    DS_CUDA_CHECK(cudaGetDevice(&current));
    CHECK(world.device() == current);  // what the engine checks against its own
    check_world_of_one<float>(world);
    check_world_of_one<ds::bf16>(world);
    check_world_of_one<std::int32_t>(world);
    CHECK(world.counters()[ds::comm::Op::all_reduce] == 3 * 2 * 2 * 1000);  // 2 per type, counted 2n
    auto sub = world.split(0, 0);
    CHECK(sub.size() == 1);
    sub.barrier();
    check_world_of_one<float>(sub);
    const double waited = sub.counters().seconds;
    ds::cuda::DeviceBuffer<float> one(1);
    sub.all_reduce_async(one.data(), 1, ds::comm::ReduceOp::sum).wait();
    CHECK(sub.counters().seconds > waited);  // a request's wait is communication time
    CHECK_THROWS_AS(world.broadcast(static_cast<float*>(nullptr), 10, 3), ds::CudaError);  // root 3 of 1
}

TEST_CASE_TEMPLATE("the engine over NCCL, one rank: stages 2 and 3 with overlap_comm train as stage 0", Z, ds::Zero<2>,
                   ds::Zero<3>) {
    constexpr int steps = 20;
    ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, ds::FP32, ds::Cuda> reference(engine_test_config());
    const TrainingRun stage0 = train_steps(reference, steps);

    ds::Config cfg = engine_test_config();
    cfg.zero_optimization.stage = Z::stage;
    cfg.zero_optimization.reduce_bucket_size = 4096;  // stage 2: buckets in flight on NCCL's stream
    cfg.zero_optimization.overlap_comm = true;        // stage 3: the next layer's gather prefetched
    cfg.zero_optimization.stage3_param_persistence_threshold = 1000;
    ds::Engine<cifar10::CifarNet, ds::Adam<>, Z, ds::FP32, ds::Cuda, ds::comm::Nccl> engine(cfg,
                                                                                          ds::comm::Nccl::single());
    const TrainingRun run = train_steps(engine, steps);
    // Stage 2 reduces through reduce-scatters, stage 3 also gathers every layer: on NCCL here.
    const auto& counted = engine.communicator().counters();
    CHECK(counted[ds::comm::Op::reduce_scatter] > 0);
    if constexpr (Z::stage == 3) CHECK(counted[ds::comm::Op::all_gather] > 0);
    // Other buffers, alignments and sum orders than stage 0's: rounding apart (see `drift`).
    CHECK(drift(run, stage0) < 1e-4);
    CHECK(share_within(run, stage0, 1e-5) > 0.999);
}

}  // TEST_SUITE

int main(int argc, char** argv) {
    if (const int code = device_or_skip()) return code;
    doctest::Context context(argc, argv);
    return context.run();
}
