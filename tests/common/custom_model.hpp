#pragma once
// A layer written outside the library, as a user writes one (ds/nn/layer.hpp), in a model
// with a residual block; its synthetic batches, and the data-parallel loop of the tests.
#include <array>
#include <type_traits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <ds/nn/cross_entropy.hpp>
#include <ds/nn/embedding.hpp>
#include <ds/nn/tied.hpp>
#include <ds/nn/layer.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/residual.hpp>
#include <ds/nn/sequential.hpp>
#include <ds/util/rng.hpp>

namespace custom_model {

/// y = tanh(w ⊙ x + b) per feature: a layer with its own parameters, forward and backward.
struct ScaledTanh {
    template <class Input>
    struct Bound {
        static constexpr std::size_t n = Input::size;
        using input_shape = Input;
        using output_shape = Input;
        static constexpr std::array<ds::nn::ParamSpec, 2> params{{{"weight", {1, {n}}}, {"bias", {1, {n}}}}};

        static void init(float* p, ds::Rng& rng) {
            for (std::size_t i = 0; i < n; ++i) p[i] = rng.uniform(0.5f, 1.5f);
            for (std::size_t i = 0; i < n; ++i) p[n + i] = rng.uniform(-0.1f, 0.1f);
        }
        void reserve(std::size_t) {}

        void forward(const float* x, float* y, std::size_t batch, const float* p) {
            for (std::size_t b = 0; b < batch; ++b)
                for (std::size_t i = 0; i < n; ++i) y[b * n + i] = std::tanh(p[i] * x[b * n + i] + p[n + i]);
        }
        void backward(const float* x, const float* y, float* dy, float* dx, std::size_t batch, const float* p,
                      float* dp) {
            for (std::size_t b = 0; b < batch; ++b)
                for (std::size_t i = 0; i < n; ++i) {
                    const std::size_t at = b * n + i;
                    const float g = dy[at] * (1.0f - y[at] * y[at]);
                    dp[i] += g * x[at];  // law 1: add, never overwrite
                    dp[n + i] += g;
                    if (dx) dx[at] = g * p[i];
                }
        }
    };
};
static_assert(ds::layer<ScaledTanh, ds::nn::Features<4>>);

using namespace ds::nn;
constexpr std::size_t inputs = 6, hidden = 8, classes = 3, global_batch = 8;
using Net = Sequential<Features<inputs>, Named<"embed", Linear<inputs, hidden>>, Named<"act", ScaledTanh>,
                       Named<"block", Residual<Linear<hidden, hidden>, ScaledTanh, Linear<hidden, hidden>>>,
                       Named<"head", Linear<hidden, classes>>>;
static_assert(ds::model<Net>);

struct Batches {
    std::vector<float> inputs;
    std::vector<std::int32_t> labels;
};

/// `steps` global batches: normal inputs, labels of a fixed random linear teacher.
inline Batches make_batches(int steps, std::uint64_t seed) {
    ds::Rng rng(seed);
    std::array<float, inputs * classes> teacher{};
    for (auto& t : teacher) t = rng.uniform(-1.0f, 1.0f);
    const std::size_t samples = global_batch * static_cast<std::size_t>(steps);
    Batches b{std::vector<float>(samples * inputs), std::vector<std::int32_t>(samples)};
    for (std::size_t s = 0; s < samples; ++s) {
        float best = -1e30f;
        for (std::size_t i = 0; i < inputs; ++i) b.inputs[s * inputs + i] = rng.uniform(-2.0f, 2.0f);
        for (std::size_t c = 0; c < classes; ++c) {
            float z = 0;
            for (std::size_t i = 0; i < inputs; ++i) z += teacher[c * inputs + i] * b.inputs[s * inputs + i];
            if (z > best) best = z, b.labels[s] = static_cast<std::int32_t>(c);
        }
    }
    return b;
}

/// Optimizer steps [first, first + steps): rank r of n takes samples [r·m, (r+1)·m) of each
/// micro-batch of the global batch (m = global / (n · gas)).
/// @returns the loss of each step's first micro-batch on this rank
template <class E>
std::vector<float> train(E& engine, const Batches& data, int first, int steps) {
    const auto n = static_cast<std::size_t>(engine.world_size());
    const auto gas = static_cast<std::size_t>(engine.gradient_accumulation_steps());
    const std::size_t micro = global_batch / gas / n, rank = static_cast<std::size_t>(engine.global_rank());
    std::vector<float> losses;
    for (int s = first; s < first + steps; ++s)
        for (std::size_t g = 0; g < gas; ++g) {
            const std::size_t at = static_cast<std::size_t>(s) * global_batch + g * (global_batch / gas) + rank * micro;
            const auto out = engine.forward({data.inputs.data() + at * inputs, micro * inputs});
            const auto loss = ds::nn::CrossEntropyLoss{classes}(out, {data.labels.data() + at, micro});
            if (g == 0) losses.push_back(loss.value);
            engine.backward(loss);
            engine.step();
        }
    return losses;
}

// --- a token model: ids in, a prediction per position out; and the same with tied weights ----

constexpr std::size_t vocab = 300, width = 8, positions = 6;  // ids past 256 would not survive bf16
using Block = Residual<Linear<width, width>, ScaledTanh, Linear<width, width>>;  // per position
using TokenNet = Sequential<Tokens<positions>, Named<"wte", Embedding<vocab, width>>, Named<"block", Block>,
                            Named<"lm_head", Linear<width, vocab>>>;
static_assert(ds::model<TokenNet>);
static_assert(std::is_same_v<TokenNet::output_shape, Sequence<positions, vocab>>);

/// TokenNet with GPT-2's tied output projection: the logits are the embedding table times
/// the features, no bias; the table is stored once.
using TiedNet = Sequential<Tokens<positions>, Named<"wte", Embedding<vocab, width>>, Named<"block", Block>,
                           Named<"lm_head", Tied<"wte", Linear<width, vocab, false>>>>;
static_assert(TiedNet::param_count == TokenNet::param_count - vocab * width - vocab);
static_assert(TiedNet::parameters.back().name() == "block.2.bias");

/// Sequences of ids whose target is a fixed function of the id, the first position of
/// every sample ignored (-100).
struct TokenBatches {
    std::vector<std::int32_t> ids, targets;
};
inline TokenBatches make_token_batches(std::size_t samples, std::uint64_t seed) {
    ds::Rng rng(seed);
    TokenBatches b{std::vector<std::int32_t>(samples * positions), std::vector<std::int32_t>(samples * positions)};
    for (std::size_t i = 0; i < b.ids.size(); ++i) {
        b.ids[i] = static_cast<std::int32_t>(rng.below(vocab));
        b.targets[i] = i % positions == 0 ? -100 : static_cast<std::int32_t>((b.ids[i] * 7 + 3) % vocab);
    }
    return b;
}

/// `steps` optimizer steps from the start of `data`, each rank its share of the global batch.
template <class E>
void train_tokens(E& engine, const TokenBatches& data, int steps) {
    const auto n = static_cast<std::size_t>(engine.world_size()), rank = static_cast<std::size_t>(engine.global_rank());
    const std::size_t micro = global_batch / n;
    for (int s = 0; s < steps; ++s) {
        const std::size_t at = (static_cast<std::size_t>(s) * global_batch + rank * micro) * positions;
        const auto logits = engine.forward({data.ids.data() + at, micro * positions});
        engine.backward(ds::nn::CrossEntropyLoss{vocab}(logits, {data.targets.data() + at, micro * positions}));
        engine.step();
    }
}

}  // namespace custom_model
