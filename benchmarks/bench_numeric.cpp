// Conversion throughput of ds::bf16 / ds::half over a flat buffer: the cast the engine
// does after every optimizer step (fp32 master -> compute dtype) and before every GEMM.
// Reports bytes processed (4 read + 2 written per element).
#include <cstdint>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include <ds/numeric/bf16.hpp>
#include <ds/numeric/half.hpp>

namespace {

std::vector<float> random_floats(std::size_t n) {
    std::mt19937 rng(42);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
}

template <class T>
void narrow(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const auto in = random_floats(n);
    std::vector<T> out(n);
    for (auto _ : state) {
        for (std::size_t i = 0; i < n; ++i) out[i] = T(in[i]);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * (sizeof(float) + sizeof(T))));
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

template <class T>
void widen(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const auto source = random_floats(n);
    std::vector<T> in(n);
    for (std::size_t i = 0; i < n; ++i) in[i] = T(source[i]);
    std::vector<float> out(n);
    for (auto _ : state) {
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * (sizeof(float) + sizeof(T))));
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

void copy_reference(benchmark::State& state) {  // memory-bound floor: a plain fp32 copy
    const auto n = static_cast<std::size_t>(state.range(0));
    const auto in = random_floats(n);
    std::vector<float> out(n);
    for (auto _ : state) {
        for (std::size_t i = 0; i < n; ++i) out[i] = in[i];
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * 2 * sizeof(float)));
}

}  // namespace

BENCHMARK(narrow<ds::bf16>)->Arg(62006)->Arg(1 << 22);
BENCHMARK(narrow<ds::half>)->Arg(62006)->Arg(1 << 22);
BENCHMARK(widen<ds::bf16>)->Arg(62006)->Arg(1 << 22);
BENCHMARK(widen<ds::half>)->Arg(62006)->Arg(1 << 22);
BENCHMARK(copy_reference)->Arg(62006)->Arg(1 << 22);

BENCHMARK_MAIN();
