// ds::Engine<..., ds::Cuda, comm::CudaMpi> under mpirun -np 2 (CTest), both ranks on one GPU
// (NCCL refuses that; CudaMpi stages through the host): ZeRO stage 0 over two ranks that
// see different batches trains as the CPU engine over comm::Mpi does, every step's loss and
// the final parameters; stages 1, 2 and 3 train as stage 0 on the GPU, with buckets and
// gathers small enough to take many pieces, and hold 1/2 of what they partition.
// Exits 77 on every rank without a CUDA device.
#define DOCTEST_CONFIG_IMPLEMENT
#include <algorithm>
#include <cmath>
#include <vector>

#include <doctest/doctest.h>

#include "device_or_skip.hpp"

#include <ds/comm/cuda_mpi.hpp>
#include <ds/device/cuda/engine.cuh>
#include <ds/engine/engine.hpp>

#include "cifar10/net.hpp"
#include "gpu/engine_reference.hpp"

namespace {

template <class Z>
using GpuEngine = ds::Engine<cifar10::CifarNet, ds::Adam<>, Z, ds::FP32, ds::Cuda, ds::comm::CudaMpi>;
constexpr int steps = 30;

double relative(double got, double expected, double floor) {
    return std::abs(got - expected) / std::max(std::abs(expected), floor);
}
double worst_loss(const TrainingRun& a, const TrainingRun& b) {
    double worst = 0;
    for (std::size_t s = 0; s < a.losses.size(); ++s) worst = std::max(worst, relative(a.losses[s], b.losses[s], 1e-3));
    return worst;
}
double worst_parameter(const TrainingRun& a, const TrainingRun& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.params.size(); ++i) worst = std::max(worst, relative(a.params[i], b.params[i], 1e-2));
    return worst;
}

}  // namespace

TEST_SUITE("gpu") {

TEST_CASE("2 ranks on one GPU: ZeRO stage 0 over CudaMpi trains as the CPU engine over MPI") {
    const TrainingRun cpu = train_on_cpu_mpi(steps);
    GpuEngine<ds::Zero<0>> engine(engine_test_config(2));
    REQUIRE(engine.world_size() == 2);
    const TrainingRun gpu = train_steps(engine, steps);
    CHECK(worst_loss(gpu, cpu) < 1e-3);  // fp32 on both, summed in other orders
    REQUIRE(gpu.params.size() == cpu.params.size());
    CHECK(worst_parameter(gpu, cpu) < 2e-3);
    CHECK(gpu.losses.back() < gpu.losses.front());
}

TEST_CASE_TEMPLATE("2 ranks on one GPU: ZeRO stages 1-3 train as stage 0", Z, ds::Zero<1>, ds::Zero<2>, ds::Zero<3>) {
    GpuEngine<ds::Zero<0>> reference(engine_test_config(2));
    const TrainingRun stage0 = train_steps(reference, steps);

    ds::Config cfg = engine_test_config(2);
    cfg.zero_optimization.stage = Z::stage;
    cfg.zero_optimization.reduce_bucket_size = 4096;
    cfg.zero_optimization.overlap_comm = true;
    cfg.zero_optimization.stage3_param_persistence_threshold = 1000;
    GpuEngine<Z> engine(cfg);
    const TrainingRun run = train_steps(engine, steps);
    // Halving is exact, so pre-divided reduce-scatters sum what stage 0 sums: only the norm's
    // partial sums (over two partitions) are in another order.
    CHECK(worst_loss(run, stage0) < 1e-5);
    REQUIRE(run.params.size() == stage0.params.size());
    CHECK(worst_parameter(run, stage0) < 1e-5);
    CHECK(engine.get_global_grad_norm() == doctest::Approx(reference.get_global_grad_norm()).epsilon(1e-5));

    const auto memory = engine.memory_report(), full = reference.memory_report();
    CHECK(memory.optimizer_states == full.optimizer_states * engine.padded_params() / (2 * cifar10::CifarNet::param_count));
    if constexpr (Z::partitions_gradients) CHECK(memory.gradients * 2 == engine.padded_params() * sizeof(float));
    if constexpr (Z::partitions_parameters) CHECK(memory.parameters * 2 == engine.padded_params() * sizeof(float));
    else CHECK(memory.parameters == engine.padded_params() * sizeof(float));
}

}  // TEST_SUITE

int main(int argc, char** argv) {
    if (const int code = device_or_skip()) return code;
    doctest::Context context(argc, argv);
    return context.run();
}
