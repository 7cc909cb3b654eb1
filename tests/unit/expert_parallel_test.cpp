// Expert parallelism on the threaded communicator: with ep_size > 1 an MoE layer computes
// what it computes with every expert local (outputs, input gradients, and the expert
// gradients summed over the ranks), and engines at ZeRO stages 0-2 train alike with
// ep_size 1 and ep_size 2 or 4 — the divisor rule of SPEC §10.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
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
    const auto run = [&](int rank, ds::comm::ExpertExchange* group) {
        Net net(batch);
        MoESettings s = settings;
        s.ep_size = group ? group->size() : 1;
        net.configure_moe(s, group);
        const auto x = uniform(batch * M, 100 + static_cast<std::uint64_t>(rank));
        auto dy = uniform(batch * M, 200 + static_cast<std::uint64_t>(rank));
        Result r;
        const float* y = net.forward(x.data(), batch, params.data());
        r.y.assign(y, y + batch * M);
        r.dw.assign(Net::param_count, 0.0f);
        net.backward(dy.data(), params.data(), r.dw.data());
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

}  // namespace

TEST_SUITE("moe") {

TEST_CASE("expert parallelism: an MoE layer over ep ranks computes what it computes with every expert local") {
    const MoESettings top1{.k = 1, .min_capacity = 0, .noisy_gate_policy = NoisyGate::rsample};
    const MoESettings top2{.k = 2, .min_capacity = 1};
    SUBCASE("top-1, experts [2, 4], ep 2 on 2 ranks") { check_layer<MoEMlp::standard, 2, 4>(2, 2, top1); }
    SUBCASE("top-2 PR-MoE, experts [2, 4], ep 2 on 4 ranks (two groups)") { check_layer<MoEMlp::residual, 2, 4>(4, 2, top2); }
    SUBCASE("top-1, experts [4, 4], ep 4 on 4 ranks") { check_layer<MoEMlp::standard, 4, 4>(4, 4, top1); }
}

}  // TEST_SUITE
