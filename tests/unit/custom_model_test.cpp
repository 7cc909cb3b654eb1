// A user's own layer and a residual block (tests/common/custom_model.hpp), and a token model
// (ids in, a loss per position): the concepts that admit them, their parameter names, their
// gradients against a float64 re-computation by finite differences, and training at every
// ZeRO stage and precision on 1 and 2 ranks equal to stage 0.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/threads.hpp>
#include <ds/engine/engine.hpp>
#include <ds/io/model_weights.hpp>
#include <ds/nn/embedding.hpp>
#include <ds/nn/moe.hpp>
#include <ds/nn/tied.hpp>
#include <ds/numeric/bf16.hpp>

#include "cifar10/net.hpp"
#include "common/custom_model.hpp"

namespace {

using custom_model::Net, custom_model::inputs, custom_model::hidden, custom_model::classes;
using custom_model::TokenNet, custom_model::TiedNet, custom_model::vocab, custom_model::width, custom_model::positions;
using custom_model::make_token_batches, custom_model::train_tokens;
static_assert(std::is_same_v<ds::Engine<TokenNet, ds::SGD<>, ds::Zero<0>, ds::BF16>::input_type, std::int32_t>);

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

/// Stage `Stage` on `ranks` threads against stage 0 on one rank, same precision and
/// batches: `train(engine)` runs the steps; `tweak(config)` sets the stage's options.
template <class Model, int Stage, class P, class Train, class Tweak = void (*)(ds::Config&)>
void check_matches_stage0(int ranks, double tolerance, double floor, const Train& train,
                          Tweak tweak = [](ds::Config&) {}) {
    ds::Engine<Model, ds::SGD<>, ds::Zero<0>, P> reference(config<P>(0));
    train(reference);
    const auto expected = reference.full_parameters();
    ds::Config cfg = config<P>(Stage);
    tweak(cfg);
    ds::comm::run_ranks(ranks, [&](ds::comm::Threads& comm) {
        ds::Engine<Model, ds::SGD<>, ds::Zero<Stage>, P, ds::Cpu, ds::comm::Threads> engine(cfg, comm);
        train(engine);
        const auto got = engine.full_parameters();
        double worst = 0;
        for (std::size_t i = 0; i < got.size(); ++i)
            worst = std::max(worst, std::abs(got[i] - expected[i]) / std::max(std::abs(double{expected[i]}), floor));
        INFO("stage " << Stage << " on " << ranks << " ranks, rank " << comm.rank());
        CHECK(worst < tolerance);
        CHECK(engine.optimizer().step_count() == steps);
    });
}

template <class Model, class P, class Train>
void check_every_stage(double tolerance, double floor, const Train& train) {
    for (int ranks : {1, 2}) {
        check_matches_stage0<Model, 0, P>(ranks, tolerance, floor, train);
        check_matches_stage0<Model, 1, P>(ranks, tolerance, floor, train);
        check_matches_stage0<Model, 2, P>(ranks, tolerance, floor, train);
        check_matches_stage0<Model, 3, P>(ranks, tolerance, floor, train);
    }
}

// --- a token model: ids in, a prediction per position out ---------------------------------

/// A block as the first layer (no input gradient wanted), then a head.
using BlockFirst = ds::nn::Sequential<ds::nn::Features<inputs>,
                                      ds::nn::Named<"block", ds::nn::Residual<ds::nn::Linear<inputs, inputs>,
                                                                              custom_model::ScaledTanh>>,
                                      ds::nn::Named<"head", ds::nn::Linear<inputs, classes>>>;

double reference_block_first_loss(const std::vector<double>& p, const float* x, const std::int32_t* labels,
                                  std::size_t batch) {
    const double *lin_w = p.data(), *lin_b = lin_w + inputs * inputs, *tanh_w = lin_b + inputs,
                 *tanh_b = tanh_w + inputs, *head_w = tanh_b + inputs, *head_b = head_w + classes * inputs;
    double total = 0;
    for (std::size_t s = 0; s < batch; ++s) {
        double r[inputs], z[classes];
        for (std::size_t o = 0; o < inputs; ++o) {
            double u = lin_b[o];
            for (std::size_t i = 0; i < inputs; ++i) u += lin_w[o * inputs + i] * x[s * inputs + i];
            r[o] = x[s * inputs + o] + std::tanh(tanh_w[o] * u + tanh_b[o]);
        }
        for (std::size_t c = 0; c < classes; ++c) {
            z[c] = head_b[c];
            for (std::size_t i = 0; i < inputs; ++i) z[c] += head_w[c * inputs + i] * r[i];
        }
        const double top = *std::max_element(z, z + classes);
        double sum = 0;
        for (double zc : z) sum += std::exp(zc - top);
        total += top + std::log(sum) - z[labels[s]];
    }
    return total / static_cast<double>(batch);
}

/// Checks `grads` (the library's, float) against central differences of `loss(p)` in float64.
template <class Model, class Loss>
void check_against_finite_differences(const std::vector<float>& params, const std::vector<float>& grads,
                                      const Loss& loss) {
    std::vector<double> p(params.begin(), params.end());
    constexpr double step = 1e-5;
    double largest = 0;
    std::vector<double> numeric(p.size());
    for (std::size_t i = 0; i < p.size(); ++i) {
        const double kept = p[i];
        p[i] = kept + step;
        const double up = loss(p);
        p[i] = kept - step;
        const double down = loss(p);
        p[i] = kept;
        numeric[i] = (up - down) / (2 * step);
        largest = std::max(largest, std::abs(numeric[i]));
    }
    REQUIRE(largest > 1e-2);
    for (const auto& tensor : Model::parameters)
        for (std::size_t i = tensor.offset; i < tensor.offset + tensor.numel(); ++i) {
            INFO(tensor.name() << "[" << i - tensor.offset << "]: " << grads[i] << " vs " << numeric[i]);
            CHECK(std::abs(grads[i] - numeric[i]) <= 1e-4 * largest);
        }
}

/// The mean cross-entropy of TokenNet (or, `tied`, TiedNet: the output projection is the
/// embedding, without bias) in float64, written without the library.
double reference_token_loss(const std::vector<double>& p, const std::int32_t* ids, const std::int32_t* targets,
                            std::size_t samples, bool tied = false) {
    constexpr std::size_t w = width;
    std::size_t at = 0;
    const auto take = [&](std::size_t n) {
        const double* q = p.data() + at;
        at += n;
        return q;
    };
    const double *wte = take(vocab * w), *lin1_w = take(w * w), *lin1_b = take(w), *tanh_w = take(positions * w),
                 *tanh_b = take(positions * w), *lin2_w = take(w * w), *lin2_b = take(w);
    const std::vector<double> no_bias(vocab, 0.0);
    const double* head_w = tied ? wte : take(vocab * w);
    const double* head_b = tied ? no_bias.data() : take(vocab);
    double total = 0;
    std::size_t counted = 0;
    for (std::size_t s = 0; s < samples; ++s)
        for (std::size_t t = 0; t < positions; ++t) {
            const std::size_t row = s * positions + t;
            double e[w], u[w], v[w], r[w], z[vocab];
            for (std::size_t c = 0; c < w; ++c) e[c] = wte[static_cast<std::size_t>(ids[row]) * w + c];
            for (std::size_t o = 0; o < w; ++o) {
                u[o] = lin1_b[o];
                for (std::size_t c = 0; c < w; ++c) u[o] += lin1_w[o * w + c] * e[c];
            }
            for (std::size_t c = 0; c < w; ++c) v[c] = std::tanh(tanh_w[t * w + c] * u[c] + tanh_b[t * w + c]);
            for (std::size_t o = 0; o < w; ++o) {
                r[o] = lin2_b[o] + e[o];  // the residual
                for (std::size_t c = 0; c < w; ++c) r[o] += lin2_w[o * w + c] * v[c];
            }
            if (targets[row] == -100) continue;
            double top = -1e300;
            for (std::size_t k = 0; k < vocab; ++k) {
                z[k] = head_b[k];
                for (std::size_t c = 0; c < w; ++c) z[k] += head_w[k * w + c] * r[c];
                top = std::max(top, z[k]);
            }
            double sum = 0;
            for (double zk : z) sum += std::exp(zk - top);
            total += top + std::log(sum) - z[targets[row]];
            ++counted;
        }
    return total / static_cast<double>(counted);
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
    const auto file = std::filesystem::temp_directory_path() /
                      ("dspp_long_names_" + std::to_string(std::random_device{}()) + ".safetensors");
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

    const auto reference = [&](const std::vector<double>& p) {
        return reference_loss(p, data.inputs.data(), data.labels.data(), batch);
    };
    CHECK(loss.value == doctest::Approx(reference({params.begin(), params.end()})).epsilon(1e-5));
    check_against_finite_differences<Net>(params, grads, reference);

    // Law 1: a second backward adds the same gradient again.
    std::vector<float> once = grads;
    net.backward(loss.grad_output.data(), params.data(), grads.data());
    for (std::size_t i = 0; i < grads.size(); ++i) CHECK(grads[i] == doctest::Approx(2 * once[i]).epsilon(1e-6));
}

// SGD with momentum is linear in the gradient, so ranks and stages agree to float rounding
// in fp32; bf16 and fp16 round each rank's partial gradient before the sum (zero_test.cpp).
TEST_CASE("a user's layer and a residual block train at every stage on 1 and 2 ranks like stage 0") {
    const auto data = custom_model::make_batches(steps, 11);
    const auto train = [&](auto& engine) { custom_model::train(engine, data, 0, steps); };
    SUBCASE("fp32") { check_every_stage<Net, ds::FP32>(1e-5, 1e-2, train); }
    SUBCASE("bf16") { check_every_stage<Net, ds::BF16>(5e-3, 0.1, train); }
    SUBCASE("fp16") { check_every_stage<Net, ds::FP16<>>(5e-4, 0.1, train); }
}

TEST_CASE_TEMPLATE("token ids in, a loss per position, tied or not: gradients equal float64 finite differences",
                   Model, TokenNet, TiedNet) {
    constexpr bool tied = std::is_same_v<Model, TiedNet>;
    constexpr std::size_t samples = 3;
    const auto data = make_token_batches(samples, 4);
    std::vector<float> params(Model::param_count), grads(Model::param_count, 0.0f);
    ds::Rng rng(6);
    Model::init(params.data(), rng);
    if constexpr (tied)  // N(0, 1) rows give logits too large for a well-conditioned check: GPT-2 uses 0.02
        for (std::size_t i = 0; i < vocab * width; ++i) params[i] *= 0.3f;
    Model net(samples);
    const float* logits = net.forward(data.ids.data(), samples, params.data());
    const auto loss = ds::nn::CrossEntropyLoss{vocab}({logits, samples * positions * vocab}, data.targets);
    net.backward(loss.grad_output.data(), params.data(), grads.data());
    const auto reference = [&](const std::vector<double>& p) {
        return reference_token_loss(p, data.ids.data(), data.targets.data(), samples, tied);
    };
    CHECK(loss.value == doctest::Approx(reference({params.begin(), params.end()})).epsilon(1e-5));
    // Tied: each used row of the table gets both its embedding's and its projection's gradient.
    check_against_finite_differences<Model>(params, grads, reference);
}

TEST_CASE("a block as the first layer: gradients equal float64 finite differences") {
    constexpr std::size_t batch = 4;
    const auto data = custom_model::make_batches(1, 9);
    std::vector<float> params(BlockFirst::param_count), grads(BlockFirst::param_count, 0.0f);
    ds::Rng rng(2);
    BlockFirst::init(params.data(), rng);
    BlockFirst net(batch);
    const float* logits = net.forward(data.inputs.data(), batch, params.data());
    const auto loss = ds::nn::CrossEntropyLoss{classes}({logits, batch * classes}, {data.labels.data(), batch});
    net.backward(loss.grad_output.data(), params.data(), grads.data());
    check_against_finite_differences<BlockFirst>(params, grads, [&](const std::vector<double>& p) {
        return reference_block_first_loss(p, data.inputs.data(), data.labels.data(), batch);
    });
}

TEST_CASE("bf16 storage: a residual model's gradients follow fp32's to bf16's precision") {
    constexpr std::size_t batch = 5;
    const auto data = custom_model::make_batches(1, 3);
    std::vector<float> params(Net::param_count);
    ds::Rng rng(5);
    Net::init(params.data(), rng);
    std::vector<ds::bf16> params16(params.begin(), params.end()), inputs16(batch * inputs);
    for (std::size_t i = 0; i < params.size(); ++i) params[i] = static_cast<float>(params16[i]);  // the same values
    std::vector<float> x(data.inputs.begin(), data.inputs.begin() + batch * inputs);
    for (std::size_t i = 0; i < x.size(); ++i) inputs16[i] = ds::bf16(x[i]), x[i] = static_cast<float>(inputs16[i]);

    std::vector<float> grads(Net::param_count, 0.0f), grads16(Net::param_count, 0.0f);
    Net net(batch);
    const float* logits = net.forward(x.data(), batch, params.data());
    const auto loss = ds::nn::CrossEntropyLoss{classes}({logits, batch * classes}, {data.labels.data(), batch});
    net.backward(loss.grad_output.data(), params.data(), grads.data());

    Net::with_storage<ds::bf16> net16(batch);
    const ds::bf16* logits16 = net16.forward(inputs16.data(), batch, params16.data());
    const std::vector<float> wide(logits16, logits16 + batch * classes);
    const auto loss16 = ds::nn::CrossEntropyLoss{classes}(wide, {data.labels.data(), batch});
    const std::vector<ds::bf16> grad_output16(loss16.grad_output.begin(), loss16.grad_output.end());
    net16.backward(grad_output16.data(), params16.data(), grads16.data());

    double largest = 0, worst = 0;
    for (float g : grads) largest = std::max(largest, double{std::abs(g)});
    for (std::size_t i = 0; i < grads.size(); ++i) worst = std::max(worst, double{std::abs(grads[i] - grads16[i])});
    INFO("worst |bf16 - fp32| gradient " << worst << " of largest " << largest);
    CHECK(worst < 0.03 * largest);  // bf16 keeps 8 bits: activations and gradients each round by 2^-9
    CHECK(worst > 0);               // it did compute in bf16
}

TEST_CASE("token ids reach the embedding as integers in every precision, and a bad id is named") {
    const auto data = make_token_batches(custom_model::global_batch, 8);
    bool large_id = false;
    for (auto id : data.ids) large_id = large_id || id > 257;  // bf16 rounds 258.. to even steps
    REQUIRE(large_id);
    ds::Engine<TokenNet, ds::SGD<>, ds::Zero<0>, ds::FP32> fp32(config<ds::FP32>(0));
    ds::Engine<TokenNet, ds::SGD<>, ds::Zero<0>, ds::BF16> bf16(config<ds::BF16>(0));
    const auto a = fp32.forward(data.ids);
    const std::vector<float> wide(a.begin(), a.end());
    const auto b = bf16.forward(data.ids);
    double worst = 0;  // the same rows, rounded to bf16: a few 2^-8 relative, never another row's values
    for (std::size_t i = 0; i < wide.size(); ++i) worst = std::max(worst, double{std::abs(wide[i] - b[i])});
    CHECK(worst < 0.1);

    std::vector<std::int32_t> bad = data.ids;
    bad[positions + 2] = static_cast<std::int32_t>(vocab);
    CHECK_THROWS_WITH_AS(fp32.forward(bad), doctest::Contains("token id 300 at position 2 of sample 1"),
                         std::out_of_range);
}

TEST_CASE("tied weights through every stage-2 and stage-3 path: buckets, no contiguous gradients, overlap, prefetch") {
    const auto data = make_token_batches(custom_model::global_batch * steps, 13);
    const auto train = [&](auto& engine) { train_tokens(engine, data, steps); };
    using ds::Config;
    check_matches_stage0<TiedNet, 2, ds::FP32>(2, 1e-5, 1e-2, train, [](Config& c) {
        c.zero_optimization.reduce_bucket_size = 500;  // smaller than the table: reduced on its own, flushes between
    });
    check_matches_stage0<TiedNet, 2, ds::FP32>(2, 1e-5, 1e-2, train,
                                               [](Config& c) { c.zero_optimization.contiguous_gradients = false; });
    check_matches_stage0<TiedNet, 2, ds::FP32>(2, 1e-5, 1e-2, train, [](Config& c) {
        c.zero_optimization.overlap_comm = true;
        c.zero_optimization.reduce_bucket_size = 500;
    });
    check_matches_stage0<TiedNet, 3, ds::FP32>(2, 1e-5, 1e-2, train,
                                               [](Config& c) { c.zero_optimization.overlap_comm = false; });
    check_matches_stage0<TiedNet, 3, ds::FP32>(2, 1e-5, 1e-2, train,
                                               [](Config& c) { c.zero_optimization.reduce_scatter = false; });
}

TEST_CASE("stage 3 prefetches in the order the model asks: a tied model gathers nothing it does not use") {
    static_assert(TiedNet::gather_order == std::array<std::size_t, 3>{0, 1, 0});  // wte, block, wte again
    const auto data = make_token_batches(custom_model::global_batch * steps, 14);
    std::array<std::uint64_t, 2> gathered{};  // all-gathered elements per run: without, with overlap_comm
    for (int overlap : {0, 1})
        ds::comm::run_ranks(2, [&](ds::comm::Threads& comm) {
            ds::Config cfg = config<ds::FP32>(3);
            cfg.zero_optimization.overlap_comm = overlap == 1;
            ds::Engine<TiedNet, ds::SGD<>, ds::Zero<3>, ds::FP32, ds::Cpu, ds::comm::Threads> engine(cfg, comm);
            engine.communicator().reset_counters();
            train_tokens(engine, data, steps);
            if (comm.rank() == 0) gathered[overlap] = engine.communicator().counters()[ds::comm::Op::all_gather];
        });
    CHECK(gathered[0] > 0);
    CHECK(gathered[1] == gathered[0]);  // a prefetch of the wrong layer would gather more
}

TEST_CASE("a forward that fails on a bad id changes nothing: the next backward is refused") {
    ds::Engine<TokenNet, ds::SGD<>, ds::Zero<0>, ds::FP32> engine(config<ds::FP32>(0));
    auto data = make_token_batches(4, 15);
    const auto good = engine.forward(std::span<const std::int32_t>(data.ids).first(2 * positions));
    (void)good;
    data.ids[5] = -1;
    CHECK_THROWS_WITH_AS(engine.forward(data.ids), doctest::Contains("token id -1 at position 5 of sample 0"),
                         std::out_of_range);
    const std::vector<float> logits(4 * positions * vocab, 0.0f);
    CHECK_THROWS_AS(engine.backward(ds::nn::CrossEntropyLoss{vocab}(logits, data.targets)), std::invalid_argument);
}

TEST_CASE("cross-entropy per position: ignore_index rows count for nothing") {
    const std::vector<float> logits{1, 2, 0, /**/ 0, 0, 0, /**/ 3, 1, 1};
    const std::vector<std::int32_t> labels{1, -100, 0};
    const auto loss = ds::nn::CrossEntropyLoss{3}(logits, labels);
    const auto row = [](double a, double b, double c, double at) { return std::log(std::exp(a) + std::exp(b) + std::exp(c)) - at; };
    CHECK(loss.value == doctest::Approx((row(1, 2, 0, 2) + row(3, 1, 1, 3)) / 2));
    for (std::size_t c = 3; c < 6; ++c) CHECK(loss.grad_output[c] == 0.0f);
    CHECK(loss.grad_output[1] == doctest::Approx((std::exp(2.0) / (std::exp(1.0) + std::exp(2.0) + 1) - 1) / 2));
    const auto none = ds::nn::CrossEntropyLoss{3}(logits, std::vector<std::int32_t>{-100, -100, -100});
    CHECK(std::isnan(none.value));  // PyTorch's mean over no targets
    CHECK(ds::nn::CrossEntropyLoss{3, 2}(logits, std::vector<std::int32_t>{2, 2, 0}).value ==
          doctest::Approx(row(3, 1, 1, 3)));
    CHECK_THROWS_AS(ds::nn::CrossEntropyLoss{3}(logits, std::vector<std::int32_t>{1, -1, 0}), std::out_of_range);
}

TEST_CASE_TEMPLATE("a token model, tied or not, trains at every stage on 1 and 2 ranks like stage 0", Model,
                   TokenNet, TiedNet) {
    const auto data = make_token_batches(custom_model::global_batch * steps, 12);
    const auto train = [&](auto& engine) { train_tokens(engine, data, steps); };
    SUBCASE("fp32") { check_every_stage<Model, ds::FP32>(1e-5, 1e-2, train); }
    SUBCASE("bf16") { check_every_stage<Model, ds::BF16>(5e-3, 0.1, train); }
}

}
