// Training throughput of the CIFAR-10 tutorial's Net: one engine step (forward, cross-
// entropy, backward, AdamW with the example's hyper-parameters) on a fixed synthetic batch,
// as images/s, in fp32 (train_step) and in bf16 / fp16 (train_step_bf16, train_step_fp16).
// Compare with benchmarks/pytorch_cifar_net.py, run in the same session
// (benchmarks/run_train_comparison does both). Arguments: batch size, OpenMP threads.
#include <cstdint>
#include <type_traits>
#include <vector>

#include <benchmark/benchmark.h>
#include <cblas.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <ds/data/synthetic.hpp>
#include <ds/engine/engine.hpp>
#include <ds/nn/cross_entropy.hpp>

#include "cifar10/ds_config.hpp"
#include "cifar10/net.hpp"

namespace {

using Net = cifar10::CifarNet;

/// OpenMP threads split the convolutions' images; the small fully connected GEMMs stay on
/// one BLAS thread (OpenBLAS's own threads would spin against OpenMP's on the same cores).
void set_threads(int n) {
    openblas_set_num_threads(1);
#if defined(_OPENMP)
    omp_set_num_threads(n);
#endif
}
template <class Precision, class Model = Net>
using EngineWith = ds::Engine<Model, ds::AdamW<>, ds::Zero<0>, Precision>;
using Engine = EngineWith<ds::FP32>;

/// One training step per iteration in precision P (fp16: a static scale of 1024, so no
/// step is skipped and every iteration does the same work), of the dense Net or an MoE Net
/// (top-1 gating with RSample, as the Python run scripts).
template <class Precision, class Model = Net>
void train_step_in(benchmark::State& state) {
    using E = EngineWith<Precision, Model>;
    const auto batch = static_cast<std::int64_t>(state.range(0));
    set_threads(static_cast<int>(state.range(1)));
    ds::Config cfg = cifar10::ds_config;
    cfg.train_batch_size = batch;
    cfg.optimizer.type = ds::OptimizerType::AdamW;
    cfg.scheduler = {};  // a constant lr: WarmupLR's first steps would be lr = 0
    cfg.bf16.enabled = std::is_same_v<Precision, ds::BF16>;
    cfg.fp16.enabled = Precision::scales_loss;
    if constexpr (Precision::scales_loss) cfg.fp16.loss_scale = 1024;
    E engine(cfg);
    engine.module().configure_moe(ds::nn::MoESettings{.k = 1, .noisy_gate_policy = ds::nn::NoisyGate::rsample});
    const auto data = ds::data::make_synthetic(static_cast<std::size_t>(batch), 3, 32, 32, 10, 1);
    std::vector<float> inputs(static_cast<std::size_t>(batch) * E::input_size);
    std::vector<std::int32_t> labels(static_cast<std::size_t>(batch));
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = data.get(i, inputs.data() + i * E::input_size);
    const ds::nn::CrossEntropyLoss criterion{10};
    for (auto _ : state) {
        const auto outputs = engine.forward(inputs);
        const auto loss = criterion(outputs, labels);
        engine.backward(loss);
        engine.step();
        benchmark::DoNotOptimize(loss.value);
    }
    state.SetItemsProcessed(state.iterations() * batch);
    state.counters["images/s"] = benchmark::Counter(static_cast<double>(state.iterations() * batch),
                                                    benchmark::Counter::kIsRate);
}

void train_step(benchmark::State& state) { train_step_in<ds::FP32>(state); }
void train_step_bf16(benchmark::State& state) { train_step_in<ds::BF16>(state); }
void train_step_fp16(benchmark::State& state) { train_step_in<ds::FP16<ds::StaticLossScaler>>(state); }
void train_step_moe(benchmark::State& state) {
    train_step_in<ds::FP32, cifar10::MoENet<3, 32, ds::nn::MoEMlp::standard, 2>>(state);
}
void train_step_prmoe(benchmark::State& state) {
    train_step_in<ds::FP32, cifar10::MoENet<3, 32, ds::nn::MoEMlp::residual, 2, 4>>(state);
}

void inference(benchmark::State& state) {
    const auto batch = static_cast<std::int64_t>(state.range(0));
    set_threads(static_cast<int>(state.range(1)));
    ds::Config cfg = cifar10::ds_config;
    cfg.train_batch_size = batch;
    Engine engine(cfg);
    std::vector<float> inputs(static_cast<std::size_t>(batch) * Engine::input_size, 0.25f);
    engine.eval();
    for (auto _ : state) benchmark::DoNotOptimize(engine.forward(inputs).data());
    state.counters["images/s"] = benchmark::Counter(static_cast<double>(state.iterations() * batch),
                                                    benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(train_step)->ArgsProduct({{16, 64, 256}, {1, 2}})->ArgNames({"batch", "threads"})->UseRealTime();
// Mixed precision next to fp32 (issue: BF16 at most 1.3x slower than FP32 on this CPU).
BENCHMARK(train_step_bf16)->ArgsProduct({{16, 256}, {1, 2}})->ArgNames({"batch", "threads"})->UseRealTime();
BENCHMARK(train_step_fp16)->ArgsProduct({{16, 256}, {1, 2}})->ArgNames({"batch", "threads"})->UseRealTime();
// Mixture of Experts next to the dense Net: --num-experts 2 (top-1), and PR-MoE 2 4.
BENCHMARK(train_step_moe)->ArgsProduct({{16, 256}, {1}})->ArgNames({"batch", "threads"})->UseRealTime();
BENCHMARK(train_step_prmoe)->ArgsProduct({{16, 256}, {1}})->ArgNames({"batch", "threads"})->UseRealTime();
BENCHMARK(inference)->ArgsProduct({{256}, {1, 2}})->ArgNames({"batch", "threads"})->UseRealTime();

BENCHMARK_MAIN();
