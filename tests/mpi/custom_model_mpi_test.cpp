// A user's own layer and a residual block, and a token model with tied weights
// (tests/common/custom_model.hpp), trained over real MPI at every ZeRO stage (mpirun -np 1,
// 2 and 4 in CTest; stage 2 with reductions in flight, stage 3 with prefetched gathers):
// each rank checks its engine against stage 0 on one rank (comm::Single), same batches.
#define DOCTEST_CONFIG_IMPLEMENT
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/mpi.hpp>
#include <ds/engine/engine.hpp>

#include "common/custom_model.hpp"

namespace {

using custom_model::Net;
constexpr int steps = 4;

ds::Config config(int stage) {
    ds::Config c{.train_batch_size = static_cast<std::int64_t>(custom_model::global_batch),
                 .optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 0.1, .momentum = 0.9}},
                 .gradient_clipping = 1.0,
                 .zero_allow_untested_optimizer = true,
                 .seed = 5};
    c.zero_optimization.stage = stage;
    c.zero_optimization.overlap_comm = true;                     // stage 2: reductions in flight
    c.zero_optimization.stage3_param_persistence_threshold = 0;  // stage 3: every layer gathered, the next prefetched
    return c;
}

/// SGD with momentum is linear in the gradient: stages and ranks agree to float rounding.
/// `train(engine)` runs the steps.
template <class Model, int Stage, class Train>
void check(const Train& train) {
    ds::Engine<Model, ds::SGD<>, ds::Zero<0>> reference(config(0));
    train(reference);
    const auto expected = reference.full_parameters();

    ds::Engine<Model, ds::SGD<>, ds::Zero<Stage>, ds::FP32, ds::Cpu, ds::comm::Mpi> engine(config(Stage));
    train(engine);
    const auto got = engine.full_parameters();
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, std::abs(got[i] - expected[i]) / std::max(std::abs(double{expected[i]}), 1e-2));
    INFO("stage " << Stage << ", rank " << engine.global_rank() << " of " << engine.world_size());
    CHECK(worst < 1e-5);
    CHECK(engine.optimizer().step_count() == steps);
}

}  // namespace

TEST_CASE("a user's layer and a residual block train over MPI at every stage like stage 0 on one rank") {
    const auto data = custom_model::make_batches(steps, 17);
    const auto train = [&](auto& engine) { custom_model::train(engine, data, 0, steps); };
    check<Net, 0>(train);
    check<Net, 1>(train);
    check<Net, 2>(train);
    check<Net, 3>(train);
}

TEST_CASE("tied weights (an embedding that is also the output projection) over MPI at every stage") {
    const auto data = custom_model::make_token_batches(custom_model::global_batch * steps, 5);
    const auto train = [&](auto& engine) { custom_model::train_tokens(engine, data, steps); };
    check<custom_model::TiedNet, 0>(train);
    check<custom_model::TiedNet, 1>(train);
    check<custom_model::TiedNet, 2>(train);
    check<custom_model::TiedNet, 3>(train);
}

#include "common/mpi_test_main.hpp"
