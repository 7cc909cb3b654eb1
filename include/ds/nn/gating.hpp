#pragma once
/// @file
/// Mixture-of-Experts gating as DeepSpeed's `sharded_moe.py` computes it (SPEC §10): which
/// expert and capacity slot each token goes to, with what combine weight, the auxiliary
/// load-balancing loss, and the backward of the weights to the gate's logits.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <ds/util/rng.hpp>

namespace ds::nn {

/// DeepSpeed's `noisy_gate_policy`.
enum class NoisyGate {
    none,
    jitter,   ///< training: the gate's input × U(0.99, 1.01) (applied by the MoE layer, before the logits)
    rsample,  ///< training, top-1: the expert is argmax(logits + Gumbel noise)
};

/// How top-k (k > 2) drops tokens over capacity: by raw logit, or first come first served.
enum class DropPolicy { probs, position };

/// The tokens an expert can take: ⌈S/E · cf · k⌉, at least `min_capacity` (DeepSpeed's
/// `_capacity`, computed in float as PyTorch does).
inline std::size_t expert_capacity(std::size_t tokens, std::size_t experts, double capacity_factor, std::size_t k,
                                   std::size_t min_capacity) {
    const float share = static_cast<float>(static_cast<double>(tokens) / static_cast<double>(experts));
    const auto c = static_cast<std::size_t>(std::ceil(share * static_cast<float>(capacity_factor * double(k))));
    return std::max(c, min_capacity);
}

/// Where each of S tokens goes: for choice j of token s (k choices), `expert[s·k + j]`,
/// `slot[...]` in that expert's capacity buffer and the combine `weight[...]`. A dropped
/// choice keeps its expert, with slot −1 and weight 0.
struct Routing {
    std::size_t tokens = 0, experts = 0, k = 1, capacity = 0;
    std::vector<std::int32_t> expert, slot;
    std::vector<float> weight;
    std::vector<float> gates;              ///< softmax of the logits, [S × E] (the backward needs it)
    std::vector<std::int64_t> exp_counts;  ///< tokens choosing each expert, before dropping
    double l_aux = 0.0;                    ///< E · Σ_e mean_s(gates) · mean_s(first-choice mask), ÷ k for k > 2
    bool renormalized = false;             ///< weights are gates ÷ Σ of the kept choices' gates (k ≥ 2)

    bool kept(std::size_t s, std::size_t j) const { return slot[s * k + j] >= 0; }
    /// The dense combine tensor [S, E, C] DeepSpeed returns (dispatch mask = weight ≠ 0).
    std::vector<float> combine_weights() const {
        std::vector<float> dense(tokens * experts * capacity, 0.0f);
        for (std::size_t s = 0; s < tokens; ++s)
            for (std::size_t j = 0; j < k; ++j)
                if (kept(s, j))
                    dense[(s * experts + static_cast<std::size_t>(expert[s * k + j])) * capacity +
                          static_cast<std::size_t>(slot[s * k + j])] = weight[s * k + j];
        return dense;
    }
};

namespace detail {

inline void check_logits(std::span<const float> logits, std::size_t experts) {
    if (experts == 0 || logits.size() % experts != 0)
        throw std::invalid_argument("gating: " + std::to_string(logits.size()) + " logits are not rows of " +
                                    std::to_string(experts) + " experts");
}

/// Row-wise softmax in double, rounded to float like PyTorch's fp32 softmax within an ulp.
inline std::vector<float> softmax_rows(std::span<const float> logits, std::size_t experts) {
    std::vector<float> g(logits.size());
    for (std::size_t s = 0; s < logits.size() / experts; ++s) {
        const float* z = logits.data() + s * experts;
        const double top = *std::max_element(z, z + experts);
        double sum = 0.0;
        for (std::size_t e = 0; e < experts; ++e) sum += std::exp(z[e] - top);
        for (std::size_t e = 0; e < experts; ++e) g[s * experts + e] = static_cast<float>(std::exp(z[e] - top) / sum);
    }
    return g;
}

/// The first index of the row's maximum (torch.argmax).
inline std::size_t argmax(const float* row, std::size_t n) {
    return static_cast<std::size_t>(std::max_element(row, row + n) - row);
}

/// A standard Gumbel sample, −log(−log u) with u in (0, 1).
inline float gumbel(Rng& rng) {
    float u = rng.uniform(0.0f, 1.0f);
    u = std::clamp(u, std::numeric_limits<float>::min(), 1.0f - std::numeric_limits<float>::epsilon());
    return -std::log(-std::log(u));
}

/// E · Σ_e mean_s(gates[s, e]) · mean_s(mask[s, e]) / divisor.
inline double aux_loss(const std::vector<float>& gates, const std::vector<std::int64_t>& first_counts,
                       std::size_t tokens, std::size_t experts, double divisor) {
    double sum = 0.0;
    for (std::size_t e = 0; e < experts; ++e) {
        double me = 0.0;
        for (std::size_t s = 0; s < tokens; ++s) me += gates[s * experts + e];
        sum += (me / double(tokens)) * (double(first_counts[e]) / double(tokens));
    }
    return sum * double(experts) / divisor;
}

}  // namespace detail

/// Top-1 gating (`top1gating`): each token's expert is the argmax of its gates (of its
/// logits plus Gumbel noise with `NoisyGate::rsample`); an expert over capacity keeps a
/// random subset of its tokens (`use_rts`, also in eval), else its first tokens. The kept
/// tokens fill slots 0, 1, ... in token order; the weight is the raw softmax probability.
/// `drop_tokens = false` makes the capacity the largest count (DeepSpeed then takes the MAX over
/// the EP group; dspp's MoE sizes its all-to-all blocks for the micro batch instead).
inline Routing top1_gating(std::span<const float> logits, std::size_t experts, double capacity_factor,
                           std::size_t min_capacity, NoisyGate noise, bool drop_tokens, bool use_rts, Rng& rng) {
    detail::check_logits(logits, experts);
    Routing r;
    r.tokens = logits.size() / experts;
    r.experts = experts;
    r.k = 1;
    r.gates = detail::softmax_rows(logits, experts);
    r.capacity = expert_capacity(r.tokens, experts, capacity_factor, 1, min_capacity);
    r.expert.resize(r.tokens);
    std::vector<float> noisy(experts);
    for (std::size_t s = 0; s < r.tokens; ++s) {
        if (noise == NoisyGate::rsample) {
            for (std::size_t e = 0; e < experts; ++e) noisy[e] = logits[s * experts + e] + detail::gumbel(rng);
            r.expert[s] = static_cast<std::int32_t>(detail::argmax(noisy.data(), experts));
        } else {
            r.expert[s] = static_cast<std::int32_t>(detail::argmax(r.gates.data() + s * experts, experts));
        }
    }
    r.exp_counts.assign(experts, 0);
    for (auto e : r.expert) ++r.exp_counts[static_cast<std::size_t>(e)];
    r.l_aux = detail::aux_loss(r.gates, r.exp_counts, r.tokens, experts, 1.0);
    if (!drop_tokens)
        r.capacity = std::min<std::size_t>(
            static_cast<std::size_t>(*std::max_element(r.exp_counts.begin(), r.exp_counts.end())), r.tokens);
    if (r.tokens < min_capacity)
        throw std::invalid_argument("top1 gating: " + std::to_string(r.tokens) + " tokens, fewer than min_capacity " +
                                    std::to_string(min_capacity));
    // Per expert, keep the `capacity` assigned tokens with the largest score: a uniform draw
    // with use_rts (a random subset), else the lowest token indices (torch leaves ties open).
    std::vector<float> score(r.tokens, 1.0f);
    if (use_rts)
        for (auto& x : score) x = rng.uniform(0.0f, 1.0f);
    std::vector<bool> keep(r.tokens, false);
    std::vector<std::size_t> assigned;
    for (std::size_t e = 0; e < experts; ++e) {
        assigned.clear();
        for (std::size_t s = 0; s < r.tokens; ++s)
            if (static_cast<std::size_t>(r.expert[s]) == e) assigned.push_back(s);
        const std::size_t n = std::min(assigned.size(), r.capacity);
        std::stable_sort(assigned.begin(), assigned.end(),
                         [&](std::size_t a, std::size_t b) { return score[a] > score[b]; });
        for (std::size_t i = 0; i < n; ++i) keep[assigned[i]] = true;
    }
    r.slot.assign(r.tokens, -1);
    r.weight.assign(r.tokens, 0.0f);
    std::vector<std::int32_t> next(experts, 0);
    for (std::size_t s = 0; s < r.tokens; ++s) {
        if (!keep[s]) continue;
        const auto e = static_cast<std::size_t>(r.expert[s]);
        r.slot[s] = next[e]++;
        r.weight[s] = r.gates[s * experts + e];
    }
    return r;
}

/// Top-2 gating (`top2gating`): the first expert is the argmax of the gates, the second the
/// argmax of the other logits (plus Gumbel noise with `second_expert_sampling`, in training
/// and eval alike). Slots are numbered before dropping: an expert's first choices take
/// slots first, then its second choices; a choice at slot ≥ C is dropped. The capacity is
/// ⌈S/E · 2cf⌉. Weights are the kept choices' gates renormalised to sum to 1.
inline Routing top2_gating(std::span<const float> logits, std::size_t experts, double capacity_factor,
                           std::size_t min_capacity, bool drop_tokens, bool second_expert_sampling, Rng& rng) {
    detail::check_logits(logits, experts);
    if (experts < 2) throw std::invalid_argument("top2 gating needs at least 2 experts");
    Routing r;
    r.tokens = logits.size() / experts;
    r.experts = experts;
    r.k = 2;
    r.renormalized = true;
    r.gates = detail::softmax_rows(logits, experts);
    r.expert.resize(2 * r.tokens);
    std::vector<float> other(experts);
    for (std::size_t s = 0; s < r.tokens; ++s) {
        const auto first = detail::argmax(r.gates.data() + s * experts, experts);
        for (std::size_t e = 0; e < experts; ++e)
            other[e] = e == first ? -std::numeric_limits<float>::infinity()
                                  : logits[s * experts + e] + (second_expert_sampling ? detail::gumbel(rng) : 0.0f);
        r.expert[2 * s] = static_cast<std::int32_t>(first);
        r.expert[2 * s + 1] = static_cast<std::int32_t>(detail::argmax(other.data(), experts));
    }
    std::vector<std::int64_t> first_counts(experts, 0);
    r.exp_counts.assign(experts, 0);
    for (std::size_t s = 0; s < r.tokens; ++s) {
        ++first_counts[static_cast<std::size_t>(r.expert[2 * s])];
        ++r.exp_counts[static_cast<std::size_t>(r.expert[2 * s])];
        ++r.exp_counts[static_cast<std::size_t>(r.expert[2 * s + 1])];
    }
    r.l_aux = detail::aux_loss(r.gates, first_counts, r.tokens, experts, 1.0);
    r.capacity = drop_tokens ? expert_capacity(r.tokens, experts, capacity_factor, 2, min_capacity)
                             : static_cast<std::size_t>(*std::max_element(r.exp_counts.begin(), r.exp_counts.end()));
    r.slot.assign(2 * r.tokens, -1);
    std::vector<std::int32_t> next(experts, 0);
    for (std::size_t j = 0; j < 2; ++j)  // all first choices, then all second choices
        for (std::size_t s = 0; s < r.tokens; ++s) {
            const auto e = static_cast<std::size_t>(r.expert[2 * s + j]);
            const std::int32_t at = next[e]++;
            if (static_cast<std::size_t>(at) < r.capacity) r.slot[2 * s + j] = at;
        }
    r.weight.assign(2 * r.tokens, 0.0f);
    for (std::size_t s = 0; s < r.tokens; ++s) {
        float g[2];
        for (std::size_t j = 0; j < 2; ++j)
            g[j] = r.kept(s, j) ? r.gates[s * experts + static_cast<std::size_t>(r.expert[2 * s + j])] : 0.0f;
        const float denominator = std::max(g[0] + g[1], std::numeric_limits<float>::epsilon());
        for (std::size_t j = 0; j < 2; ++j) r.weight[2 * s + j] = g[j] / denominator;
    }
    return r;
}

/// Top-k gating for k > 2 (`topkgating`): the k largest logits per token; capacity
/// ⌈S/E · k·cf⌉; `DropPolicy::probs` keeps, per expert, the C tokens with the largest raw
/// logit (slots packed after dropping, in token order), `position` the first C (slots
/// numbered before dropping). Weights: the kept gates renormalised; l_aux ÷ k.
/// One deliberate difference: DeepSpeed's `probs` ranks every row of the expert's column,
/// the tokens that did not choose it counting as 0, so a chosen token with a negative logit
/// can be dropped while capacity is free; dspp ranks only the tokens that chose the expert.
inline Routing topk_gating(std::span<const float> logits, std::size_t experts, std::size_t k, double capacity_factor,
                           std::size_t min_capacity, DropPolicy policy) {
    detail::check_logits(logits, experts);
    if (k == 0 || k > experts) throw std::invalid_argument("top-k gating: k must be in [1, experts]");
    Routing r;
    r.tokens = logits.size() / experts;
    r.experts = experts;
    r.k = k;
    r.renormalized = true;
    r.gates = detail::softmax_rows(logits, experts);
    r.expert.resize(k * r.tokens);
    std::vector<std::size_t> order(experts);
    for (std::size_t s = 0; s < r.tokens; ++s) {
        const float* z = logits.data() + s * experts;
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return z[a] > z[b]; });
        std::sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k));  // choices in expert order
        for (std::size_t j = 0; j < k; ++j) r.expert[s * k + j] = static_cast<std::int32_t>(order[j]);
    }
    r.exp_counts.assign(experts, 0);
    for (auto e : r.expert) ++r.exp_counts[static_cast<std::size_t>(e)];
    r.l_aux = detail::aux_loss(r.gates, r.exp_counts, r.tokens, experts, static_cast<double>(k));
    r.capacity = expert_capacity(r.tokens, experts, capacity_factor, k, min_capacity);
    r.slot.assign(k * r.tokens, -1);
    for (std::size_t e = 0; e < experts; ++e) {
        std::vector<std::size_t> choices;  // indices into expert/slot, in token order
        for (std::size_t i = 0; i < r.expert.size(); ++i)
            if (static_cast<std::size_t>(r.expert[i]) == e) choices.push_back(i);
        if (policy == DropPolicy::position) {
            for (std::size_t n = 0; n < choices.size() && n < r.capacity; ++n)
                r.slot[choices[n]] = static_cast<std::int32_t>(n);
        } else {  // the C largest logits among the expert's column, then packed in token order
            std::vector<std::size_t> ranked = choices;
            std::stable_sort(ranked.begin(), ranked.end(), [&](std::size_t a, std::size_t b) {
                return logits[(a / k) * experts + e] > logits[(b / k) * experts + e];
            });
            std::vector<bool> keep(r.expert.size(), false);
            for (std::size_t n = 0; n < ranked.size() && n < r.capacity; ++n) keep[ranked[n]] = true;
            std::int32_t next = 0;
            for (auto i : choices)
                if (keep[i]) r.slot[i] = next++;
        }
    }
    r.weight.assign(k * r.tokens, 0.0f);
    for (std::size_t s = 0; s < r.tokens; ++s) {
        float sum = 0.0f;
        for (std::size_t j = 0; j < k; ++j)
            if (r.kept(s, j)) sum += r.gates[s * experts + static_cast<std::size_t>(r.expert[s * k + j])];
        sum = std::max(sum, std::numeric_limits<float>::epsilon());
        for (std::size_t j = 0; j < k; ++j)
            if (r.kept(s, j)) r.weight[s * k + j] = r.gates[s * experts + static_cast<std::size_t>(r.expert[s * k + j])] / sum;
    }
    return r;
}

/// d loss / d logits from d loss / d weight (one per choice, [S × k]) and d loss / d l_aux:
/// through the renormalisation (k ≥ 2), the softmax, and l_aux's mean of the gates (the
/// masks, capacity and noise carry no gradient, as in DeepSpeed).
inline std::vector<float> gating_backward(const Routing& r, std::span<const float> d_weight, double d_l_aux = 0.0) {
    const std::size_t S = r.tokens, E = r.experts, k = r.k;
    if (d_weight.size() != S * k) throw std::invalid_argument("gating_backward: one gradient per token and choice");
    std::vector<std::int64_t> mask_counts(E, 0);  // the mask l_aux used: first choices, or all k for k > 2
    for (std::size_t s = 0; s < S; ++s)
        for (std::size_t j = 0; j < (k > 2 ? k : 1); ++j) ++mask_counts[static_cast<std::size_t>(r.expert[s * k + j])];
    const double divisor = k > 2 ? double(k) : 1.0;
    std::vector<float> d_logits(S * E);
    std::vector<double> d_gates(E);
    for (std::size_t s = 0; s < S; ++s) {
        const float* g = r.gates.data() + s * E;
        for (std::size_t e = 0; e < E; ++e) d_gates[e] = d_l_aux * double(E) * double(mask_counts[e]) / (double(S) * double(S) * divisor);
        if (!r.renormalized) {
            if (r.kept(s, 0)) d_gates[static_cast<std::size_t>(r.expert[s])] += d_weight[s];
        } else {  // w_j = g_j / Σ g_kept: d/dg_i = (δ_ij − w_j) / Σ for kept i
            double sum = 0.0, dot = 0.0;
            for (std::size_t j = 0; j < k; ++j)
                if (r.kept(s, j)) {
                    sum += g[r.expert[s * k + j]];
                    dot += double(d_weight[s * k + j]) * r.weight[s * k + j];
                }
            if (sum > std::numeric_limits<float>::epsilon())
                for (std::size_t j = 0; j < k; ++j)
                    if (r.kept(s, j)) d_gates[static_cast<std::size_t>(r.expert[s * k + j])] += (d_weight[s * k + j] - dot) / sum;
        }
        double gdot = 0.0;  // softmax: dz_e = g_e (dg_e − Σ g·dg)
        for (std::size_t e = 0; e < E; ++e) gdot += double(g[e]) * d_gates[e];
        for (std::size_t e = 0; e < E; ++e) d_logits[s * E + e] = static_cast<float>(g[e] * (d_gates[e] - gdot));
    }
    return d_logits;
}

}  // namespace ds::nn
