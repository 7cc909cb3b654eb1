// MoE gating against DeepSpeed's own fixed-logit test (tests/unit/moe/test_moe.py,
// TestTopkGate: the dispatch masks), closed forms (renormalised weights of logits 0.1 apart
// are sigmoid(±0.1)), a float64 re-computation of l_aux, capacity edge cases, random token
// selection's invariants, and the backward against central differences.
#include <array>
#include <cmath>
#include <cstdint>
#include <set>
#include <tuple>
#include <vector>

#include <doctest/doctest.h>

#include <ds/nn/gating.hpp>

namespace {

using Triple = std::array<int, 3>;  // [s, e, c]

const std::vector<float> case_a{0.11f, 0.2f, 0.1f, 0.3f, 0.3f, 0.4f, 0.11f, 0.1f,
                                0.11f, 0.1f, 0.6f, 0.5f, 0.1f, 0.11f, 0.7f, 0.8f};  // S = 4, E = 4
const std::vector<float> case_b{0.5858f, 0.4801f, 0.6269f, 0.5397f, 0.9722f, 0.7034f,  // S = 4, E = 6
                                0.5445f, 0.6332f, 0.4519f, 0.6308f, 0.0519f, 0.6450f,
                                0.4874f, 0.8110f, 0.7467f, 0.8474f, 0.0277f, 0.3068f,
                                0.8570f, 0.6714f, 0.5310f, 0.3274f, 0.4836f, 0.9892f};

/// The dispatch mask (combine weight ≠ 0) as a set of [s, e, c].
std::set<Triple> dispatched(const ds::nn::Routing& r) {
    std::set<Triple> out;
    const auto dense = r.combine_weights();
    for (std::size_t s = 0; s < r.tokens; ++s)
        for (std::size_t e = 0; e < r.experts; ++e)
            for (std::size_t c = 0; c < r.capacity; ++c)
                if (dense[(s * r.experts + e) * r.capacity + c] != 0.0f)
                    out.insert({static_cast<int>(s), static_cast<int>(e), static_cast<int>(c)});
    return out;
}

float weight_at(const ds::nn::Routing& r, int s, int e, int c) {
    return r.combine_weights()[(static_cast<std::size_t>(s) * r.experts + static_cast<std::size_t>(e)) * r.capacity +
                               static_cast<std::size_t>(c)];
}

/// l_aux recomputed in float64 from the logits: E · Σ_e mean_s(softmax) · mean_s(mask) / divisor.
double l_aux_reference(const std::vector<float>& logits, std::size_t E, const std::vector<int>& mask_counts,
                       double divisor) {
    const std::size_t S = logits.size() / E;
    std::vector<double> me(E, 0.0);
    for (std::size_t s = 0; s < S; ++s) {
        double sum = 0.0;
        for (std::size_t e = 0; e < E; ++e) sum += std::exp(double(logits[s * E + e]));
        for (std::size_t e = 0; e < E; ++e) me[e] += std::exp(double(logits[s * E + e])) / sum / double(S);
    }
    double l = 0.0;
    for (std::size_t e = 0; e < E; ++e) l += me[e] * mask_counts[e] / double(S);
    return l * double(E) / divisor;
}

std::vector<float> doubled(std::vector<float> v) {
    for (float& x : v) x *= 2.0f;
    return v;
}

}  // namespace

TEST_SUITE("gating") {

TEST_CASE("capacity: ceil(S/E · cf · k), floored at min_capacity") {
    using ds::nn::expert_capacity;
    CHECK(expert_capacity(4, 4, 1.0, 2, 1) == 2);
    CHECK(expert_capacity(4, 6, 1.0, 3, 1) == 2);  // 4/6·3 = 2 exactly in float
    CHECK(expert_capacity(8, 2, 1.0, 1, 4) == 4);  // the example: 8 tokens per rank, 2 experts
    CHECK(expert_capacity(8, 4, 1.0, 1, 4) == 4);  // ceil(2) = 2, floored to min_capacity 4
    CHECK(expert_capacity(8, 4, 1.0, 1, 0) == 2);
    CHECK(expert_capacity(5, 2, 1.5, 1, 0) == 4);  // ceil(3.75)
    CHECK(expert_capacity(4, 4, 1.0, 2, 3) == 3);
}

TEST_CASE("top-k, DeepSpeed's TestTopkGate: k = 2 over 4 experts, both drop policies, logits ×1 and ×2") {
    for (const auto& logits : {case_a, doubled(case_a)}) {
        const auto probs = ds::nn::topk_gating(logits, 4, 2, 1.0, 1, ds::nn::DropPolicy::probs);
        CHECK(probs.capacity == 2);
        CHECK(dispatched(probs) ==
              std::set<Triple>{{0, 1, 0}, {1, 0, 0}, {1, 1, 1}, {2, 2, 0}, {2, 3, 0}, {3, 2, 1}, {3, 3, 1}});
        const auto position = ds::nn::topk_gating(logits, 4, 2, 1.0, 1, ds::nn::DropPolicy::position);
        CHECK(dispatched(position) ==
              std::set<Triple>{{0, 1, 0}, {0, 3, 0}, {1, 0, 0}, {1, 1, 1}, {2, 2, 0}, {2, 3, 1}, {3, 2, 1}});
        CHECK(probs.exp_counts == std::vector<std::int64_t>{1, 2, 2, 3});
    }
    // Closed form on the ×1 logits: every kept pair is 0.1 apart in logit, so the weights are
    // sigmoid(±0.1); a token with one kept choice gets 1.
    const auto probs = ds::nn::topk_gating(case_a, 4, 2, 1.0, 1, ds::nn::DropPolicy::probs);
    const double hi = 1.0 / (1.0 + std::exp(-0.1)), lo = 1.0 - hi;
    CHECK(weight_at(probs, 0, 1, 0) == 1.0f);
    CHECK(weight_at(probs, 1, 1, 1) == doctest::Approx(hi).epsilon(1e-6));
    CHECK(weight_at(probs, 1, 0, 0) == doctest::Approx(lo).epsilon(1e-6));
    CHECK(weight_at(probs, 3, 3, 1) == doctest::Approx(hi).epsilon(1e-6));
    CHECK(probs.l_aux == doctest::Approx(l_aux_reference(case_a, 4, {1, 2, 2, 3}, 2.0)).epsilon(1e-6));
}

TEST_CASE("top-k, DeepSpeed's TestTopkGate: k = 3 over 6 experts") {
    for (const auto& logits : {case_b, doubled(case_b)}) {
        const auto probs = ds::nn::topk_gating(logits, 6, 3, 1.0, 1, ds::nn::DropPolicy::probs);
        CHECK(probs.capacity == 2);
        CHECK(dispatched(probs) == std::set<Triple>{{0, 2, 0}, {0, 4, 0}, {0, 5, 0}, {1, 3, 0}, {2, 1, 0},
                                                    {2, 2, 1}, {2, 3, 1}, {3, 0, 0}, {3, 1, 1}, {3, 5, 1}});
        const auto position = ds::nn::topk_gating(logits, 6, 3, 1.0, 1, ds::nn::DropPolicy::position);
        CHECK(dispatched(position) == std::set<Triple>{{0, 2, 0}, {0, 4, 0}, {0, 5, 0}, {1, 1, 0}, {1, 3, 0},
                                                       {1, 5, 1}, {2, 1, 1}, {2, 2, 1}, {2, 3, 1}, {3, 0, 0}});
    }
    const auto probs = ds::nn::topk_gating(case_b, 6, 3, 1.0, 1, ds::nn::DropPolicy::probs);
    CHECK(probs.exp_counts == std::vector<std::int64_t>{1, 3, 2, 2, 1, 3});
    CHECK(probs.l_aux == doctest::Approx(l_aux_reference(case_b, 6, {1, 3, 2, 2, 1, 3}, 3.0)).epsilon(1e-6));
    CHECK(weight_at(probs, 1, 3, 0) == 1.0f);  // token 1 kept one choice of three
}

TEST_CASE("top-1: argmax expert, raw softmax weight, slots in token order, l_aux") {
    ds::Rng rng(3);
    const auto r = ds::nn::top1_gating(case_a, 4, 2.0, 1, ds::nn::NoisyGate::none, true, false, rng);
    CHECK(r.capacity == 2);
    CHECK(r.expert == std::vector<std::int32_t>{3, 1, 2, 3});
    CHECK(r.exp_counts == std::vector<std::int64_t>{0, 1, 1, 2});
    CHECK(dispatched(r) == std::set<Triple>{{0, 3, 0}, {1, 1, 0}, {2, 2, 0}, {3, 3, 1}});
    const double row0 = std::exp(0.3) / (std::exp(0.11) + std::exp(0.2) + std::exp(0.1) + std::exp(0.3));
    CHECK(weight_at(r, 0, 3, 0) == doctest::Approx(row0).epsilon(1e-6));  // not renormalised
    CHECK(r.l_aux == doctest::Approx(l_aux_reference(case_a, 4, {0, 1, 1, 2}, 1.0)).epsilon(1e-6));
    // Capacity 1: expert 3 keeps one of its two tokens (without rts: the first).
    const auto tight = ds::nn::top1_gating(case_a, 4, 1.0, 1, ds::nn::NoisyGate::none, true, false, rng);
    CHECK(tight.capacity == 1);
    CHECK(dispatched(tight) == std::set<Triple>{{0, 3, 0}, {1, 1, 0}, {2, 2, 0}});
    CHECK(tight.exp_counts == r.exp_counts);  // counted before dropping
    // drop_tokens = false: the capacity grows to the largest count, nothing is dropped.
    const auto all = ds::nn::top1_gating(case_a, 4, 1.0, 1, ds::nn::NoisyGate::none, false, true, rng);
    CHECK(all.capacity == 2);
    CHECK(dispatched(all).size() == 4);
}

TEST_CASE("top-1 random token selection keeps a random subset of exactly C, packed in token order") {
    // 64 tokens that all prefer expert 0 of 2, capacity 8.
    std::vector<float> logits;
    for (int s = 0; s < 64; ++s) logits.insert(logits.end(), {1.0f + 0.001f * static_cast<float>(s), 0.0f});
    ds::Rng rng(11);
    std::set<std::set<int>> subsets;
    for (int trial = 0; trial < 5; ++trial) {
        const auto r = ds::nn::top1_gating(logits, 2, 0.25, 4, ds::nn::NoisyGate::none, true, true, rng);
        REQUIRE(r.capacity == 8);
        std::set<int> kept;
        int last = -1, next_slot = 0;
        for (std::size_t s = 0; s < 64; ++s)
            if (r.kept(s, 0)) {
                kept.insert(static_cast<int>(s));
                CHECK(static_cast<int>(s) > last);
                CHECK(r.slot[s] == next_slot++);  // slots 0..7 in token order
                last = static_cast<int>(s);
            }
        CHECK(kept.size() == 8);
        subsets.insert(kept);
    }
    CHECK(subsets.size() > 1);  // random, not the first 8
    CHECK_THROWS_WITH(ds::nn::top1_gating(std::vector<float>(6, 0.0f), 2, 1.0, 4, ds::nn::NoisyGate::none, true,
                                          true, rng),
                      doctest::Contains("fewer than min_capacity"));
}

TEST_CASE("top-2: second choices queue after all first choices; kept weights renormalised") {
    ds::Rng rng(5);
    const auto r = ds::nn::top2_gating(case_a, 4, 1.0, 1, true, false, rng);
    CHECK(r.capacity == 2);
    CHECK(r.exp_counts == std::vector<std::int64_t>{1, 2, 2, 3});
    // Token 2's second choice (expert 3) would take slot 2 behind tokens 0 and 3: dropped.
    CHECK(dispatched(r) == std::set<Triple>{{0, 3, 0}, {0, 1, 1}, {1, 1, 0}, {1, 0, 0}, {2, 2, 0}, {3, 3, 1}, {3, 2, 1}});
    const double hi = 1.0 / (1.0 + std::exp(-0.1));
    CHECK(weight_at(r, 0, 3, 0) == doctest::Approx(hi).epsilon(1e-6));
    CHECK(weight_at(r, 0, 1, 1) == doctest::Approx(1.0 - hi).epsilon(1e-6));
    CHECK(weight_at(r, 2, 2, 0) == 1.0f);  // its second choice dropped
    CHECK(r.l_aux == doctest::Approx(l_aux_reference(case_a, 4, {0, 1, 1, 2}, 1.0)).epsilon(1e-6));
    // With Gumbel sampling the second expert is never the first, and a fixed seed repeats.
    ds::Rng a(9), b(9);
    const auto x = ds::nn::top2_gating(case_a, 4, 1.0, 1, true, true, a);
    const auto y = ds::nn::top2_gating(case_a, 4, 1.0, 1, true, true, b);
    CHECK(x.expert == y.expert);
    for (std::size_t s = 0; s < 4; ++s) CHECK(x.expert[2 * s] != x.expert[2 * s + 1]);
}

TEST_CASE("gating backward matches central differences of Σ c·weight + λ·l_aux") {
    // Random logits far from ties, so a small step never changes the routing.
    ds::Rng rng(21);
    const std::size_t S = 6, E = 4;
    std::vector<float> logits(S * E);
    for (auto& z : logits) z = rng.uniform(-1.0f, 1.0f);
    std::vector<float> c(S * 3);
    for (auto& x : c) x = rng.uniform(-1.0f, 1.0f);
    const double lambda = 0.7;
    auto route = [&](const std::vector<float>& z, int which) {
        ds::Rng quiet(1);
        if (which == 1) return ds::nn::top1_gating(z, E, 2.0, 0, ds::nn::NoisyGate::none, true, false, quiet);
        if (which == 2) return ds::nn::top2_gating(z, E, 1.0, 0, true, false, quiet);
        return ds::nn::topk_gating(z, E, 3, 1.0, 0, ds::nn::DropPolicy::position);
    };
    for (int which : {1, 2, 3}) {
        INFO("gating " << which);
        const auto r = route(logits, which);
        auto objective = [&](const ds::nn::Routing& q) {
            double v = lambda * q.l_aux;
            for (std::size_t i = 0; i < q.weight.size(); ++i) v += double(c[i]) * q.weight[i];
            return v;
        };
        const auto grad = ds::nn::gating_backward(r, std::span<const float>(c.data(), S * r.k), lambda);
        for (std::size_t i = 0; i < logits.size(); ++i) {
            auto up = logits, down = logits;
            up[i] += 1e-2f;
            down[i] -= 1e-2f;
            const auto ru = route(up, which), rd = route(down, which);
            REQUIRE(ru.slot == r.slot);
            REQUIRE(rd.slot == r.slot);
            const double numeric = (objective(ru) - objective(rd)) / (double(up[i]) - double(down[i]));
            // Float weights make the difference quotient good to ~3e-5; truncation is O(h²).
            CHECK(grad[i] == doctest::Approx(numeric).epsilon(1e-2).scale(1e-2));
        }
    }
}

}  // TEST_SUITE
