// A user's own layer and a residual block (tests/common/custom_model.hpp): the concepts that
// admit them, their parameter names, their gradients against a float64 re-computation by
// finite differences, and training at every ZeRO stage and precision on 1 and 2 ranks equal
// to stage 0.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/threads.hpp>
#include <ds/engine/engine.hpp>
#include <ds/io/model_weights.hpp>
#include <ds/nn/moe.hpp>

#include "cifar10/net.hpp"
#include "common/custom_model.hpp"

namespace {

using custom_model::Net, custom_model::inputs, custom_model::hidden, custom_model::classes;

// --- the concepts ------------------------------------------------------------------------

struct NoBackward {  // forward only: not a layer
    template <class Input>
    struct Bound {
        using input_shape = Input;
        using output_shape = Input;
        static constexpr std::array<ds::nn::ParamSpec, 0> params{};
        static void init(float*, ds::Rng&) {}
        void reserve(std::size_t) {}
        void forward(const float*, float*, std::size_t, const float*) {}
    };
};
static_assert(!ds::layer<NoBackward, ds::nn::Features<2>>);
static_assert(!ds::layer<int, ds::nn::Features<2>>);
static_assert(ds::layer<ds::nn::Residual<ds::nn::Linear<4, 4>, ds::nn::ReLU>, ds::nn::Features<4>>);
static_assert(ds::layer<ds::nn::MoE<ds::nn::Linear<4, 4>, ds::nn::MoEMlp::standard, 2>, ds::nn::Features<4>>);
static_assert(ds::model<cifar10::CifarNet>);
static_assert(ds::model<cifar10::MoENet<3, 32, ds::nn::MoEMlp::residual, 2, 4>>);
static_assert(!ds::model<int>);
static_assert(!ds::model<ds::nn::Linear<2, 2>>);

// --- the same Net in float64, written without the library ----------------------------------

/// The mean cross-entropy of `Net` with parameters `p` (laid out as Net::parameters).
double reference_loss(const std::vector<double>& p, const float* x, const std::int32_t* labels, std::size_t batch) {
    std::size_t at = 0;
    const auto take = [&](std::size_t n) {
        const double* q = p.data() + at;
        at += n;
        return q;
    };
    constexpr std::size_t h = hidden;
    const double *embed_w = take(h * inputs), *embed_b = take(h), *act_w = take(h), *act_b = take(h);
    const double *lin1_w = take(h * h), *lin1_b = take(h), *tanh_w = take(h), *tanh_b = take(h);
    const double *lin2_w = take(h * h), *lin2_b = take(h), *head_w = take(classes * h), *head_b = take(classes);
    const auto linear = [](const double* w, const double* b, const double* in, std::size_t n_in, double* out,
                           std::size_t n_out) {
        for (std::size_t o = 0; o < n_out; ++o) {
            out[o] = b[o];
            for (std::size_t i = 0; i < n_in; ++i) out[o] += w[o * n_in + i] * in[i];
        }
    };
    double total = 0;
    for (std::size_t s = 0; s < batch; ++s) {
        double in[inputs], a[h], t[h], u[h], v[h], r[h], z[classes];
        for (std::size_t i = 0; i < inputs; ++i) in[i] = x[s * inputs + i];
        linear(embed_w, embed_b, in, inputs, a, h);
        for (std::size_t i = 0; i < h; ++i) t[i] = std::tanh(act_w[i] * a[i] + act_b[i]);
        linear(lin1_w, lin1_b, t, h, u, h);
        for (std::size_t i = 0; i < h; ++i) v[i] = std::tanh(tanh_w[i] * u[i] + tanh_b[i]);
        linear(lin2_w, lin2_b, v, h, r, h);
        for (std::size_t i = 0; i < h; ++i) r[i] += t[i];  // the residual
        linear(head_w, head_b, r, h, z, classes);
        const double top = *std::max_element(z, z + classes);
        double sum = 0;
        for (double zc : z) sum += std::exp(zc - top);
        total += top + std::log(sum) - z[labels[s]];
    }
    return total / static_cast<double>(batch);
}

// --- training at every stage ------------------------------------------------------------

constexpr int steps = 3;

template <class P>
ds::Config config(int stage) {
    ds::Config c{.train_batch_size = static_cast<std::int64_t>(custom_model::global_batch),
                 .optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 0.1, .momentum = 0.9}},
                 .gradient_clipping = 1.0,
                 .zero_allow_untested_optimizer = true,
                 .seed = 7};
    if constexpr (std::is_same_v<P, ds::BF16>) c.bf16.enabled = true;
    if constexpr (P::scales_loss) c.fp16.enabled = true, c.fp16.initial_scale_power = 8;
    c.zero_optimization.stage = stage;
    c.zero_optimization.stage3_param_persistence_threshold = 0;  // stage 3 gathers every layer, the block whole
    return c;
}

/// Stage `Stage` on `ranks` threads against stage 0 on one rank, same precision and batches.
template <int Stage, class P>
void check_matches_stage0(int ranks, double tolerance, double floor) {
    const auto data = custom_model::make_batches(steps, 11);
    ds::Engine<Net, ds::SGD<>, ds::Zero<0>, P> reference(config<P>(0));
    custom_model::train(reference, data, 0, steps);
    const auto expected = reference.full_parameters();
    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& comm) {
        ds::Engine<Net, ds::SGD<>, ds::Zero<Stage>, P, ds::Cpu, ds::comm::Threads> engine(config<P>(Stage), comm);
        custom_model::train(engine, data, 0, steps);
        const auto got = engine.full_parameters();
        double worst = 0;
        for (std::size_t i = 0; i < got.size(); ++i)
            worst = std::max(worst, std::abs(got[i] - expected[i]) / std::max(std::abs(double{expected[i]}), floor));
        INFO("stage " << Stage << " on " << ranks << " ranks, rank " << comm.rank());
        CHECK(worst < tolerance);
        CHECK(engine.optimizer().step_count() == steps);
    });
}

template <class P>
void check_every_stage(double tolerance, double floor) {
    for (int ranks : {1, 2}) {
        check_matches_stage0<0, P>(ranks, tolerance, floor);
        check_matches_stage0<1, P>(ranks, tolerance, floor);
        check_matches_stage0<2, P>(ranks, tolerance, floor);
        check_matches_stage0<3, P>(ranks, tolerance, floor);
    }
}

}  // namespace

TEST_SUITE("custom model") {

TEST_CASE("parameter names: a block's tensors below its name, names of any length") {
    constexpr std::string_view expected[] = {"embed.weight",   "embed.bias",   "act.weight",     "act.bias",
                                             "block.0.weight", "block.0.bias", "block.1.weight", "block.1.bias",
                                             "block.2.weight", "block.2.bias", "head.weight",    "head.bias"};
    REQUIRE(Net::parameters.size() == std::size(expected));
    std::size_t offset = 0;
    for (std::size_t i = 0; i < Net::parameters.size(); ++i) {
        CHECK(Net::parameters[i].name() == expected[i]);
        CHECK(Net::parameters[i].offset == offset);
        offset += Net::parameters[i].numel();
    }
    CHECK(offset == Net::param_count);
    // The block is one range: ZeRO-3 gathers its three layers' tensors together.
    CHECK(Net::layer_ranges[2].count == 2 * (hidden * hidden + hidden) + 2 * hidden);

    // DeepSpeed's MoE names pass 64 characters (they were cut there).
    using MoENet = cifar10::MoENet<3, 32, ds::nn::MoEMlp::standard, 2>;
    bool found = false;
    for (const auto& p : MoENet::parameters)
        found = found || p.name() == "moe_layer_list.0.deepspeed_moe.experts.deepspeed_experts.1.weight";
    CHECK(found);

    using Long = ds::nn::Sequential<ds::nn::Features<2>,
                                    ds::nn::Named<"a_module_whose_name_is_long_enough_that_its_tensors_pass_the_old_"
                                                  "limit_of_sixty_three_characters",
                                                  ds::nn::Linear<2, 2>>>;
    const std::string weight = std::string(Long::parameters[0].name());
    CHECK(weight.size() > 100);
    CHECK(weight.ends_with("characters.weight"));
    const std::vector<float> values{1, 2, 3, 4, 5, 6};
    const auto file = std::filesystem::temp_directory_path() / "dspp_long_names.safetensors";
    ds::io::save_weights<Long>(file, values);
    std::vector<float> back(values.size());
    ds::io::load_weights<Long>(file, back);
    CHECK(back == values);
    CHECK(ds::io::load_safetensors(file).tensors.contains(weight));
    std::filesystem::remove(file);
}

TEST_CASE("a user's layer and a residual block: gradients equal float64 finite differences") {
    constexpr std::size_t batch = 5;
    const auto data = custom_model::make_batches(1, 3);
    std::vector<float> params(Net::param_count), grads(Net::param_count, 0.0f);
    ds::Rng rng(5);
    Net::init(params.data(), rng);
    Net net(batch);
    const float* logits = net.forward(data.inputs.data(), batch, params.data());
    const auto loss = ds::nn::CrossEntropyLoss{classes}({logits, batch * classes}, {data.labels.data(), batch});
    net.backward(loss.grad_output.data(), params.data(), grads.data());

    std::vector<double> p(params.begin(), params.end());
    CHECK(loss.value == doctest::Approx(reference_loss(p, data.inputs.data(), data.labels.data(), batch)).epsilon(1e-5));
    constexpr double step = 1e-5;
    std::vector<double> numeric(p.size());
    double largest = 0;
    for (std::size_t i = 0; i < p.size(); ++i) {
        const double kept = p[i];
        p[i] = kept + step;
        const double up = reference_loss(p, data.inputs.data(), data.labels.data(), batch);
        p[i] = kept - step;
        const double down = reference_loss(p, data.inputs.data(), data.labels.data(), batch);
        p[i] = kept;
        numeric[i] = (up - down) / (2 * step);
        largest = std::max(largest, std::abs(numeric[i]));
    }
    REQUIRE(largest > 1e-2);
    for (const auto& tensor : Net::parameters)
        for (std::size_t i = tensor.offset; i < tensor.offset + tensor.numel(); ++i) {
            INFO(tensor.name() << "[" << i - tensor.offset << "]: " << grads[i] << " vs " << numeric[i]);
            CHECK(std::abs(grads[i] - numeric[i]) <= 1e-4 * largest);
        }

    // Law 1: a second backward adds the same gradient again.
    std::vector<float> once = grads;
    net.backward(loss.grad_output.data(), params.data(), grads.data());
    for (std::size_t i = 0; i < grads.size(); ++i) CHECK(grads[i] == doctest::Approx(2 * once[i]).epsilon(1e-6));
}

// SGD with momentum is linear in the gradient, so ranks and stages agree to float rounding
// in fp32; bf16 and fp16 round each rank's partial gradient before the sum (zero_test.cpp).
TEST_CASE("a user's layer and a residual block train at every stage on 1 and 2 ranks like stage 0") {
    SUBCASE("fp32") { check_every_stage<ds::FP32>(1e-5, 1e-2); }
    SUBCASE("bf16") { check_every_stage<ds::BF16>(5e-3, 0.1); }
    SUBCASE("fp16") { check_every_stage<ds::FP16<>>(5e-4, 0.1); }
}

}
