// ZeRO's laws on the threaded communicator: every stage on N ranks trains exactly like
// stage 0 on one rank (same global batch), moves the elements the ZeRO paper predicts and
// holds the bytes per rank the partitioning implies.
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/threads.hpp>
#include <ds/engine/engine.hpp>

#include "common/small_net.hpp"

namespace {

using small_net::Net, small_net::global_batch, small_net::input;

/// SGD with momentum is linear in the gradient, so summation-order noise stays at float
/// rounding: the strict law. Adam divides by sqrt(v), which magnifies noise in gradients
/// near zero up to ~lr; it is checked with an absolute bound instead.
ds::Config config(int stage, std::int64_t gas = 1, ds::OptimizerType type = ds::OptimizerType::SGD) {
    ds::Config c{.train_batch_size = static_cast<std::int64_t>(global_batch),
                 .gradient_accumulation_steps = gas,
                 .optimizer = {.type = type, .params = {.lr = 0.05, .weight_decay = 0.01}},
                 .gradient_clipping = 0.5,
                 .zero_allow_untested_optimizer = true,
                 .seed = 3};
    if (type == ds::OptimizerType::SGD) c.optimizer.params.momentum = 0.9;
    if (type == ds::OptimizerType::Adam) c.optimizer.params.lr = 1e-2;
    c.zero_optimization.stage = stage;
    return c;
}

template <int Stage, class Opt = ds::SGD<>, class P = ds::FP32>
using ThreadedEngine = ds::Engine<Net, Opt, ds::Zero<Stage>, P, ds::Cpu, ds::comm::Threads>;

/// Relative error (with a floor of `floor` in the denominator) of `got` against `expected`.
template <int Stage, class Opt = ds::SGD<>, class P = ds::FP32>
void check_matches_single_rank(int ranks, ds::Config cfg, const char* what, double tolerance = 1e-6,
                               double floor = 1e-2) {
    constexpr int steps = 3;
    const auto data = small_net::make_batches(steps, 21);
    ds::Config reference_cfg = cfg;
    reference_cfg.zero_optimization.stage = 0;
    ds::Engine<Net, Opt, ds::Zero<0>, P> reference(reference_cfg);
    small_net::train(reference, data, 0, steps);
    const auto expected = reference.full_parameters();
    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& comm) {
        ThreadedEngine<Stage, Opt, P> engine(cfg, comm);
        small_net::train(engine, data, 0, steps);
        const auto got = engine.full_parameters();
        INFO(what << ": stage " << Stage << " on " << ranks << " ranks, rank " << comm.rank());
        CHECK(engine.optimizer().step_count() == engine.global_steps());
        std::size_t worst = 0;
        double worst_error = 0;
        for (std::size_t i = 0; i < got.size(); ++i) {
            const double error = std::abs(got[i] - expected[i]) / std::max<double>(std::abs(expected[i]), floor);
            if (error > worst_error) worst_error = error, worst = i;
        }
        INFO("worst parameter " << worst << ": " << got[worst] << " vs " << expected[worst]);
        CHECK(worst_error < tolerance);
    });
}

}  // namespace

TEST_SUITE("zero") {

TEST_CASE_TEMPLATE("every stage on 1, 2 and 4 ranks trains like stage 0 on one rank", Stage,
                   std::integral_constant<int, 0>, std::integral_constant<int, 1>, std::integral_constant<int, 2>,
                   std::integral_constant<int, 3>) {
    for (int ranks : {1, 2, 4}) check_matches_single_rank<Stage::value>(ranks, config(Stage::value), "SGD");
    for (int ranks : {2, 4}) check_matches_single_rank<Stage::value>(ranks, config(Stage::value, 2), "SGD, GAS 2");
    // Adam: |difference| below 1e-3 · lr.
    check_matches_single_rank<Stage::value, ds::Adam<>>(4, config(Stage::value, 1, ds::OptimizerType::Adam), "Adam",
                                                        1e-5, 1.0);
}

/// The config of `config(stage)` with `P`'s precision switched on (fp16: dynamic scaling
/// from 2^8, so the first steps are not skipped).
template <class P>
ds::Config mixed(int stage, std::int64_t gas = 1) {
    ds::Config c = config(stage, gas);
    if constexpr (std::is_same_v<P, ds::BF16>) c.bf16.enabled = true;
    if constexpr (P::scales_loss) {
        c.fp16.enabled = true;
        c.fp16.initial_scale_power = 8;
    }
    return c;
}

// Mixed precision: the reference is stage 0 of the same precision on one rank. Ranks
// round their partial gradients to 2 bytes before the reduction sums them, so the law
// holds to the dtype's rounding: bf16 (8 significant bits) within 5e-3 relative, fp16
// (11 bits) within 5e-4, with a floor of 0.1 against near-zero weights (measured worst:
// 2.3e-3 and 2e-4 after 3 SGD steps).
TEST_CASE_TEMPLATE("bf16 and fp16: every stage on 2 and 4 ranks trains like stage 0 on one rank", P, ds::BF16,
                   ds::FP16<>) {
    const double tolerance = std::is_same_v<P, ds::BF16> ? 5e-3 : 5e-4;
    for (int ranks : {1, 2, 4}) {
        check_matches_single_rank<0, ds::SGD<>, P>(ranks, mixed<P>(0), "stage 0", tolerance, 0.1);
        check_matches_single_rank<1, ds::SGD<>, P>(ranks, mixed<P>(1), "stage 1", tolerance, 0.1);
        check_matches_single_rank<2, ds::SGD<>, P>(ranks, mixed<P>(2), "stage 2", tolerance, 0.1);
        check_matches_single_rank<3, ds::SGD<>, P>(ranks, mixed<P>(3), "stage 3", tolerance, 0.1);
    }
    check_matches_single_rank<2, ds::SGD<>, P>(4, mixed<P>(2, 2), "stage 2, GAS 2", tolerance, 0.1);
}

TEST_CASE("stage 2 with buckets smaller than a layer, stage 3 with forced gathers") {
    ds::Config small_buckets = config(2);
    small_buckets.zero_optimization.reduce_bucket_size = 500;  // conv2 and fc layers exceed it
    check_matches_single_rank<2>(4, small_buckets, "500-element buckets");
    small_buckets.zero_optimization.overlap_comm = true;  // reductions left in flight, two at most
    check_matches_single_rank<2>(4, small_buckets, "500-element buckets, overlap_comm");
    small_buckets.zero_optimization.contiguous_gradients = false;  // each layer reduced from its own buffer
    check_matches_single_rank<2>(4, small_buckets, "contiguous_gradients false");
    ds::Config gathers = config(3);
    gathers.zero_optimization.stage3_param_persistence_threshold = 0;
    check_matches_single_rank<3>(4, gathers, "no persistent parameters, next layer prefetched");
    gathers.zero_optimization.overlap_comm = false;
    check_matches_single_rank<3>(4, gathers, "no persistent parameters, no prefetch");
    gathers.zero_optimization.reduce_scatter = false;
    gathers.gradient_predivide_factor = 2.0;
    check_matches_single_rank<3>(4, gathers, "stage 3 reduce_scatter false");
    for (int stage : {1, 2}) {
        ds::Config all_reduce = config(stage);
        all_reduce.zero_optimization.reduce_scatter = false;
        all_reduce.gradient_predivide_factor = 2.0;
        all_reduce.zero_optimization.reduce_bucket_size = 700;
        if (stage == 1) check_matches_single_rank<1>(4, all_reduce, "reduce_scatter false");
        else check_matches_single_rank<2>(4, all_reduce, "reduce_scatter false");
    }
    ds::Config prescale = config(0);
    prescale.prescale_gradients = true;
    check_matches_single_rank<0>(2, prescale, "prescaled");
    ds::Config predivide = config(0);
    predivide.gradient_predivide_factor = 4.0;
    check_matches_single_rank<0>(4, predivide, "predivide factor 4");
}

TEST_CASE("elements communicated per step: 2Ψ for stages 0-2, 3Ψ for stage 3 (plus one norm scalar)") {
    const auto data = small_net::make_batches(1, 21);
    // 4 ranks: Ψ = 15,116 is padded to 15,120 (a multiple of 2·dp) at stages 1-2.
    ds::comm::run_ranks(4, [&](ds::comm::Threads& comm) {
        using ds::comm::Op;
        auto one_step = [&](auto& engine) {
            const auto before = engine.communicator().counters();
            small_net::train(engine, data, 0, 1);
            const auto& after = engine.communicator().counters();
            std::array<std::uint64_t, 5> delta{};
            for (std::size_t i = 0; i < 5; ++i) delta[i] = after.elements[i] - before.elements[i];
            return delta;
        };
        auto at = [](const auto& d, Op op) { return d[static_cast<std::size_t>(op)]; };
        {
            ThreadedEngine<0> e(config(0), comm);
            const auto d = one_step(e);
            CHECK(e.padded_params() == Net::param_count);
            CHECK(at(d, Op::all_reduce) == 2 * Net::param_count);
            CHECK(at(d, Op::reduce_scatter) + at(d, Op::all_gather) + at(d, Op::broadcast) == 0);
        }
        for (int stage : {1, 2}) {
            auto check_stage = [&](auto& e) {
                const auto d = one_step(e);
                const std::size_t psi = e.padded_params();
                CHECK(psi == ds::FlatPartition(Net::param_count, 4).padded);
                CHECK(psi > Net::param_count);
                CHECK(at(d, Op::reduce_scatter) == psi);
                CHECK(at(d, Op::all_gather) == psi);
                CHECK(at(d, Op::all_reduce) == 2);  // the squared norm
            };
            if (stage == 1) {
                ThreadedEngine<1> e(config(1), comm);
                check_stage(e);
            } else {
                ThreadedEngine<2> e(config(2), comm);
                check_stage(e);
            }
        }
        ds::Config forced = config(3);
        forced.zero_optimization.stage3_param_persistence_threshold = 0;
        ThreadedEngine<3> e(forced, comm);
        const auto d = one_step(e);
        const std::size_t psi = e.padded_params();
        INFO("all_gather " << at(d, Op::all_gather) << " psi " << psi);
        CHECK(at(d, Op::all_gather) == 2 * psi);  // before each layer's forward and backward
        CHECK(at(d, Op::reduce_scatter) == psi);
        CHECK(at(d, Op::all_reduce) == 2);
    });
}

TEST_CASE("bf16 moves the same elements per step as fp32: 2Ψ at stage 2, 3Ψ at stage 3") {
    const auto data = small_net::make_batches(1, 21);
    ds::comm::run_ranks(4, [&](ds::comm::Threads& comm) {
        using ds::comm::Op;
        auto moved = [&](auto& engine) {
            const auto before = engine.communicator().counters();
            small_net::train(engine, data, 0, 1);
            const auto& after = engine.communicator().counters();
            return std::array<std::uint64_t, 3>{after[Op::reduce_scatter] - before[Op::reduce_scatter],
                                                after[Op::all_gather] - before[Op::all_gather],
                                                after[Op::all_reduce] - before[Op::all_reduce]};
        };
        ThreadedEngine<2, ds::SGD<>, ds::BF16> s2(mixed<ds::BF16>(2), comm);
        const auto d2 = moved(s2);
        CHECK(d2[0] == s2.padded_params());
        CHECK(d2[1] == s2.padded_params());
        ds::Config forced = mixed<ds::BF16>(3);
        forced.zero_optimization.stage3_param_persistence_threshold = 0;
        ThreadedEngine<3, ds::SGD<>, ds::BF16> s3(forced, comm);
        const auto d3 = moved(s3);
        CHECK(d3[0] == s3.padded_params());
        CHECK(d3[1] == 2 * s3.padded_params());
        CHECK(d3[2] == 2);  // the squared norm, as in fp32
    });
}

TEST_CASE("fp32 bytes per rank shrink as each stage partitions (N = 4)") {
    ds::comm::run_ranks(4, [](ds::comm::Threads& comm) {
        const std::size_t psi = Net::param_count, f = sizeof(float);
        const ds::FlatPartition flat(psi, 4);
        const auto adam = ds::OptimizerType::Adam;
        ThreadedEngine<0, ds::Adam<>> s0(config(0, 1, adam), comm);
        ThreadedEngine<1, ds::Adam<>> s1(config(1, 1, adam), comm);
        ThreadedEngine<2, ds::Adam<>> s2(config(2, 1, adam), comm);
        ThreadedEngine<3, ds::Adam<>> s3(config(3, 1, adam), comm);
        const auto m0 = s0.memory_report(), m1 = s1.memory_report(), m2 = s2.memory_report(),
                   m3 = s3.memory_report();
        CHECK(m0.parameters == f * psi);
        CHECK(m0.gradients == f * psi);
        CHECK(m0.optimizer_states == 2 * f * psi);
        CHECK(m1.optimizer_states == 2 * f * flat.shard);  // states partitioned
        CHECK(m1.parameters == f * flat.padded);
        CHECK(m2.gradients == f * flat.shard);             // gradients partitioned
        const std::size_t shard3 = s3.padded_params() / 4;
        CHECK(m3.parameters == f * shard3);                // parameters partitioned
        CHECK(m3.gradients == f * shard3);
        CHECK(m3.optimizer_states == 2 * f * shard3);
    });
}

/// The ZeRO paper's model-state bytes for mixed-precision Adam (K = 12): 16Ψ, 4Ψ + 12Ψ/N,
/// 2Ψ + 14Ψ/N, 16Ψ/N, with Ψ as each stage pads it. bf16 at stage 0 accumulates gradients
/// in fp32 as DeepSpeed's BF16_Optimizer does: 18Ψ there.
TEST_CASE_TEMPLATE("mixed-precision bytes per rank are the ZeRO paper's (N = 4)", P, ds::BF16, ds::FP16<>) {
    ds::comm::run_ranks(4, [](ds::comm::Threads& comm) {
        auto adam = [](int stage) {
            ds::Config c = mixed<P>(stage);
            c.optimizer.type = ds::OptimizerType::Adam;
            c.optimizer.params.momentum = 0.0;
            return c;
        };
        auto states = [](const ds::MemoryReport& m) {
            return m.parameters + m.gradients + m.master_weights + m.optimizer_states;
        };
        const std::size_t psi = Net::param_count, n = 4;
        const ds::FlatPartition flat(psi, n);
        ThreadedEngine<0, ds::Adam<>, P> s0(adam(0), comm);
        ThreadedEngine<1, ds::Adam<>, P> s1(adam(1), comm);
        ThreadedEngine<2, ds::Adam<>, P> s2(adam(2), comm);
        ThreadedEngine<3, ds::Adam<>, P> s3(adam(3), comm);
        const auto m0 = s0.memory_report();
        CHECK(m0.parameters == 2 * psi);
        CHECK(m0.master_weights == 4 * psi);
        CHECK(m0.optimizer_states == 8 * psi);
        CHECK(m0.gradients == (std::is_same_v<P, ds::BF16> ? 4 : 2) * psi);
        CHECK(states(m0) == (std::is_same_v<P, ds::BF16> ? 18 : 16) * psi);
        const std::size_t p1 = flat.padded;
        CHECK(states(s1.memory_report()) == 4 * p1 + 12 * p1 / n);
        CHECK(s1.memory_report().gradients == 2 * p1);
        CHECK(states(s2.memory_report()) == 2 * p1 + 14 * p1 / n);
        CHECK(s2.memory_report().gradients == 2 * p1 / n);
        const std::size_t p3 = s3.padded_params();
        CHECK(states(s3.memory_report()) == 16 * p3 / n);
        CHECK(s3.memory_report().parameters == 2 * p3 / n);
        // The work buffers are reported apart, never folded into the model states.
        CHECK(s3.memory_report().buffers > 0);
    });
}

}  // TEST_SUITE
