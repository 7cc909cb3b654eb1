// Expert parallelism on the threaded communicator: with ep_size > 1 an MoE layer computes
// what it computes with every expert local (outputs, input gradients, and the expert
// gradients summed over the ranks), and engines at ZeRO stages 0-2 train alike with
// ep_size 1 and 2: averaged gradients, global norms and parameters — the divisor rule of
// SPEC §10 (expert gradients summed over the expert-data-parallel group ÷ the world size).
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

/// The MoE layer and expert a parameter tensor belongs to ("moe.i.deepspeed_moe.experts.
/// deepspeed_experts.e.weight"), or −1 for the others.
struct ExpertOf {
    int layer = -1, expert = -1;
};
ExpertOf expert_of(std::string_view name) {
    constexpr std::string_view tag = ".deepspeed_moe.experts.deepspeed_experts.";
    const auto at = name.find(tag);
    if (at == std::string_view::npos) return {};
    return {std::stoi(std::string(name.substr(4))), std::stoi(std::string(name.substr(at + tag.size())))};
}

/// Relative error, with a floor (1e-2, as the ZeRO tests) for values that cancel to near zero.
double relative(double got, double expected, double floor = 1e-2) {
    return std::abs(got - expected) / std::max(std::abs(expected), floor);
}

/// One forward and backward of the MoE layer on each of `ranks` ranks (rank r's own tokens
/// and output gradient): all experts local versus split over `ep` ranks.
template <MoEMlp Mlp, std::size_t... Experts>
void check_layer(int ranks, int ep, MoESettings settings) {
    using Net = Layer<Mlp, Experts...>;
    auto params = uniform(Net::param_count, 5, 0.5f);
    for (const auto& p : Net::parameters)  // larger gates: routing is decisive, tokens get dropped
        if (p.name().find("gate.wg") != std::string_view::npos)
            for (std::size_t i = 0; i < p.numel(); ++i) params[p.offset + i] *= 4.0f;

    struct Result {
        std::vector<float> y, dw;
    };
    // Rank r runs batch − r tokens (ranks need not agree on the batch), then the same
    // tokens again in eval mode (eval_capacity_factor).
    const auto run = [&](int rank, ds::comm::ExpertExchange* group) {
        Net net(batch);
        MoESettings s = settings;
        s.ep_size = group ? group->size() : 1;
        net.configure_moe(s, group);
        const std::size_t b = batch - static_cast<std::size_t>(rank);
        const auto x = uniform(b * M, 100 + static_cast<std::uint64_t>(rank));
        auto dy = uniform(b * M, 200 + static_cast<std::uint64_t>(rank));
        Result r;
        const float* y = net.forward(x.data(), b, params.data());
        r.y.assign(y, y + b * M);
        r.dw.assign(Net::param_count, 0.0f);
        net.backward(dy.data(), params.data(), r.dw.data());
        net.set_training(false);
        const float* y_eval = net.forward(x.data(), b, params.data());
        r.y.insert(r.y.end(), y_eval, y_eval + b * M);
        return r;
    };
    std::vector<Result> local(static_cast<std::size_t>(ranks));
    for (int r = 0; r < ranks; ++r) local[static_cast<std::size_t>(r)] = run(r, nullptr);

    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& world) {
        ds::comm::ExpertParallelGroup<ds::comm::Threads> group(world, ep);
        const Result got = run(world.rank(), &group);
        const Result& want = local[static_cast<std::size_t>(world.rank())];
        INFO("rank " << world.rank() << " of " << ranks << ", ep_size " << ep);
        double worst = 0;
        for (std::size_t i = 0; i < got.y.size(); ++i) worst = std::max(worst, relative(got.y[i], want.y[i]));
        CHECK(worst < 1e-5);  // the experts' GEMMs run on other row counts: float rounding differs
        // Expert e's gradient lives on EP rank e / (E/ep) only, as the sum over that rank's
        // EP group; everything else is this rank's own.
        const int first_in_group = world.rank() / ep * ep;
        constexpr std::array<std::size_t, sizeof...(Experts)> experts{Experts...};
        for (const auto& p : Net::parameters) {
            const auto [layer, e] = expert_of(p.name());
            INFO(p.name());
            if (e < 0) {  // the first Linear's gradient checks the MoE layers' input gradient
                for (std::size_t i = 0; i < p.numel(); ++i)
                    CHECK(relative(got.dw[p.offset + i], want.dw[p.offset + i]) < 1e-5);
                continue;
            }
            const int owner = e / static_cast<int>(experts[static_cast<std::size_t>(layer)] / static_cast<std::size_t>(ep));
            for (std::size_t i = 0; i < p.numel(); ++i) {
                double expected = 0;
                if (owner == world.rank() % ep)
                    for (int r = first_in_group; r < first_in_group + ep; ++r)
                        expected += local[static_cast<std::size_t>(r)].dw[p.offset + i];
                CHECK(relative(got.dw[p.offset + i], expected) < 1e-5);
            }
        }
        // The all-to-alls: tokens there and back in the forward, gradients in the backward,
        // each the whole [E, C, M] buffer per layer, plus the row counts.
        CHECK(group.counters()[ds::comm::Op::all_to_all] > 0);
    });
}

// --- engines: ep_size 1 against ep_size > 1 ----------------------------------------------

template <MoEMlp Mlp, std::size_t... Experts>
using EngineNet = cifar10::MoENet<1, 16, Mlp, Experts...>;
constexpr std::size_t image = 256, micro = 8;

/// What an engine run leaves to compare: the gradient summed over the ranks after the
/// first backward (stages 0-1 hold each rank's own, stage 2 this rank's averaged shard),
/// the global norm of every step and the parameters after the last.
struct EngineRun {
    std::vector<float> gradient;
    std::vector<double> norms;
    std::vector<float> params;
};

template <int Stage, class Net>
EngineRun run_engine(ds::comm::Threads& comm, int ep, MoESettings settings, int steps) {
    ds::Config cfg{.train_batch_size = static_cast<std::int64_t>(micro) * comm.size(),
                   .optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 0.05, .momentum = 0.9}},
                   .gradient_clipping = 1.0,
                   .zero_allow_untested_optimizer = true,
                   .seed = 7};
    cfg.zero_optimization.stage = Stage;
    ds::Engine<Net, ds::SGD<>, ds::Zero<Stage>, ds::FP32, ds::Cpu, ds::comm::Threads> engine(cfg, comm);
    settings.ep_size = ep;
    engine.configure_moe(settings);
    const auto data = ds::data::make_synthetic(micro * static_cast<std::size_t>(comm.size() * steps), 1, 16, 16, 10, 9);
    std::vector<float> x(micro * image);
    std::vector<std::int32_t> labels(micro);
    EngineRun run;
    for (int step = 0; step < steps; ++step) {
        const std::size_t first = (static_cast<std::size_t>(step * comm.size()) + static_cast<std::size_t>(comm.rank())) * micro;
        for (std::size_t j = 0; j < micro; ++j) labels[j] = data.get(first + j, x.data() + j * image);
        const auto out = engine.forward(x);
        engine.backward(ds::nn::CrossEntropyLoss{10}(out, labels));
        if (step == 0) {
            const auto g = engine.gradients();
            run.gradient.assign(g.begin(), g.end());
            if (Stage < 2) comm.all_reduce(run.gradient.data(), run.gradient.size(), ds::comm::ReduceOp::sum);
        }
        engine.step();
        run.norms.push_back(engine.get_global_grad_norm());
    }
    run.params = engine.full_parameters();
    return run;
}

/// The acceptance check of expert parallelism: on `ranks` ranks, ep_size `ep` gives the
/// gradients, norms and trained parameters that ep_size 1 gives, at ZeRO stage `Stage`.
template <int Stage, class Net>
void check_engines_agree(int ranks, int ep, MoESettings settings) {
    constexpr int steps = 3;
    std::vector<EngineRun> dense(static_cast<std::size_t>(ranks)), split(static_cast<std::size_t>(ranks));
    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& comm) {
        dense[static_cast<std::size_t>(comm.rank())] = run_engine<Stage, Net>(comm, 1, settings, steps);
    });
    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& comm) {
        split[static_cast<std::size_t>(comm.rank())] = run_engine<Stage, Net>(comm, ep, settings, steps);
    });
    for (std::size_t r = 0; r < static_cast<std::size_t>(ranks); ++r) {
        INFO("ZeRO stage " << Stage << ", rank " << r << " of " << ranks << ", ep_size " << ep);
        const EngineRun &a = dense[r], &b = split[r];
        REQUIRE(a.gradient.size() == b.gradient.size());
        std::size_t nonzero = 0;
        double worst = 0;
        for (std::size_t i = 0; i < a.gradient.size(); ++i) {
            worst = std::max(worst, relative(b.gradient[i], a.gradient[i]));
            nonzero += a.gradient[i] != 0.0f;
        }
        CHECK(nonzero > 0);
        CHECK(worst < 1e-5);
        for (std::size_t s = 0; s < a.norms.size(); ++s) CHECK(relative(b.norms[s], a.norms[s]) < 1e-5);
        worst = 0;
        for (std::size_t i = 0; i < a.params.size(); ++i) worst = std::max(worst, relative(b.params[i], a.params[i]));
        CHECK(worst < 1e-5);
    }
}

}  // namespace

TEST_SUITE("moe") {

TEST_CASE_TEMPLATE("expert parallelism: engines at ZeRO stages 0-2 train alike with ep_size 1 and ep_size > 1", Stage,
                   std::integral_constant<int, 0>, std::integral_constant<int, 1>, std::integral_constant<int, 2>) {
    const MoESettings example{.k = 1, .min_capacity = 0, .noisy_gate_policy = NoisyGate::rsample};
    check_engines_agree<Stage::value, EngineNet<MoEMlp::standard, 2>>(2, 2, example);
    check_engines_agree<Stage::value, EngineNet<MoEMlp::residual, 2, 4>>(4, 2, example);
    check_engines_agree<Stage::value, EngineNet<MoEMlp::residual, 2, 4>>(2, 2, MoESettings{.k = 2, .min_capacity = 1});
}


TEST_CASE("expert parallelism: an MoE layer over ep ranks computes what it computes with every expert local") {
    const MoESettings top1{.k = 1, .min_capacity = 0, .noisy_gate_policy = NoisyGate::rsample};
    const MoESettings top2{.k = 2, .eval_capacity_factor = 2.0, .min_capacity = 1};
    const MoESettings no_drop{.k = 1, .min_capacity = 0, .drop_tokens = false};
    SUBCASE("top-1, experts [2, 4], ep 2 on 2 ranks") { check_layer<MoEMlp::standard, 2, 4>(2, 2, top1); }
    SUBCASE("top-2 PR-MoE, experts [2, 4], ep 2 on 4 ranks (two groups)") { check_layer<MoEMlp::residual, 2, 4>(4, 2, top2); }
    SUBCASE("top-1, experts [4, 4], ep 4 on 4 ranks") { check_layer<MoEMlp::standard, 4, 4>(4, 4, top1); }
    SUBCASE("top-1, experts [8], ep 2 on 2 ranks: 4 local experts") { check_layer<MoEMlp::standard, 8>(2, 2, top1); }
    SUBCASE("top-1 without dropping, experts [8], ep 2 on 4 ranks") { check_layer<MoEMlp::standard, 8>(4, 2, no_drop); }
}

}  // TEST_SUITE
