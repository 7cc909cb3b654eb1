// Training throughput of the CIFAR-10 tutorial's Net: one engine step (forward, cross-
// entropy, backward, AdamW with the example's hyper-parameters) on a fixed synthetic batch,
// as images/s. Compare with benchmarks/pytorch_cifar_net.py, run in the same session
// (benchmarks/run_train_comparison does both). Arguments: batch size, BLAS threads.
#include <cstdint>
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
using Engine = ds::Engine<Net, ds::AdamW<>>;

void train_step(benchmark::State& state) {
    const auto batch = static_cast<std::int64_t>(state.range(0));
    set_threads(static_cast<int>(state.range(1)));
    ds::Config cfg = cifar10::ds_config;
    cfg.train_batch_size = batch;
    cfg.optimizer.type = ds::OptimizerType::AdamW;
    cfg.scheduler = {};  // a constant lr: WarmupLR's first steps would be lr = 0
    Engine engine(cfg);
    const auto data = ds::data::make_synthetic(static_cast<std::size_t>(batch), 3, 32, 32, 10, 1);
    std::vector<float> inputs(static_cast<std::size_t>(batch) * Engine::input_size);
    std::vector<std::int32_t> labels(static_cast<std::size_t>(batch));
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = data.get(i, inputs.data() + i * Engine::input_size);
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
BENCHMARK(inference)->ArgsProduct({{256}, {1, 2}})->ArgNames({"batch", "threads"})->UseRealTime();

BENCHMARK_MAIN();
