// ZeRO engines over real MPI (mpirun -np 2 and -np 4 in CTest), where the asynchronous
// paths are really asynchronous: stage 2's reductions left in flight (overlap_comm), with and
// without the contiguous bucket, and stage 3's prefetched all-gathers of every layer
// (persistence threshold 0), with reduce-scatter or all-reduce — through MPI's non-blocking
// calls and through a communication thread. Each rank checks its engine
// against stage 0 on one rank (comm::Single) over the same global batches; MoE engines with
// expert parallelism (ep_size 2: MPI all-to-alls over split communicators) against ep_size 1.
#define DOCTEST_CONFIG_IMPLEMENT
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/mpi.hpp>
#include <ds/data/synthetic.hpp>
#include <ds/engine/engine.hpp>

#include "common/small_net.hpp"

namespace {

using small_net::Net, small_net::global_batch, small_net::input;
constexpr int steps = 3;

template <class P>
ds::Config config(int stage) {
    ds::Config c{.train_batch_size = static_cast<std::int64_t>(global_batch),
                 .optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 0.05, .momentum = 0.9}},
                 .gradient_clipping = 0.5,
                 .zero_allow_untested_optimizer = true,
                 .seed = 3};
    if constexpr (std::is_same_v<P, ds::BF16>) c.bf16.enabled = true;
    c.zero_optimization.stage = stage;
    c.zero_optimization.overlap_comm = true;
    return c;
}

template <int Stage, class P>
void check(ds::Config cfg, double tolerance, ds::comm::Progress progress = ds::comm::Progress::library) {
    const auto data = small_net::make_batches(steps, 9);
    ds::Config single = cfg;
    single.zero_optimization = {};
    ds::Engine<Net, ds::SGD<>, ds::Zero<0>, P> reference(single);
    small_net::train(reference, data, 0, steps);
    const auto expected = reference.full_parameters();

    ds::Engine<Net, ds::SGD<>, ds::Zero<Stage>, P, ds::Cpu, ds::comm::Mpi> engine(cfg, ds::comm::Mpi{progress});
    small_net::train(engine, data, 0, steps);
    const auto got = engine.full_parameters();
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, std::abs(got[i] - expected[i]) / std::max(std::abs(double{expected[i]}), 0.1));
    INFO("stage " << Stage << (progress == ds::comm::Progress::thread ? " (communication thread)" : "") << ", rank " << engine.global_rank() << " of " << engine.world_size());
    CHECK(worst < tolerance);
    CHECK(engine.optimizer().step_count() == steps);
}

}  // namespace

TEST_CASE_TEMPLATE("ZeRO over MPI with overlapped and prefetched collectives", P, ds::FP32, ds::BF16) {
    const double tolerance = std::is_same_v<P, ds::FP32> ? 1e-5 : 5e-3;
    ds::Config buckets = config<P>(2);
    buckets.zero_optimization.reduce_bucket_size = 500;  // several reductions in flight per backward
    check<2, P>(buckets, tolerance);
    buckets.zero_optimization.contiguous_gradients = false;
    check<2, P>(buckets, tolerance);
    ds::Config gathers = config<P>(3);
    gathers.zero_optimization.stage3_param_persistence_threshold = 0;  // every layer gathered, the next prefetched
    check<3, P>(gathers, tolerance);
    gathers.zero_optimization.reduce_scatter = false;
    check<3, P>(gathers, tolerance);
    // The same overlaps with a communication thread instead of MPI's non-blocking calls.
    check<2, P>(buckets, tolerance, ds::comm::Progress::thread);
    check<3, P>(config<P>(3), tolerance, ds::comm::Progress::thread);
    gathers.zero_optimization.reduce_scatter = true;
    check<3, P>(gathers, tolerance, ds::comm::Progress::thread);
}

namespace {

/// The example's MoE Net with experts [2, 4] split over `Ep` ranks, trained 3 steps on this
/// MPI world; every rank takes its own 4 images per step.
/// @returns the parameters with every expert (the ep_size 1 layout)
/// How stage 2 reduces: the default bucket, or 500-element buckets (several per group, in
/// flight), or each layer from its own buffer (`contiguous_gradients: false`).
enum class Buckets { large, small, per_layer };

template <int Stage, std::size_t Ep, ds::nn::MoEMlp Mlp>
std::vector<float> train_moe(ds::comm::Progress progress, Buckets buckets) {
    using MoENet = typename cifar10::MoENet<1, 16, Mlp, 2, 4>::template with_expert_parallel<Ep>;
    ds::comm::Mpi world{progress};
    constexpr std::size_t micro = 4;
    ds::Config cfg = config<ds::FP32>(Stage);
    cfg.train_batch_size = static_cast<std::int64_t>(micro) * world.size();
    if (buckets == Buckets::small) cfg.zero_optimization.reduce_bucket_size = 500;
    if (buckets == Buckets::per_layer) cfg.zero_optimization.contiguous_gradients = false;
    ds::Engine<MoENet, ds::SGD<>, ds::Zero<Stage>, ds::FP32, ds::Cpu, ds::comm::Mpi> engine(cfg, std::move(world));
    engine.configure_moe(ds::nn::MoESettings{.k = 1, .min_capacity = 0, .noisy_gate_policy = ds::nn::NoisyGate::rsample});
    const auto data = ds::data::make_synthetic(micro * static_cast<std::size_t>(engine.world_size()) * steps, 1, 16, 16,
                                               10, 4);
    std::vector<float> x(micro * input);
    std::vector<std::int32_t> labels(micro);
    for (int s = 0; s < steps; ++s) {
        const std::size_t first = (static_cast<std::size_t>(s) * static_cast<std::size_t>(engine.world_size()) +
                                   static_cast<std::size_t>(engine.global_rank())) * micro;
        for (std::size_t j = 0; j < micro; ++j) labels[j] = data.get(first + j, x.data() + j * input);
        engine.backward(ds::nn::CrossEntropyLoss{10}(engine.forward(x), labels));
        engine.step();
    }
    CHECK((engine.expert_parallel_counters()[ds::comm::Op::all_to_all] > 0) == (Ep > 1));
    return engine.full_parameters();
}

template <int Stage, ds::nn::MoEMlp Mlp>
void check_expert_parallel(ds::comm::Progress progress, Buckets buckets = Buckets::large) {
    const auto dense = train_moe<Stage, 1, Mlp>(progress, buckets);
    const auto split = train_moe<Stage, 2, Mlp>(progress, buckets);
    REQUIRE(dense.size() == split.size());
    double worst = 0;
    for (std::size_t i = 0; i < dense.size(); ++i)
        worst = std::max(worst, std::abs(split[i] - dense[i]) / std::max(std::abs(double{dense[i]}), 0.01));
    INFO("stage " << Stage << (progress == ds::comm::Progress::thread ? " (communication thread)" : "")
                  << (buckets == Buckets::small ? ", 500-element buckets" : "")
                  << (buckets == Buckets::per_layer ? ", no contiguous gradients" : ""));
    CHECK(worst < 1e-5);
}

}  // namespace

TEST_CASE("MoE with expert parallelism over MPI trains as with every expert on every rank") {
    check_expert_parallel<0, ds::nn::MoEMlp::standard>(ds::comm::Progress::library);
    check_expert_parallel<1, ds::nn::MoEMlp::residual>(ds::comm::Progress::library);
    check_expert_parallel<2, ds::nn::MoEMlp::residual>(ds::comm::Progress::library);
    check_expert_parallel<2, ds::nn::MoEMlp::standard>(ds::comm::Progress::thread);
    // Two groups' buckets: several in flight each, or every layer reduced on its own.
    check_expert_parallel<2, ds::nn::MoEMlp::residual>(ds::comm::Progress::thread, Buckets::small);
    check_expert_parallel<2, ds::nn::MoEMlp::residual>(ds::comm::Progress::library, Buckets::per_layer);
}

#include "common/mpi_test_main.hpp"
