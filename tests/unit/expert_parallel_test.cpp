// Expert parallelism on the threaded communicator: with ep_size > 1 an MoE layer computes
// what it computes with every expert local (outputs, input gradients, and the expert
// gradients summed over the ranks), and engines at ZeRO stages 0-2 train alike with
// ep_size 1 and 2: averaged gradients, global norms and parameters — the divisor rule of
// SPEC §10 (expert gradients summed over the expert-data-parallel group ÷ the world size) —
// while each rank holds, reduces and partitions only its own experts.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/expert_parallel.hpp>
#include <ds/comm/threads.hpp>
#include <ds/data/synthetic.hpp>
#include <ds/engine/engine.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/moe.hpp>
#include <ds/nn/relu.hpp>
#include <ds/nn/sequential.hpp>

#include "cifar10/net.hpp"

namespace {

using namespace ds::nn;

constexpr std::size_t M = 8, batch = 6;

/// A Linear before the MoE layers, so the layers' input gradient shows in its gradient.
template <MoEMlp Mlp, std::size_t... Experts>
using Layer = Sequential<Features<M>, Named<"in", Linear<M, M>>, Named<"moe", MoE<Linear<M, M>, Mlp, Experts...>>>;

std::vector<float> uniform(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
    std::vector<float> v(n);
    ds::Rng rng(seed);
    for (float& x : v) x = rng.uniform(-scale, scale);
    return v;
}

/// Relative error, with a floor (1e-2, as the ZeRO tests) for values that cancel to near zero.
double relative(double got, double expected, double floor = 1e-2) {
    return std::abs(got - expected) / std::max(std::abs(expected), floor);
}

/// One forward and backward of the MoE layers on each of `ranks` ranks (rank r's own tokens
/// and output gradient): all experts local versus split over `Ep` ranks.
template <std::size_t Ep, MoEMlp Mlp, std::size_t... Experts>
void check_layer(int ranks, MoESettings settings) {
    using Net = Layer<Mlp, Experts...>;
    using Split = typename Net::template with_expert_parallel<Ep>;
    static_assert(Split::dense_param_count == Net::dense_param_count &&
                  Split::expert_param_count * Ep == Net::expert_param_count);
    auto params = uniform(Net::param_count, 5, 0.5f);  // different experts, so a wrong dispatch shows
    for (const auto& p : Net::parameters)  // larger gates: routing is decisive, tokens get dropped
        if (p.name().find("gate.wg") != std::string_view::npos)
            for (std::size_t i = 0; i < p.numel(); ++i) params[p.offset + i] *= 4.0f;

    struct Result {
        std::vector<float> y, dw;
    };
    // Rank r runs batch − r tokens (ranks need not agree on the batch), then the same
    // tokens again in eval mode (eval_capacity_factor).
    const auto run = [&]<class N>(N& net, int rank, const std::vector<float>& w) {
        net.configure_moe(settings);
        const std::size_t b = batch - static_cast<std::size_t>(rank);
        const auto x = uniform(b * M, 100 + static_cast<std::uint64_t>(rank));
        auto dy = uniform(b * M, 200 + static_cast<std::uint64_t>(rank));
        Result r;
        const float* y = net.forward(x.data(), b, w.data());
        r.y.assign(y, y + b * M);
        r.dw.assign(N::param_count, 0.0f);
        net.backward(dy.data(), w.data(), r.dw.data());
        net.set_training(false);
        const float* y_eval = net.forward(x.data(), b, w.data());
        r.y.insert(r.y.end(), y_eval, y_eval + b * M);
        return r;
    };
    std::vector<Result> local(static_cast<std::size_t>(ranks));
    for (int r = 0; r < ranks; ++r) {
        Net net(batch);
        local[static_cast<std::size_t>(r)] = run(net, r, params);
    }

    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& world) {
        ds::comm::ExpertParallelGroup<ds::comm::Threads> group(world, static_cast<int>(Ep));
        const auto rho = static_cast<std::size_t>(group.rank());
        std::vector<float> mine(Split::param_count);  // the dense values and this EP rank's experts
        for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = params[Split::global_offset(i, rho)];
        Split net(batch);
        net.set_expert_parallel_group(&group);
        const Result got = run(net, world.rank(), mine);
        const Result& want = local[static_cast<std::size_t>(world.rank())];
        INFO("rank " << world.rank() << " of " << ranks << ", ep_size " << Ep);
        double worst = 0;
        for (std::size_t i = 0; i < got.y.size(); ++i) worst = std::max(worst, relative(got.y[i], want.y[i]));
        CHECK(worst < 1e-5);  // the experts' GEMMs run on other row counts: float rounding differs
        // A dense gradient (the first Linear's checks the MoE layers' input gradient) is this
        // rank's own; a local expert's is the sum over the ranks of its EP group.
        const int first_in_group = world.rank() / static_cast<int>(Ep) * static_cast<int>(Ep);
        double dense = 0, experts = 0;
        for (std::size_t i = 0; i < Split::param_count; ++i) {
            const std::size_t at = Split::global_offset(i, rho);
            double expected = 0;
            if (i < Split::dense_param_count) {
                expected = want.dw[at];
                dense = std::max(dense, relative(got.dw[i], expected));
            } else {
                for (int r = first_in_group; r < first_in_group + static_cast<int>(Ep); ++r)
                    expected += local[static_cast<std::size_t>(r)].dw[at];
                experts = std::max(experts, relative(got.dw[i], expected));
            }
        }
        CHECK(dense < 1e-5);
        CHECK(experts < 1e-5);
        // The all-to-alls: tokens there and back in the forward, gradients in the backward,
        // each the whole [E, C, M] buffer per layer, plus the row counts.
        CHECK(group.counters()[ds::comm::Op::all_to_all] > 0);
    });
}

// --- engines: ep_size 1 against ep_size > 1 ----------------------------------------------

template <MoEMlp Mlp, std::size_t... Experts>
using EngineNet = cifar10::MoENet<1, 16, Mlp, Experts...>;
constexpr std::size_t image = 256, micro = 8;

/// What an engine run leaves to compare: the averaged gradient of the first step, the global
/// norm of every step and the parameters after the last (both with every expert, in the
/// ep_size 1 layout), the bytes it held, and what the world communicator moved.
struct EngineRun {
    std::vector<float> gradient;
    std::vector<double> norms;
    std::vector<float> params;
    ds::MemoryReport memory;
    std::uint64_t world_all_reduce = 0;
};

/// The first backward's gradient averaged over the ranks (DeepSpeed's rule: dense values
/// over the world; an expert's summed over its expert-data-parallel group ÷ the world),
/// assembled from the engine's buffers: the raw full buffers at stages 0-1 (each group
/// padded at 1), the reduced shards at stage 2 ([dense shard | expert shard]).
template <int Stage, class Net, class Engine>
std::vector<float> averaged_gradient(Engine& engine, ds::comm::Threads& world) {
    constexpr std::size_t ep = Net::expert_parallel_size, dense = Net::dense_param_count, n = Net::expert_param_count;
    const auto ranks = static_cast<std::size_t>(world.size());
    const std::size_t rho = static_cast<std::size_t>(world.rank()) % ep;
    ds::comm::Threads holders = world.split(static_cast<int>(rho), world.rank());  // the same experts
    ds::comm::Threads group = world.split(world.rank() / static_cast<int>(ep), world.rank());  // EP group
    const auto g = engine.gradients();
    std::vector<float> d(dense), x(n);
    if constexpr (Stage < 2) {
        const std::size_t experts_at = Stage == 1 ? ds::FlatPartition(dense, ranks).padded : dense;
        std::copy_n(g.begin(), dense, d.begin());
        std::copy_n(g.begin() + static_cast<std::ptrdiff_t>(experts_at), n, x.begin());
        world.all_reduce(d.data(), dense, ds::comm::ReduceOp::sum);
        holders.all_reduce(x.data(), n, ds::comm::ReduceOp::sum);
        for (auto* v : {&d, &x})
            for (float& e : *v) e /= static_cast<float>(ranks);
    } else {
        const ds::FlatPartition fd(dense, ranks), fx(n, static_cast<std::size_t>(holders.size()));
        std::vector<float> dp(fd.padded), xp(fx.padded);
        world.all_gather(g.data(), dp.data(), fd.shard);
        holders.all_gather(g.data() + fd.shard, xp.data(), fx.shard);
        std::copy_n(dp.begin(), dense, d.begin());
        std::copy_n(xp.begin(), n, x.begin());
    }
    std::vector<float> all(Net::template with_expert_parallel<1>::param_count, 0.0f);
    std::copy(d.begin(), d.end(), all.begin());
    for (std::size_t i = 0; i < n; ++i) all[Net::global_offset(dense + i, rho)] = x[i];
    if constexpr (ep > 1) {  // the other EP ranks' experts
        std::vector<float> experts(all.begin() + dense, all.end());
        group.all_reduce(experts.data(), experts.size(), ds::comm::ReduceOp::sum);
        std::copy(experts.begin(), experts.end(), all.begin() + dense);
    }
    return all;
}

/// `steps` SGD steps on rank r's `per_rank` samples of each global batch of per_rank × ranks.
template <int Stage, class Net, class P = ds::FP32>
EngineRun run_engine(ds::comm::Threads& comm, MoESettings settings, int steps, std::size_t per_rank = micro) {
    ds::Config cfg{.train_batch_size = static_cast<std::int64_t>(per_rank) * comm.size(),
                   .optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 0.05, .momentum = 0.9}},
                   .gradient_clipping = 1.0,
                   .zero_allow_untested_optimizer = true,
                   .seed = 7};
    cfg.zero_optimization.stage = Stage;
    cfg.bf16.enabled = std::is_same_v<P, ds::BF16>;
    ds::Engine<Net, ds::SGD<>, ds::Zero<Stage>, P, ds::Cpu, ds::comm::Threads> engine(cfg, comm);
    engine.configure_moe(settings);
    const auto data = ds::data::make_synthetic(per_rank * static_cast<std::size_t>(comm.size() * steps), 1, 16, 16, 10, 9);
    std::vector<float> x(per_rank * image);
    std::vector<std::int32_t> labels(per_rank);
    EngineRun run;
    static_assert(Net::input_shape::size == image);
    const auto before = engine.communicator().counters()[ds::comm::Op::all_reduce];
    for (int step = 0; step < steps; ++step) {
        const std::size_t first = (static_cast<std::size_t>(step * comm.size()) + static_cast<std::size_t>(comm.rank())) * per_rank;
        for (std::size_t j = 0; j < per_rank; ++j) labels[j] = data.get(first + j, x.data() + j * image);
        const auto out = engine.forward(x);
        engine.backward(ds::nn::CrossEntropyLoss{10}(out, labels));
        if constexpr (std::is_same_v<P, ds::FP32>)
            if (step == 0) {  // its own communicators: the engine's counters stay the engine's
                ds::comm::Threads world = comm.split(0, comm.rank());
                run.gradient = averaged_gradient<Stage, Net>(engine, world);
            }
        engine.step();
        run.norms.push_back(engine.get_global_grad_norm());
    }
    run.world_all_reduce = engine.communicator().counters()[ds::comm::Op::all_reduce] - before;
    run.memory = engine.memory_report();
    run.params = engine.full_parameters();
    return run;
}

/// The acceptance check of expert parallelism: on `ranks` ranks, the Net with its experts
/// split over `Ep` ranks gives the averaged gradients, norms and trained parameters that the
/// Net with every expert on every rank gives, at ZeRO stage `Stage` — and holds only its
/// experts, whose gradients never cross the world communicator.
template <int Stage, std::size_t Ep, class Net>
void check_engines_agree(int ranks, MoESettings settings) {
    using Split = typename Net::template with_expert_parallel<Ep>;
    constexpr int steps = 3;
    std::vector<EngineRun> dense(static_cast<std::size_t>(ranks)), split(static_cast<std::size_t>(ranks));
    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& comm) {
        dense[static_cast<std::size_t>(comm.rank())] = run_engine<Stage, Net>(comm, settings, steps);
    });
    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& comm) {
        split[static_cast<std::size_t>(comm.rank())] = run_engine<Stage, Split>(comm, settings, steps);
    });
    for (std::size_t r = 0; r < static_cast<std::size_t>(ranks); ++r) {
        INFO("ZeRO stage " << Stage << ", rank " << r << " of " << ranks << ", ep_size " << Ep);
        const EngineRun &a = dense[r], &b = split[r];
        REQUIRE(a.gradient.size() == b.gradient.size());
        std::size_t nonzero = 0;
        double worst = 0;
        for (std::size_t i = 0; i < a.gradient.size(); ++i) {
            worst = std::max(worst, relative(b.gradient[i], a.gradient[i]));
            nonzero += i >= Net::dense_param_count && a.gradient[i] != 0.0f;
        }
        CHECK(nonzero > 0);  // the experts learn
        CHECK(worst < 1e-5);
        for (std::size_t s = 0; s < a.norms.size(); ++s) CHECK(relative(b.norms[s], a.norms[s]) < 1e-5);
        worst = 0;
        for (std::size_t i = 0; i < a.params.size(); ++i) worst = std::max(worst, relative(b.params[i], a.params[i]));
        CHECK(worst < 1e-5);
        // Memory: this rank's experts only. Stage 0 keeps full parameters, gradients and
        // states of both groups; stages 1-2 partition the experts over their holders.
        const std::size_t ranks_n = static_cast<std::size_t>(ranks), holders = ranks_n / Ep;
        const std::size_t d = Split::dense_param_count, e = Split::expert_param_count;
        if constexpr (Stage == 0) {
            CHECK(b.memory.parameters == 4 * (d + e));
            CHECK(b.memory.optimizer_states == 4 * (d + e));
            CHECK(a.memory.parameters == 4 * Net::param_count);
            // The world all-reduces (2n elements each, the ring's count) the dense gradient and
            // one norm term; experts stay within their holders.
            CHECK(b.world_all_reduce == 2 * steps * (d + (holders < ranks_n ? 1 : 0)));
            CHECK(a.world_all_reduce == 2 * steps * Net::param_count);
        } else {
            const std::size_t shard = ds::FlatPartition(d, ranks_n).shard + ds::FlatPartition(e, holders).shard;
            CHECK(b.memory.optimizer_states == 4 * shard);
            CHECK(b.memory.parameters == 4 * (ds::FlatPartition(d, ranks_n).padded + ds::FlatPartition(e, holders).padded));
        }
    }
}

}  // namespace

TEST_SUITE("moe") {

TEST_CASE_TEMPLATE("expert parallelism: engines at ZeRO stages 0-2 train alike with ep_size 1 and ep_size > 1", Stage,
                   std::integral_constant<int, 0>, std::integral_constant<int, 1>, std::integral_constant<int, 2>) {
    const MoESettings example{.k = 1, .min_capacity = 0, .noisy_gate_policy = NoisyGate::rsample};
    check_engines_agree<Stage::value, 2, EngineNet<MoEMlp::standard, 2>>(2, example);
    check_engines_agree<Stage::value, 2, EngineNet<MoEMlp::residual, 2, 4>>(4, example);
    check_engines_agree<Stage::value, 2, EngineNet<MoEMlp::residual, 2, 4>>(2, MoESettings{.k = 2, .min_capacity = 1});
}

TEST_CASE("expert parallelism: 2 and 4 ranks with ep 2 train as one rank on the whole batch when nothing is dropped") {
    // The absolute check of the divisor: without dropping or noise a token's path does not
    // depend on its batch, so the world's average of the expert gradients must be the one
    // rank's mean over the whole batch — an expert gradient not divided by the world size,
    // or divided by its holders only, fails here whatever ep is.
    using Net = EngineNet<MoEMlp::residual, 2, 4>;
    const MoESettings keep_all{.k = 1, .min_capacity = 0, .drop_tokens = false};
    constexpr int steps = 3;
    for (int ranks : {2, 4}) {
        EngineRun one;
        ds::comm::run_ranks(1, [&](ds::comm::Threads& comm) {
            one = run_engine<2, Net>(comm, keep_all, steps, micro * static_cast<std::size_t>(ranks));
        });
        std::vector<EngineRun> split(static_cast<std::size_t>(ranks));
        ds::comm::run_ranks(ranks, [&](ds::comm::Threads& comm) {
            split[static_cast<std::size_t>(comm.rank())] =
                run_engine<2, Net::with_expert_parallel<2>>(comm, keep_all, steps);
        });
        INFO(ranks << " ranks");
        for (int s = 0; s < steps; ++s) CHECK(relative(split[0].norms[s], one.norms[s]) < 1e-5);
        double worst = 0;
        for (std::size_t i = 0; i < one.params.size(); ++i) worst = std::max(worst, relative(split[0].params[i], one.params[i]));
        CHECK(worst < 1e-5);
        worst = 0;
        for (std::size_t i = 0; i < one.gradient.size(); ++i)
            worst = std::max(worst, relative(split[0].gradient[i], one.gradient[i]));
        CHECK(worst < 1e-5);
    }
}

TEST_CASE("expert parallelism in bf16 at ZeRO stage 2: ep 2 trains as ep 1, within bf16 rounding") {
    // Mixed precision: bf16 parameters and activations, bf16 gradients reduced per group,
    // fp32 master weights of each group's partition. The experts' products run on other row
    // counts with ep 2, so an output may round to the other bf16 neighbour: 1e-3, not 1e-5.
    using Net = EngineNet<MoEMlp::residual, 2, 4>;
    const MoESettings example{.k = 1, .min_capacity = 0, .noisy_gate_policy = NoisyGate::rsample};
    constexpr int steps = 3, ranks = 2;
    std::vector<EngineRun> dense(ranks), split(ranks);
    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& comm) {
        dense[static_cast<std::size_t>(comm.rank())] = run_engine<2, Net, ds::BF16>(comm, example, steps);
    });
    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& comm) {
        split[static_cast<std::size_t>(comm.rank())] =
            run_engine<2, Net::with_expert_parallel<2>, ds::BF16>(comm, example, steps);
    });
    for (std::size_t r = 0; r < ranks; ++r) {
        INFO("rank " << r);
        for (int s = 0; s < steps; ++s) CHECK(relative(split[r].norms[s], dense[r].norms[s]) < 1e-3);
        REQUIRE(split[r].params.size() == dense[r].params.size());
        double worst = 0;
        for (std::size_t i = 0; i < dense[r].params.size(); ++i)
            worst = std::max(worst, relative(split[r].params[i], dense[r].params[i]));
        CHECK(worst < 1e-3);  // measured 1e-4: a few bf16 roundings went the other way
    }
}

TEST_CASE("expert parallelism: full parameters in the ep_size 1 layout, there and back; ep must divide the world") {
    using Net = EngineNet<MoEMlp::residual, 2, 4>;
    using Split = Net::with_expert_parallel<2>;
    ds::comm::run_ranks(4, [&](ds::comm::Threads& comm) {
        ds::Config cfg{.train_batch_size = static_cast<std::int64_t>(micro) * comm.size(),
                       .optimizer = {.type = ds::OptimizerType::Adam},
                       .seed = 3};
        cfg.zero_optimization.stage = 1;
        cfg.bf16.enabled = true;
        ds::Engine<Split, ds::Adam<>, ds::Zero<1>, ds::BF16, ds::Cpu, ds::comm::Threads> engine(cfg, comm);
        auto values = uniform(Net::param_count, 11);
        engine.set_full_parameters(values);
        const auto back = engine.full_parameters();
        REQUIRE(back.size() == values.size());
        CHECK(back == values);  // the fp32 master weights: exact
        CHECK_THROWS_WITH(engine.set_full_parameters(std::vector<float>(Split::param_count)),
                          doctest::Contains("parameters"));
    });
    ds::comm::run_ranks(3, [&](ds::comm::Threads& comm) {
        ds::Config cfg{.train_batch_size = static_cast<std::int64_t>(micro) * comm.size()};
        using E = ds::Engine<Split, ds::Adam<>, ds::Zero<0>, ds::FP32, ds::Cpu, ds::comm::Threads>;
        CHECK_THROWS_WITH(E(cfg, comm), doctest::Contains("does not divide the world size 3"));
    });
}

TEST_CASE("expert parallelism: an MoE layer over ep ranks computes what it computes with every expert local") {
    const MoESettings top1{.k = 1, .min_capacity = 0, .noisy_gate_policy = NoisyGate::rsample};
    const MoESettings top2{.k = 2, .eval_capacity_factor = 2.0, .min_capacity = 1};
    const MoESettings no_drop{.k = 1, .min_capacity = 0, .drop_tokens = false};
    SUBCASE("top-1, experts [2, 4], ep 2 on 2 ranks") { check_layer<2, MoEMlp::standard, 2, 4>(2, top1); }
    SUBCASE("top-2 PR-MoE, experts [2, 4], ep 2 on 4 ranks (two groups)") { check_layer<2, MoEMlp::residual, 2, 4>(4, top2); }
    SUBCASE("top-1, experts [4, 4], ep 4 on 4 ranks") { check_layer<4, MoEMlp::standard, 4, 4>(4, top1); }
    SUBCASE("top-1, experts [8], ep 2 on 2 ranks: 4 local experts") { check_layer<2, MoEMlp::standard, 8>(2, top1); }
    SUBCASE("top-1 without dropping, experts [8], ep 2 on 4 ranks") { check_layer<2, MoEMlp::standard, 8>(4, no_drop); }
    SUBCASE("a layer without its group refuses to run") {
        Layer<MoEMlp::standard, 2>::with_expert_parallel<2> net(batch);
        std::vector<float> w(decltype(net)::param_count), x(batch * M);
        CHECK_THROWS_WITH(net.forward(x.data(), batch, w.data()), doctest::Contains("no expert-parallel group"));
    }
}

}  // TEST_SUITE
