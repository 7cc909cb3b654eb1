// Step time per ZeRO stage over MPI ranks, for the CIFAR Net (Ψ = 62,006) and a wider MLP
// (Ψ ≈ 21 M), with the share of the step spent inside collectives. Run under mpirun (see
// benchmarks/run_zero_scaling); every rank runs the same fixed iteration count and rank 0
// reports. Counters: images/s (global), comm_fraction, elements/step.
#include <chrono>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <benchmark/benchmark.h>
#include <cblas.h>

#include <ds/comm/distributed.hpp>
#include <ds/comm/mpi.hpp>
#include <ds/device/cpu/threads.hpp>
#include <ds/engine/engine.hpp>
#include <ds/nn/cross_entropy.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/relu.hpp>
#include <ds/nn/sequential.hpp>
#include <ds/util/rng.hpp>

#include "cifar10/ds_config.hpp"
#include "cifar10/net.hpp"

namespace {

using namespace ds::nn;
/// 1024 → 4096 → 4096 → 10: 21.0 M parameters, dominated by GEMMs and by its gradient volume.
using WideMlp = Sequential<Features<1024>, Named<"fc1", Linear<1024, 4096>>, ReLU, Named<"fc2", Linear<4096, 4096>>,
                           ReLU, Named<"fc3", Linear<4096, 10>>>;

/// One training step of `Model` at ZeRO `Stage` in precision `P`; the async collectives
/// progress through MPI (`Progress::library`) or a communication thread; `Overlap` is
/// `overlap_comm` (stage 2's in-flight reductions, stage 3's prefetch).
/// An MoE model's experts are split over `Model::expert_parallel_size` ranks (DeepSpeed's
/// top-1, RSample).
template <class Model, int Stage, class P = ds::FP32, ds::comm::Progress Mode = ds::comm::Progress::library,
          bool Overlap = true>
void zero_step(benchmark::State& state) {
    using Engine = ds::Engine<Model, ds::Adam<>, ds::Zero<Stage>, P, ds::Cpu, ds::comm::Mpi>;
    if (ds::comm::init_distributed().world_size % static_cast<int>(Model::expert_parallel_size) != 0) {
        state.SkipWithError("the expert parallel size must divide the number of ranks");
        return;
    }
    const auto global_batch = static_cast<std::int64_t>(state.range(0));
    openblas_set_num_threads(1);
    ds::cpu::set_threads(ds::cpu::cores_per_rank(ds::comm::init_distributed().local_world_size));
    ds::Config cfg = cifar10::ds_config;  // Adam, 5e7-element buckets, clipping 1.0
    cfg.train_batch_size = global_batch;
    cfg.scheduler = {};
    cfg.zero_optimization.stage = Stage;
    cfg.zero_optimization.overlap_comm = Overlap;
    cfg.bf16.enabled = std::is_same_v<P, ds::BF16>;
    cfg.fp16.enabled = P::scales_loss;
    if constexpr (P::scales_loss) cfg.fp16.loss_scale = 1024;  // static: every step does the same work
    Engine engine(cfg, ds::comm::Mpi{Mode});
    if constexpr (Model::contains_moe)
        engine.configure_moe(ds::nn::MoESettings{.k = 1, .noisy_gate_policy = ds::nn::NoisyGate::rsample});
    const auto micro = static_cast<std::size_t>(engine.train_micro_batch_size_per_gpu());
    std::vector<float> inputs(micro * Engine::input_size);
    ds::Rng rng(static_cast<std::uint64_t>(engine.global_rank()));
    for (float& x : inputs) x = rng.uniform(-1.0f, 1.0f);
    std::vector<std::int32_t> labels(micro);
    for (auto& l : labels) l = static_cast<std::int32_t>(rng.below(10));
    const ds::nn::CrossEntropyLoss criterion{Engine::output_size};
    auto train_step = [&] {
        const auto outputs = engine.forward(inputs);
        const auto loss = criterion(outputs, labels);
        engine.backward(loss);
        engine.step();
    };
    train_step();  // warm-up: first-touch of buffers
    const auto before = engine.communicator().counters();
    const auto experts_before = engine.expert_parallel_counters();
    if constexpr (Model::contains_moe) engine.module().for_each_layer([](auto& l) {
        if constexpr (requires { l.reset_timings(); }) l.reset_timings();
    });
    double elapsed = 0.0;
    for (auto _ : state) {
        const auto start = std::chrono::steady_clock::now();
        train_step();
        elapsed += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    const auto& after = engine.communicator().counters();
    const auto steps = static_cast<double>(state.iterations());
    state.counters["ranks"] = engine.world_size();
    state.counters["images/s"] = benchmark::Counter(steps * static_cast<double>(global_batch),
                                                    benchmark::Counter::kIsRate);
    state.counters["comm_fraction"] = (after.seconds - before.seconds) / elapsed;
    state.counters["elements/step"] = static_cast<double>(after.total() - before.total()) / steps;
    state.counters["params"] = static_cast<double>(Model::param_count);
    if constexpr (Model::contains_moe) {
        const auto experts_after = engine.expert_parallel_counters();
        const auto moe = ds::nn::moe_timings(engine.module());
        state.counters["all_to_all/step"] =
            static_cast<double>(experts_after[ds::comm::Op::all_to_all] - experts_before[ds::comm::Op::all_to_all]) / steps;
        state.counters["gate_fraction"] = moe.gate / elapsed;
        state.counters["a2a_fraction"] = (moe.first_all_to_all + moe.second_all_to_all) / elapsed;
    }
}

constexpr int iterations_net = 200, iterations_mlp = 10;

}  // namespace

BENCHMARK(zero_step<cifar10::CifarNet, 0>)->Arg(16)->Iterations(iterations_net)->UseRealTime()->Name("net/stage0");
BENCHMARK(zero_step<cifar10::CifarNet, 1>)->Arg(16)->Iterations(iterations_net)->UseRealTime()->Name("net/stage1");
BENCHMARK(zero_step<cifar10::CifarNet, 2>)->Arg(16)->Iterations(iterations_net)->UseRealTime()->Name("net/stage2");
BENCHMARK(zero_step<cifar10::CifarNet, 3>)->Arg(16)->Iterations(iterations_net)->UseRealTime()->Name("net/stage3");
BENCHMARK(zero_step<WideMlp, 0>)->Arg(64)->Iterations(iterations_mlp)->UseRealTime()->Name("mlp21m/stage0");
BENCHMARK(zero_step<WideMlp, 1>)->Arg(64)->Iterations(iterations_mlp)->UseRealTime()->Name("mlp21m/stage1");
BENCHMARK(zero_step<WideMlp, 2>)->Arg(64)->Iterations(iterations_mlp)->UseRealTime()->Name("mlp21m/stage2");
BENCHMARK(zero_step<WideMlp, 3>)->Arg(64)->Iterations(iterations_mlp)->UseRealTime()->Name("mlp21m/stage3");

// Mixed precision (2-byte gradients and gathers) and the two ways of overlapping.
using ds::BF16, ds::FP32, ds::comm::Progress;
using Fp16 = ds::FP16<ds::StaticLossScaler>;
BENCHMARK(zero_step<cifar10::CifarNet, 2, BF16>)->Arg(16)->Iterations(iterations_net)->UseRealTime()->Name("net/stage2/bf16");
BENCHMARK(zero_step<cifar10::CifarNet, 2, Fp16>)->Arg(16)->Iterations(iterations_net)->UseRealTime()->Name("net/stage2/fp16");
BENCHMARK(zero_step<WideMlp, 2, BF16>)->Arg(64)->Iterations(iterations_mlp)->UseRealTime()->Name("mlp21m/stage2/bf16");
BENCHMARK(zero_step<WideMlp, 3, BF16>)->Arg(64)->Iterations(iterations_mlp)->UseRealTime()->Name("mlp21m/stage3/bf16");
BENCHMARK(zero_step<WideMlp, 2, FP32, Progress::library, false>)->Arg(64)->Iterations(iterations_mlp)->UseRealTime()->Name("mlp21m/stage2/no-overlap");
BENCHMARK(zero_step<WideMlp, 2, FP32, Progress::thread>)->Arg(64)->Iterations(iterations_mlp)->UseRealTime()->Name("mlp21m/stage2/comm-thread");
BENCHMARK(zero_step<WideMlp, 3, FP32, Progress::library, false>)->Arg(64)->Iterations(iterations_mlp)->UseRealTime()->Name("mlp21m/stage3/no-prefetch");
BENCHMARK(zero_step<WideMlp, 3, FP32, Progress::thread>)->Arg(64)->Iterations(iterations_mlp)->UseRealTime()->Name("mlp21m/stage3/comm-thread");
// Mixture of Experts (run_ds_moe.sh's and run_ds_prmoe.sh's Nets, top-1, RSample): every
// expert on every rank, or the experts split over the ranks by all-to-all (ep = world).
using MoENet = cifar10::MoENet<3, 32, ds::nn::MoEMlp::standard, 2>;
using PrMoENet = cifar10::MoENet<3, 32, ds::nn::MoEMlp::residual, 2, 4>;
BENCHMARK(zero_step<MoENet, 0>)->Arg(16)->Iterations(iterations_net)->UseRealTime()->Name("moe/stage0/ep1");
BENCHMARK(zero_step<MoENet::with_expert_parallel<2>, 0>)->Arg(16)->Iterations(iterations_net)->UseRealTime()->Name("moe/stage0/ep2");
BENCHMARK(zero_step<PrMoENet, 0>)->Arg(16)->Iterations(iterations_net)->UseRealTime()->Name("prmoe/stage0/ep1");
BENCHMARK(zero_step<PrMoENet::with_expert_parallel<2>, 0>)->Arg(16)->Iterations(iterations_net)->UseRealTime()->Name("prmoe/stage0/ep2");

namespace {
/// Ranks other than 0 run the same benchmarks silently.
class Silent : public benchmark::BenchmarkReporter {
public:
    bool ReportContext(const Context&) override { return true; }
    void ReportRuns(const std::vector<Run>&) override {}
};
}  // namespace

int main(int argc, char** argv) {
    ds::comm::MpiSession mpi(&argc, &argv);
    benchmark::Initialize(&argc, argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) {
        benchmark::RunSpecifiedBenchmarks();
    } else {
        Silent silent;
        benchmark::RunSpecifiedBenchmarks(&silent);
    }
    benchmark::Shutdown();
}
