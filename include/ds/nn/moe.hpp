#pragma once
/// @file
/// `ds::nn::MoE<Expert, Mlp, Experts...>`: the CIFAR example's list of DeepSpeed MoE
/// layers (`moe_layer_list`) as one layer of a `Sequential` — one MoE layer per entry of
/// `Experts...`, all built from the same expert, like `--num-experts 2 4`.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <ds/device/cpu/gemm.hpp>
#include <ds/nn/gating.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// `--mlp-type`: plain MoE, or PR-MoE's residual (the shared MLP mixed in by a 2-way softmax
/// coefficient). It adds parameters, so it is part of the model's type.
enum class MoEMlp { standard, residual };

/// The arguments of `deepspeed.moe.layer.MoE` that leave the parameter shapes alone, set at
/// run time (`MoE::configure`, or `Sequential::configure_moe` for every MoE layer).
struct MoESettings {
    int k = 1;                          ///< experts per token: 1 or 2
    double capacity_factor = 1.0;       ///< training
    double eval_capacity_factor = 1.0;  ///< eval
    int min_capacity = 4;
    NoisyGate noisy_gate_policy = NoisyGate::none;
    bool drop_tokens = true;
    bool use_rts = true;
    bool second_expert_sampling = true;  ///< top-2's Gumbel noise on the second choice
    std::uint64_t seed = 0x6d6f65;       ///< the gates' noise and token selection
};

namespace detail {

/// "l.deepspeed_moe.experts.deepspeed_experts.i.weight" and friends, built at compile time.
struct ParamName {
    std::array<char, 64> text{};
    std::size_t size = 0;
    constexpr ParamName& add(std::string_view s) {
        for (char c : s)
            if (size + 1 < text.size()) text[size++] = c;
        return *this;
    }
    constexpr ParamName& add(std::size_t v) {
        char digits[20]{};
        int n = 0;
        do digits[n++] = static_cast<char>('0' + v % 10), v /= 10;
        while (v);
        while (n > 0) add(std::string_view(&digits[--n], 1));
        return *this;
    }
};

}  // namespace detail

/// One MoE layer per entry of `Experts...` (expert counts), applied in order, each mapping
/// the same hidden size M to M. Every expert of every layer starts as a copy of one draw of
/// `Expert`'s initialisation (DeepSpeed deep-copies the example's `fc3`); with
/// `use_residual` that draw is also the MLP all layers share (the same module in Python).
/// Per layer: the gate (`Linear(M, E, bias=False)`, fp32), top-k routing with capacity
/// (`ds::nn::top1_gating` / `top2_gating`), each expert on its kept tokens, the weighted
/// combine; with `use_residual`, `out·c₀ + mlp(x)·c₁`, c = softmax(coefficient(x)).
/// All experts are local (expert parallelism comes with the engine's expert groups).
/// `l_aux` is computed (see `aux_losses()`) but, as in the example, not trained on.
template <class Expert, MoEMlp Mlp, std::size_t... Experts>
struct MoE {
    static_assert(sizeof...(Experts) > 0, "ds::nn::MoE: give at least one expert count");
    static_assert(((Experts > 0) && ...), "ds::nn::MoE: an MoE layer needs at least one expert");

    template <class Input>
    struct Bound {
        static constexpr std::size_t M = Input::size;
        using expert_t = typename Expert::template Bound<Features<M>>;
        static_assert(expert_t::output_shape::size == M, "ds::nn::MoE: the expert must map the hidden size to itself");
        using input_shape = Input;
        using output_shape = Input;
        static constexpr std::size_t layers = sizeof...(Experts);
        static constexpr std::array<std::size_t, layers> experts{Experts...};
        static constexpr bool residual = Mlp == MoEMlp::residual;
        static constexpr std::size_t expert_params = [] {
            std::size_t n = 0;
            for (const auto& p : expert_t::params) n += p.shape.numel();
            return n;
        }();

        static constexpr std::size_t param_tensors =
            (residual ? expert_t::params.size() : 0) +
            ((1 + Experts * expert_t::params.size() + (residual ? 2 : 0)) + ... + 0);
        static constexpr auto names = [] {
            std::array<detail::ParamName, param_tensors> n{};
            std::size_t t = 0;
            for (std::size_t i = 0; i < layers; ++i) {
                n[t++].add(i).add(".deepspeed_moe.gate.wg.weight");
                for (std::size_t e = 0; e < experts[i]; ++e)
                    for (const auto& p : expert_t::params)
                        n[t++].add(i).add(".deepspeed_moe.experts.deepspeed_experts.").add(e).add(".").add(p.name);
                if (residual && i == 0)
                    for (const auto& p : expert_t::params) n[t++].add("0.mlp.").add(p.name);
                if (residual) {
                    n[t++].add(i).add(".coefficient.weight");
                    n[t++].add(i).add(".coefficient.bias");
                }
            }
            return n;
        }();
        /// In PyTorch's registration order (gate, experts, mlp, coefficient), so the offsets
        /// `Sequential` assigns follow this order too.
        static constexpr auto params = [] {
            std::array<ParamSpec, param_tensors> p{};
            std::size_t t = 0;
            for (std::size_t i = 0; i < layers; ++i) {
                p[t] = {std::string_view(names[t].text.data(), names[t].size), {2, {experts[i], M}}};
                ++t;
                for (std::size_t e = 0; e < experts[i]; ++e)
                    for (const auto& q : expert_t::params) {
                        p[t] = {std::string_view(names[t].text.data(), names[t].size), q.shape};
                        ++t;
                    }
                if (residual && i == 0)
                    for (const auto& q : expert_t::params) {
                        p[t] = {std::string_view(names[t].text.data(), names[t].size), q.shape};
                        ++t;
                    }
                if (residual) {
                    p[t] = {std::string_view(names[t].text.data(), names[t].size), {2, {2, M}}};
                    ++t;
                    p[t] = {std::string_view(names[t].text.data(), names[t].size), {1, {2}}};
                    ++t;
                }
            }
            return p;
        }();

        void reserve(std::size_t max_batch) {
            for (std::size_t i = 0; i < layers; ++i) {
                auto& l = state_[i];
                l.experts.resize(experts[i]);
                for (auto& e : l.experts) {
                    e.layer.reserve(max_batch);
                    for (auto* b : {&e.x, &e.y, &e.dy, &e.dx}) b->resize(max_batch * M);
                    e.tokens.reserve(max_batch);
                    e.choices.reserve(max_batch);
                }
                l.input.resize(max_batch * M);
                l.gate_input.resize(max_batch * M);
                l.jitter.resize(max_batch * M);
                l.logits.resize(max_batch * experts[i]);
                l.moe_out.resize(max_batch * M);
                l.mlp_out.resize(max_batch * M);
                l.coef.resize(max_batch * 2);
            }
            mlp_.reserve(max_batch);
            for (auto* b : {&work_, &work2_, &scaled_, &d_mlp_, &mlp_dx_, &gate_dx_}) b->resize(max_batch * M);
            dz_.resize(max_batch * 2);
            d_weight_.resize(max_batch * 2);
        }

        /// PyTorch's defaults: one draw of the expert for every expert and the shared MLP;
        /// each gate and coefficient as `nn.Linear` (U(±1/√M)).
        static void init(float* w, Rng& rng) {
            std::vector<float> draw(expert_params);
            expert_t::init(draw.data(), rng);
            const float bound = 1.0f / std::sqrt(static_cast<float>(M));
            for (std::size_t i = 0; i < layers; ++i) {
                float* gate = w + offset_of_gate(i);
                for (std::size_t j = 0; j < experts[i] * M; ++j) gate[j] = rng.uniform(-bound, bound);
                for (std::size_t e = 0; e < experts[i]; ++e) std::copy(draw.begin(), draw.end(), w + offset_of_expert(i, e));
                if (residual) {
                    float* c = w + offset_of_coefficient(i);
                    for (std::size_t j = 0; j < 2 * M + 2; ++j) c[j] = rng.uniform(-bound, bound);
                }
            }
            if (residual) std::copy(draw.begin(), draw.end(), w + offset_of_mlp());
        }

        void set_training(bool training) { training_ = training; }

        /// @throws std::invalid_argument for k outside {1, 2}, top-2 over one expert, or a
        /// negative capacity
        void configure(const MoESettings& settings) {
            if (settings.k != 1 && settings.k != 2)
                throw std::invalid_argument("MoE: k = " + std::to_string(settings.k) + "; DeepSpeed's MoE takes 1 or 2");
            if (settings.k == 2 && *std::min_element(experts.begin(), experts.end()) < 2)
                throw std::invalid_argument("MoE: top-2 gating needs at least 2 experts in every MoE layer");
            if (settings.min_capacity < 0 || settings.capacity_factor <= 0 || settings.eval_capacity_factor <= 0)
                throw std::invalid_argument("MoE: capacity factors must be positive and min_capacity not negative");
            settings_ = settings;
            rng_ = Rng(settings.seed);
        }
        const MoESettings& settings() const { return settings_; }

        void forward(const float* x, float* y, std::size_t batch, const float* w) {
            // Each layer keeps its input for the backward: layer 0 copies x, the others are
            // written there by the layer before.
            std::copy_n(x, batch * M, state_[0].input.data());
            for (std::size_t i = 0; i < layers; ++i) {
                float* out = i + 1 == layers ? y : state_[i + 1].input.data();
                forward_layer(i, state_[i].input.data(), out, batch, w);
            }
        }

        void backward(const float* /*x*/, const float* /*y*/, float* dy, float* dx, std::size_t batch, const float* w,
                      float* dw) {
            // The gradient runs back through the layers, ping-ponging between two buffers.
            const float* grad = dy;
            float* next = work_.data();
            float* spare = work2_.data();
            for (std::size_t i = layers; i-- > 0;) {
                backward_layer(i, grad, next, batch, w, dw);
                grad = next;
                std::swap(next, spare);
            }
            if (dx) std::copy_n(grad, batch * M, dx);
        }

        /// The auxiliary loss of each MoE layer in the last forward.
        std::array<double, layers> aux_losses() const {
            std::array<double, layers> l{};
            for (std::size_t i = 0; i < layers; ++i) l[i] = state_[i].routing.l_aux;
            return l;
        }
        /// The routing of MoE layer i in the last forward.
        const Routing& routing(std::size_t i) const { return state_[i].routing; }

    private:
        // Offsets as `Sequential` lays out `params` (PyTorch order): gate, experts, [mlp], [coefficient].
        static constexpr std::size_t offset_of_gate(std::size_t i) {
            std::size_t at = 0;
            for (std::size_t l = 0; l < i; ++l) at += layer_size(l);
            return at;
        }
        static constexpr std::size_t layer_size(std::size_t l) {
            return experts[l] * M + experts[l] * expert_params + (residual && l == 0 ? expert_params : 0) +
                   (residual ? 2 * M + 2 : 0);
        }
        static constexpr std::size_t offset_of_expert(std::size_t i, std::size_t e) {
            return offset_of_gate(i) + experts[i] * M + e * expert_params;
        }
        static constexpr std::size_t offset_of_mlp() { return offset_of_gate(0) + experts[0] * M + experts[0] * expert_params; }
        static constexpr std::size_t offset_of_coefficient(std::size_t i) {
            return offset_of_expert(i, experts[i]) + (residual && i == 0 ? expert_params : 0);
        }

        struct Slot {
            expert_t layer{};
            std::vector<float> x, y;             ///< the expert's kept tokens, in slot order, and its outputs
            std::vector<float> dy, dx;           ///< their gradients (backward)
            std::vector<std::size_t> tokens;     ///< token of each slot
            std::vector<std::size_t> choices;    ///< index into the routing's choices of each slot
        };
        struct LayerState {
            std::vector<Slot> experts;
            std::vector<float> input, gate_input, jitter, logits, moe_out, mlp_out, coef;
            Routing routing;
        };

        bool jittered() const { return training_ && settings_.noisy_gate_policy == NoisyGate::jitter; }

        Routing route(std::size_t i, std::size_t batch) {
            LayerState& l = state_[i];
            const MoESettings& o = settings_;
            const double cf = training_ ? o.capacity_factor : o.eval_capacity_factor;
            const std::span<const float> logits(l.logits.data(), batch * experts[i]);
            const auto min_capacity = static_cast<std::size_t>(o.min_capacity);
            if (o.k == 1) {
                const NoisyGate noise =
                    training_ && o.noisy_gate_policy == NoisyGate::rsample ? NoisyGate::rsample : NoisyGate::none;
                return top1_gating(logits, experts[i], cf, min_capacity, noise, o.drop_tokens, o.use_rts, rng_);
            }
            return top2_gating(logits, experts[i], cf, min_capacity, o.drop_tokens, o.second_expert_sampling, rng_);
        }

        void forward_layer(std::size_t i, const float* x, float* y, std::size_t batch, const float* w) {
            LayerState& l = state_[i];
            const std::size_t E = experts[i];
            // Gate, in fp32 (Jitter: the gate sees x · U(0.99, 1.01) in training).
            const float* gate_x = x;
            if (jittered()) {
                for (std::size_t j = 0; j < batch * M; ++j) {
                    l.jitter[j] = rng_.uniform(0.99f, 1.01f);
                    l.gate_input[j] = x[j] * l.jitter[j];
                }
                gate_x = l.gate_input.data();
            }
            cpu::gemm(cpu::Op::none, cpu::Op::transpose, batch, E, M, 1.0f, gate_x, M, w + offset_of_gate(i), M, 0.0f,
                      l.logits.data(), E);
            l.routing = route(i, batch);
            const Routing& r = l.routing;
            // Dispatch: each expert runs on its kept tokens, in slot order.
            for (auto& e : l.experts) e.tokens.clear(), e.choices.clear();
            for (std::size_t s = 0; s < batch; ++s)
                for (std::size_t j = 0; j < r.k; ++j)
                    if (r.kept(s, j)) {
                        auto& e = l.experts[static_cast<std::size_t>(r.expert[s * r.k + j])];
                        const auto slot = static_cast<std::size_t>(r.slot[s * r.k + j]);
                        if (e.tokens.size() <= slot) e.tokens.resize(slot + 1), e.choices.resize(slot + 1);
                        e.tokens[slot] = s;
                        e.choices[slot] = s * r.k + j;
                    }
            std::fill_n(l.moe_out.begin(), batch * M, 0.0f);
            for (std::size_t e = 0; e < E; ++e) {
                Slot& slot = l.experts[e];
                const std::size_t n = slot.tokens.size();
                if (n == 0) continue;
                for (std::size_t c = 0; c < n; ++c) std::copy_n(x + slot.tokens[c] * M, M, slot.x.data() + c * M);
                slot.layer.forward(slot.x.data(), slot.y.data(), n, w + offset_of_expert(i, e));
                for (std::size_t c = 0; c < n; ++c) {
                    const float g = r.weight[slot.choices[c]];
                    float* out = l.moe_out.data() + slot.tokens[c] * M;
                    for (std::size_t m = 0; m < M; ++m) out[m] += g * slot.y[c * M + m];
                }
            }
            if constexpr (residual) {
                mlp_.forward(x, l.mlp_out.data(), batch, w + offset_of_mlp());
                const float* wc = w + offset_of_coefficient(i);
                cpu::gemm(cpu::Op::none, cpu::Op::transpose, batch, 2, M, 1.0f, x, M, wc, M, 0.0f, l.coef.data(), 2);
                for (std::size_t s = 0; s < batch; ++s) {
                    float* c = l.coef.data() + 2 * s;
                    const float a = c[0] + wc[2 * M], b = c[1] + wc[2 * M + 1];
                    const float top = std::max(a, b), ea = std::exp(a - top), eb = std::exp(b - top);
                    c[0] = ea / (ea + eb);
                    c[1] = eb / (ea + eb);
                    for (std::size_t m = 0; m < M; ++m)
                        y[s * M + m] = l.moe_out[s * M + m] * c[0] + l.mlp_out[s * M + m] * c[1];
                }
            } else {
                std::copy_n(l.moe_out.begin(), batch * M, y);
            }
        }

        /// dy: d loss / d output of MoE layer i; writes d loss / d its input to dx and adds
        /// the parameter gradients.
        void backward_layer(std::size_t i, const float* dy, float* dx, std::size_t batch, const float* w, float* dw) {
            LayerState& l = state_[i];
            const Routing& r = l.routing;
            const std::size_t E = experts[i];
            const float* x = l.input.data();
            std::fill_n(dx, batch * M, 0.0f);
            const float* d_moe = dy;
            if constexpr (residual) {
                // out = moe·c₀ + mlp·c₁, c = softmax(z): dz_k = c_k (dc_k − Σ c·dc).
                float* const scaled = scaled_.data();
                float* const d_mlp = d_mlp_.data();
                float* const dz = dz_.data();
                for (std::size_t s = 0; s < batch; ++s) {
                    const float* c = l.coef.data() + 2 * s;
                    double dc0 = 0, dc1 = 0;
                    for (std::size_t m = 0; m < M; ++m) {
                        const float g = dy[s * M + m];
                        scaled[s * M + m] = g * c[0];
                        d_mlp[s * M + m] = g * c[1];
                        dc0 += double(g) * l.moe_out[s * M + m];
                        dc1 += double(g) * l.mlp_out[s * M + m];
                    }
                    const double dot = c[0] * dc0 + c[1] * dc1;
                    dz[2 * s] = static_cast<float>(c[0] * (dc0 - dot));
                    dz[2 * s + 1] = static_cast<float>(c[1] * (dc1 - dot));
                }
                const float* wc = w + offset_of_coefficient(i);
                float* dwc = dw + offset_of_coefficient(i);
                cpu::gemm(cpu::Op::transpose, cpu::Op::none, 2, M, batch, 1.0f, dz, 2, x, M, 1.0f, dwc, M);
                for (std::size_t s = 0; s < batch; ++s) dwc[2 * M] += dz[2 * s], dwc[2 * M + 1] += dz[2 * s + 1];
                cpu::gemm(cpu::Op::none, cpu::Op::none, batch, M, 2, 1.0f, dz, 2, wc, M, 1.0f, dx, M);
                // The shared MLP: its gradient from every layer adds into the one tensor.
                mlp_.backward(x, l.mlp_out.data(), d_mlp, mlp_dx_.data(), batch, w + offset_of_mlp(),
                              dw + offset_of_mlp());
                for (std::size_t j = 0; j < batch * M; ++j) dx[j] += mlp_dx_[j];
                d_moe = scaled;
            }
            // Combine: out[s] = Σ_j w_sj · y_e(slot); d w_sj = dy[s]·y, d y = w_sj · dy[s].
            const std::span<float> d_weight(d_weight_.data(), batch * r.k);
            std::fill(d_weight.begin(), d_weight.end(), 0.0f);
            for (std::size_t e = 0; e < E; ++e) {
                Slot& slot = l.experts[e];
                const std::size_t n = slot.tokens.size();
                if (n == 0) continue;

                for (std::size_t c = 0; c < n; ++c) {
                    const std::size_t s = slot.tokens[c];
                    const float g = r.weight[slot.choices[c]];
                    double dot = 0;
                    for (std::size_t m = 0; m < M; ++m) {
                        dot += double(d_moe[s * M + m]) * slot.y[c * M + m];
                        slot.dy[c * M + m] = g * d_moe[s * M + m];
                    }
                    d_weight[slot.choices[c]] = static_cast<float>(dot);
                }
                slot.layer.backward(slot.x.data(), slot.y.data(), slot.dy.data(), slot.dx.data(), n,
                                    w + offset_of_expert(i, e), dw + offset_of_expert(i, e));
                for (std::size_t c = 0; c < n; ++c)
                    for (std::size_t m = 0; m < M; ++m) dx[slot.tokens[c] * M + m] += slot.dx[c * M + m];
            }
            // Gate: d logits from the weights (l_aux is not trained on), then through x·Wgᵀ.
            const auto d_logits = gating_backward(r, d_weight);
            const bool jitter = jittered();
            const float* gate_x = jitter ? l.gate_input.data() : x;
            cpu::gemm(cpu::Op::transpose, cpu::Op::none, E, M, batch, 1.0f, d_logits.data(), E, gate_x, M, 1.0f,
                      dw + offset_of_gate(i), M);
            float* const dgx = gate_dx_.data();
            cpu::gemm(cpu::Op::none, cpu::Op::none, batch, M, E, 1.0f, d_logits.data(), E, w + offset_of_gate(i), M, 0.0f,
                      dgx, M);
            for (std::size_t j = 0; j < batch * M; ++j) dx[j] += jitter ? dgx[j] * l.jitter[j] : dgx[j];
        }

        std::array<LayerState, layers> state_{};
        expert_t mlp_{};
        std::vector<float> work_, work2_;  ///< the running gradient between MoE layers
        std::vector<float> scaled_, d_mlp_, mlp_dx_, gate_dx_, dz_, d_weight_;  ///< backward work
        bool training_ = true;
        MoESettings settings_{};
        Rng rng_{settings_.seed};
    };
};

}  // namespace ds::nn
