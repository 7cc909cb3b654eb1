#pragma once
/// @file
/// `ds::nn::MoE<Expert, Mlp, Experts...>`: the CIFAR example's list of DeepSpeed MoE
/// layers (`moe_layer_list`) as one layer of a `Sequential` — one MoE layer per entry of
/// `Experts...`, all built from the same expert, like `--num-experts 2 4`.

#include <algorithm>
#include <array>
#include <chrono>
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

#include <ds/comm/expert_parallel.hpp>
#include <ds/device/cpu/gemm.hpp>
#include <ds/nn/gating.hpp>
#include <ds/nn/math/moe.hpp>
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

/// Where an MoE forward's time goes, accumulated in seconds: DeepSpeed's `gate`,
/// `falltoall` and `salltoall` timers (`wall_clock_breakdown`).
struct MoETimings {
    double gate = 0.0;               ///< gate GEMM and routing
    double first_all_to_all = 0.0;   ///< tokens to their experts
    double second_all_to_all = 0.0;  ///< expert outputs back
};

/// The run-time half of an MoE layer, shared by the CPU layer and the GPU one
/// (`cuda::DeviceLayer<BasicMoE<...>>`): the settings, the training mode and the one
/// generator of the gates' noise and token selection, so both route the same logits the
/// same way and draw the same numbers in the same order.
class MoERouter {
public:
    /// Applies `settings` to layers whose smallest has `fewest_experts` experts, and
    /// restarts the draws from its seed.
    /// @throws std::invalid_argument for k outside {1, 2}, top-2 over one expert or a
    /// negative capacity
    void configure(const MoESettings& settings, std::size_t fewest_experts) {
        if (settings.k != 1 && settings.k != 2)
            throw std::invalid_argument("MoE: k = " + std::to_string(settings.k) + "; DeepSpeed's MoE takes 1 or 2");
        if (settings.k == 2 && fewest_experts < 2)
            throw std::invalid_argument("MoE: top-2 gating needs at least 2 experts in every MoE layer");
        if (settings.min_capacity < 0 || settings.capacity_factor <= 0 || settings.eval_capacity_factor <= 0)
            throw std::invalid_argument("MoE: capacity factors must be positive and min_capacity not negative");
        settings_ = settings;
        rng_ = Rng(settings.seed);
    }
    const MoESettings& settings() const { return settings_; }
    void set_training(bool training) { training_ = training; }
    bool training() const { return training_; }

    /// Whether the gate sees its input × U(0.99, 1.01) (`NoisyGate::jitter`, in training).
    bool jittered() const { return training_ && settings_.noisy_gate_policy == NoisyGate::jitter; }
    /// The jitter factors of `n` input values, drawn before the routing's own draws.
    void draw_jitter(float* factors, std::size_t n) {
        for (std::size_t j = 0; j < n; ++j) factors[j] = rng_.uniform(0.99f, 1.01f);
    }

    /// Top-1 or top-2 routing (`settings().k`) of `logits`, rows of `experts`, with the
    /// training or eval capacity factor.
    Routing route(std::span<const float> logits, std::size_t experts) {
        const MoESettings& o = settings_;
        const double cf = training_ ? o.capacity_factor : o.eval_capacity_factor;
        const auto min_capacity = static_cast<std::size_t>(o.min_capacity);
        if (o.k == 1) {
            const NoisyGate noise =
                training_ && o.noisy_gate_policy == NoisyGate::rsample ? NoisyGate::rsample : NoisyGate::none;
            return top1_gating(logits, experts, cf, min_capacity, noise, o.drop_tokens, o.use_rts, rng_);
        }
        return top2_gating(logits, experts, cf, min_capacity, o.drop_tokens, o.second_expert_sampling, rng_);
    }

    /// Rows per (rank, expert) block of the all-to-all over `experts`: the largest capacity
    /// any batch up to `max_batch` can have, training or eval, so every rank sends the same
    /// block size whatever its batch.
    std::size_t block(std::size_t max_batch, std::size_t experts) const {
        const double cf = std::max(settings_.capacity_factor, settings_.eval_capacity_factor);
        if (!settings_.drop_tokens) return max_batch;
        return std::min(max_batch, expert_capacity(max_batch, experts, cf, static_cast<std::size_t>(settings_.k),
                                                   static_cast<std::size_t>(settings_.min_capacity)));
    }

private:
    MoESettings settings_{};
    Rng rng_{settings_.seed};
    bool training_ = true;
};

namespace detail {

/// "l.deepspeed_moe.experts.deepspeed_experts.i.weight" and friends, built at compile time.
struct ParamName {
    std::array<char, 128> text{};
    std::size_t size = 0;
    constexpr ParamName& add(std::string_view s) {
        for (char c : s) text.at(size++) = c;  // a longer name stops compilation, never cut
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
///
/// Expert parallelism over `Ep` ranks (`ep_size`; it sets the parameter shapes, so it is
/// part of the type — `MoE` is `Ep` = 1, `Sequential::with_expert_parallel<Ep>` rebinds):
/// EP rank ρ of each blocked group holds and runs experts ρ·E/Ep .. (ρ+1)·E/Ep − 1 of every
/// layer, on the tokens of every rank in its group; the tokens go there and back by two
/// all-to-alls in DeepSpeed's [E, C, M] layout, and the backward sends the gradients the
/// same two ways. The layer's parameters are two groups, as DeepSpeed's
/// `split_params_into_different_moe_groups_for_optimizer` makes them: `params` (gates,
/// shared MLP, coefficients: reduced over every rank) and `expert_params` (this rank's
/// experts, named by local index like DeepSpeed's module: reduced over the
/// expert-data-parallel group). `l_aux` is computed (see `aux_losses()`) but, as in the
/// example, not trained on.
template <std::size_t Ep, class Expert, MoEMlp Mlp, std::size_t... Experts>
struct BasicMoE {
    static_assert(sizeof...(Experts) > 0, "ds::nn::MoE: give at least one expert count");
    static_assert(((Experts > 0) && ...), "ds::nn::MoE: an MoE layer needs at least one expert");
    static_assert(Ep > 0 && ((Experts % Ep == 0) && ...),
                  "ds::nn::MoE: ep_size must divide every layer's number of experts (num_experts % ep_size == 0)");

    /// The same layers with their experts split over `E` ranks.
    template <std::size_t E>
    using with_ep_size = BasicMoE<E, Expert, Mlp, Experts...>;
    static constexpr std::size_t ep_size = Ep;

    template <class Input>
    struct Bound {
        static constexpr std::size_t M = Input::size;
        using expert_t = typename Expert::template Bound<Features<M>>;
        static_assert(expert_t::output_shape::size == M, "ds::nn::MoE: the expert must map the hidden size to itself");
        using input_shape = Input;
        using output_shape = Input;
        static constexpr std::size_t ep_size = Ep;
        static constexpr std::size_t layers = sizeof...(Experts);
        static constexpr std::array<std::size_t, layers> experts{Experts...};
        static constexpr std::array<std::size_t, layers> local_experts{(Experts / Ep)...};
        static constexpr bool residual = Mlp == MoEMlp::residual;
        static constexpr std::size_t expert_size = [] {
            std::size_t n = 0;
            for (const auto& p : expert_t::params) n += p.shape.numel();
            return n;
        }();

        static constexpr std::size_t dense_tensors =
            (residual ? expert_t::params.size() : 0) + layers * (residual ? 3 : 1);
        static constexpr std::size_t expert_tensors = ((Experts / Ep) + ... + 0) * expert_t::params.size();
        static constexpr auto dense_names = [] {
            std::array<detail::ParamName, dense_tensors> n{};
            std::size_t t = 0;
            for (std::size_t i = 0; i < layers; ++i) {
                n[t++].add(i).add(".deepspeed_moe.gate.wg.weight");
                if (residual && i == 0)
                    for (const auto& p : expert_t::params) n[t++].add("0.mlp.").add(p.name);
                if (residual) {
                    n[t++].add(i).add(".coefficient.weight");
                    n[t++].add(i).add(".coefficient.bias");
                }
            }
            return n;
        }();
        static constexpr auto expert_names = [] {
            std::array<detail::ParamName, expert_tensors> n{};
            std::size_t t = 0;
            for (std::size_t i = 0; i < layers; ++i)
                for (std::size_t e = 0; e < local_experts[i]; ++e)
                    for (const auto& p : expert_t::params)
                        n[t++].add(i).add(".deepspeed_moe.experts.deepspeed_experts.").add(e).add(".").add(p.name);
            return n;
        }();
        /// The dense tensors in PyTorch's registration order (gate, mlp, coefficient per
        /// layer), so the offsets `Sequential` assigns follow it.
        static constexpr auto params = [] {
            std::array<ParamSpec, dense_tensors> p{};
            std::size_t t = 0;
            const auto next = [&](TensorShape shape) {
                p[t] = {std::string_view(dense_names[t].text.data(), dense_names[t].size), shape};
                ++t;
            };
            for (std::size_t i = 0; i < layers; ++i) {
                next({2, {experts[i], M}});
                if (residual && i == 0)
                    for (const auto& q : expert_t::params) next(q.shape);
                if (residual) {
                    next({2, {2, M}});
                    next({1, {2}});
                }
            }
            return p;
        }();
        /// This rank's experts, layer by layer, each expert's tensors in order.
        static constexpr auto expert_params = [] {
            std::array<ParamSpec, expert_tensors> p{};
            std::size_t t = 0;
            for (std::size_t i = 0; i < layers; ++i)
                for (std::size_t e = 0; e < local_experts[i]; ++e)
                    for (const auto& q : expert_t::params) {
                        p[t] = {std::string_view(expert_names[t].text.data(), expert_names[t].size), q.shape};
                        ++t;
                    }
            return p;
        }();
        /// Elements of each layer's local experts, in order: expert parallelism gives EP rank
        /// ρ block ρ of each layer's experts (`Sequential::global_offset`).
        static constexpr auto expert_blocks = [] {
            std::array<std::size_t, layers> b{};
            for (std::size_t i = 0; i < layers; ++i) b[i] = local_experts[i] * expert_size;
            return b;
        }();

        /// Bytes of the activations, routing queues, all-to-all blocks and backward work
        /// (the blocks follow the capacity, the queues the last batch).
        std::size_t buffer_bytes() const {
            const auto bytes = [](const auto& v) { return v.size() * sizeof(v[0]); };
            std::size_t n = buffer_bytes_of(mlp_);
            for (const auto& l : state_) {
                for (const auto& q : l.queues) n += bytes(q.tokens) + bytes(q.choices);
                for (const auto& e : l.local)
                    n += buffer_bytes_of(e.layer) + bytes(e.x) + bytes(e.y) + bytes(e.dy) + bytes(e.dx);
                n += bytes(l.sent) + bytes(l.received) + bytes(l.returned);
                for (const auto* v : {&l.input, &l.gate_input, &l.jitter, &l.logits, &l.moe_out, &l.mlp_out, &l.coef})
                    n += bytes(*v);
            }
            for (const auto* v : {&outbox_, &inbox_, &work_, &work2_, &scaled_, &d_mlp_, &mlp_dx_, &gate_dx_, &dz_,
                                  &d_weight_})
                n += bytes(*v);
            return n;
        }

        void reserve(std::size_t max_batch) {
            max_batch_ = max_batch;
            for (std::size_t i = 0; i < layers; ++i) {
                auto& l = state_[i];
                l.queues.resize(experts[i]);
                for (auto& q : l.queues) q.tokens.reserve(max_batch), q.choices.reserve(max_batch);
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
            resize_exchange_buffers();
        }

        /// PyTorch's defaults: one draw of the expert for every expert and the shared MLP;
        /// each gate and coefficient as `nn.Linear` (U(±1/√M)). The same draws whatever Ep,
        /// so every rank's experts start as the experts of one rank would.
        static void init(float* w, float* experts_w, Rng& rng) {
            std::vector<float> draw(expert_size);
            expert_t::init(draw.data(), rng);
            const float bound = 1.0f / std::sqrt(static_cast<float>(M));
            for (std::size_t i = 0; i < layers; ++i) {
                float* gate = w + offset_of_gate(i);
                for (std::size_t j = 0; j < experts[i] * M; ++j) gate[j] = rng.uniform(-bound, bound);
                for (std::size_t e = 0; e < local_experts[i]; ++e)
                    std::copy(draw.begin(), draw.end(), experts_w + offset_of_expert(i, e));
                if (residual) {
                    float* c = w + offset_of_coefficient(i);
                    for (std::size_t j = 0; j < 2 * M + 2; ++j) c[j] = rng.uniform(-bound, bound);
                }
            }
            if (residual) std::copy(draw.begin(), draw.end(), w + offset_of_mlp());
        }

        void set_training(bool training) { router_.set_training(training); }

        /// This rank's expert-parallel group (Ep ranks; `ds::Engine` builds it), over which
        /// the tokens travel. With Ep > 1 every forward and backward is collective over it.
        /// @throws std::invalid_argument when the group is not of Ep ranks
        void set_expert_parallel_group(comm::ExpertExchange* group) {
            check_expert_parallel_group(group);
            group_ = group;
        }
        /// @throws std::invalid_argument unless `group` fits a layer split over Ep ranks
        static void check_expert_parallel_group(const comm::ExpertExchange* group) {
            if constexpr (Ep > 1) {
                if (!group || static_cast<std::size_t>(group->size()) != Ep)
                    throw std::invalid_argument("MoE: ep_size " + std::to_string(Ep) +
                                                " needs an expert-parallel group of that size");
            } else if (group && group->size() != 1) {
                throw std::invalid_argument("MoE: an expert-parallel group of " + std::to_string(group->size()) +
                                            " ranks for a layer built with ep_size 1 (with_expert_parallel<N>)");
            }
        }

        /// Applies `settings` (`MoERouter::configure`).
        /// @throws std::invalid_argument for k outside {1, 2}, top-2 over one expert or a
        /// negative capacity
        void configure(const MoESettings& settings) {
            router_.configure(settings, *std::min_element(experts.begin(), experts.end()));
            resize_exchange_buffers();
        }
        const MoESettings& settings() const { return router_.settings(); }

        void forward(const float* x, float* y, std::size_t batch, const float* w, const float* experts_w) {
            // Each layer keeps its input for the backward: layer 0 copies x, the others are
            // written there by the layer before.
            std::copy_n(x, batch * M, state_[0].input.data());
            for (std::size_t i = 0; i < layers; ++i) {
                float* out = i + 1 == layers ? y : state_[i + 1].input.data();
                forward_layer(i, state_[i].input.data(), out, batch, w, experts_w);
            }
        }

        void backward(const float* /*x*/, const float* /*y*/, float* dy, float* dx, std::size_t batch, const float* w,
                      float* dw, const float* experts_w, float* experts_dw) {
            // The gradient runs back through the layers, ping-ponging between two buffers.
            const float* grad = dy;
            float* next = work_.data();
            float* spare = work2_.data();
            for (std::size_t i = layers; i-- > 0;) {
                backward_layer(i, grad, next, batch, w, dw, experts_w, experts_dw);
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
        /// Seconds spent in the forwards so far, as DeepSpeed's MoE timers split them.
        const MoETimings& timings() const { return timings_; }
        void reset_timings() { timings_ = {}; }

        // Dense offsets as `Sequential` lays out `params`: gate, [mlp], [coefficient] per layer.
        static constexpr std::size_t offset_of_gate(std::size_t i) {
            std::size_t at = 0;
            for (std::size_t l = 0; l < i; ++l) at += dense_size(l);
            return at;
        }
        static constexpr std::size_t dense_size(std::size_t l) {
            return experts[l] * M + (residual && l == 0 ? expert_size : 0) + (residual ? 2 * M + 2 : 0);
        }
        static constexpr std::size_t offset_of_mlp() { return experts[0] * M; }
        static constexpr std::size_t offset_of_coefficient(std::size_t i) {
            return offset_of_gate(i) + experts[i] * M + (residual && i == 0 ? expert_size : 0);
        }
        /// Local expert λ of layer i in the expert parameters.
        static constexpr std::size_t offset_of_expert(std::size_t i, std::size_t lambda) {
            std::size_t at = 0;
            for (std::size_t l = 0; l < i; ++l) at += expert_blocks[l];
            return at + lambda * expert_size;
        }

    private:
        /// This rank's kept tokens for one expert, in slot order (the kept slots of every
        /// expert are a prefix 0, 1, ..., n−1: top-1 and top-2 number them by cumsum).
        struct Queue {
            std::vector<std::size_t> tokens;   ///< token of each slot
            std::vector<std::size_t> choices;  ///< index into the routing's choices of each slot
        };
        /// One of this rank's experts and the rows it ran on: the tokens every rank of the
        /// expert-parallel group sent it, packed.
        struct LocalExpert {
            expert_t layer{};
            std::vector<float> x, y, dy, dx;
            std::size_t rows = 0;
        };
        struct LayerState {
            std::vector<Queue> queues;         ///< per expert (all E)
            std::vector<LocalExpert> local;    ///< E / ep_size
            std::vector<std::int32_t> sent;    ///< rows this rank sent each expert
            std::vector<std::int32_t> received;  ///< [ep][local expert]: rows each rank sent each local expert
            std::vector<float> returned;       ///< [E][block][M]: the experts' outputs for this rank's tokens
            std::size_t block = 0;             ///< rows per (rank, expert) block of the all-to-all: the largest capacity
            std::vector<float> input, gate_input, jitter, logits, moe_out, mlp_out, coef;
            Routing routing;
        };

        static constexpr std::size_t ep() { return Ep; }

        /// Sizes what depends on the settings: the all-to-all blocks hold the largest
        /// capacity any batch up to the micro batch can have (training or eval), so every
        /// rank sends the same block size whatever its batch.
        void resize_exchange_buffers() {
            std::size_t widest = 0;
            for (std::size_t i = 0; i < layers; ++i) {
                LayerState& l = state_[i];
                l.block = router_.block(max_batch_, experts[i]);
                l.local.resize(local_experts[i]);
                for (auto& e : l.local) {
                    e.layer.reserve(ep() * l.block);
                    for (auto* b : {&e.x, &e.y, &e.dy, &e.dx}) b->resize(ep() * l.block * M);
                }
                l.sent.resize(experts[i]);
                l.received.resize(experts[i]);
                l.returned.resize(experts[i] * l.block * M);
                widest = std::max(widest, experts[i] * l.block * M);
            }
            outbox_.resize(widest);
            inbox_.resize(widest);
        }

        /// The all-to-all over the expert-parallel group: block ρ of `from` (expert
        /// ρ·L .. ρ·L + L − 1, L local experts) goes to EP rank ρ. A copy without one.
        template <class V>
        void exchange(const V* from, V* to, std::size_t n) {
            if (group_) group_->all_to_all(from, to, n / ep());
            else std::copy_n(from, n, to);
        }

        /// Calls f(rows, at) for each run of rows local expert λ received: `at` is where the
        /// run starts in the inbox, and runs come in EP-rank order.
        template <class F>
        void for_each_run(const LayerState& l, std::size_t lambda, F&& f) const {
            const std::size_t L = l.local.size();
            for (std::size_t rho = 0; rho < ep(); ++rho) {
                const auto rows = static_cast<std::size_t>(l.received[rho * L + lambda]);
                if (rows) f(rows, (rho * L + lambda) * l.block * M);
            }
        }
        /// Packs what local expert λ received from `inbox` into `rows`, or back.
        void gather(const LayerState& l, std::size_t lambda, const float* inbox, float* rows) const {
            std::size_t at = 0;
            for_each_run(l, lambda, [&](std::size_t n, std::size_t from) {
                std::copy_n(inbox + from, n * M, rows + at);
                at += n * M;
            });
        }
        void scatter(const LayerState& l, std::size_t lambda, const float* rows, float* inbox) const {
            std::size_t at = 0;
            for_each_run(l, lambda, [&](std::size_t n, std::size_t to) {
                std::copy_n(rows + at, n * M, inbox + to);
                at += n * M;
            });
        }

        void forward_layer(std::size_t i, const float* x, float* y, std::size_t batch, const float* w,
                           const float* experts_w) {
            if (Ep > 1 && !group_)
                throw std::logic_error("MoE: ep_size " + std::to_string(Ep) +
                                       " but no expert-parallel group (ds::Engine sets it; see set_expert_parallel_group)");
            using clock = std::chrono::steady_clock;
            LayerState& l = state_[i];
            const std::size_t E = experts[i], B = l.block, L = l.local.size();
            const auto gate_start = clock::now();
            // Gate, in fp32 (Jitter: the gate sees x · U(0.99, 1.01) in training).
            const float* gate_x = x;
            if (router_.jittered()) {
                router_.draw_jitter(l.jitter.data(), batch * M);
                for (std::size_t j = 0; j < batch * M; ++j) l.gate_input[j] = x[j] * l.jitter[j];
                gate_x = l.gate_input.data();
            }
            cpu::gemm(cpu::Op::none, cpu::Op::transpose, batch, E, M, 1.0f, gate_x, M, w + offset_of_gate(i), M, 0.0f,
                      l.logits.data(), E);
            l.routing = router_.route({l.logits.data(), batch * E}, E);
            const Routing& r = l.routing;
            for (auto& q : l.queues) q.tokens.clear(), q.choices.clear();
            for (std::size_t s = 0; s < batch; ++s)
                for (std::size_t j = 0; j < r.k; ++j)
                    if (r.kept(s, j)) {
                        Queue& q = l.queues[static_cast<std::size_t>(r.expert[s * r.k + j])];
                        const auto slot = static_cast<std::size_t>(r.slot[s * r.k + j]);
                        if (q.tokens.size() <= slot) q.tokens.resize(slot + 1), q.choices.resize(slot + 1);
                        q.tokens[slot] = s;
                        q.choices[slot] = s * r.k + j;
                    }
            const auto dispatch_start = clock::now();
            timings_.gate += std::chrono::duration<double>(dispatch_start - gate_start).count();

            // Dispatch (DeepSpeed's [E, C, M] layout): expert e's tokens fill block e; the
            // all-to-all takes each rank's blocks to the ranks that hold those experts.
            for (std::size_t e = 0; e < E; ++e) {
                const Queue& q = l.queues[e];
                if (q.tokens.size() > B)  // the capacity bound resize_exchange_buffers() sized the blocks for
                    throw std::logic_error("MoE: " + std::to_string(q.tokens.size()) + " tokens for expert " +
                                           std::to_string(e) + " exceed the all-to-all block of " + std::to_string(B));
                l.sent[e] = static_cast<std::int32_t>(q.tokens.size());
                for (std::size_t c = 0; c < q.tokens.size(); ++c)
                    std::copy_n(x + q.tokens[c] * M, M, outbox_.data() + (e * B + c) * M);
            }
            exchange(l.sent.data(), l.received.data(), E);
            exchange(outbox_.data(), inbox_.data(), E * B * M);
            const auto experts_start = clock::now();
            timings_.first_all_to_all += std::chrono::duration<double>(experts_start - dispatch_start).count();

            // Each local expert on the rows of every rank at once, outputs written back in place.
            for (std::size_t lambda = 0; lambda < L; ++lambda) {
                LocalExpert& ex = l.local[lambda];
                ex.rows = 0;
                for (std::size_t rho = 0; rho < ep(); ++rho) ex.rows += static_cast<std::size_t>(l.received[rho * L + lambda]);
                if (ex.rows == 0) continue;
                gather(l, lambda, inbox_.data(), ex.x.data());
                ex.layer.forward(ex.x.data(), ex.y.data(), ex.rows, experts_w + offset_of_expert(i, lambda));
                scatter(l, lambda, ex.y.data(), inbox_.data());
            }
            const auto combine_start = clock::now();
            exchange(inbox_.data(), l.returned.data(), E * B * M);
            timings_.second_all_to_all +=
                std::chrono::duration<double>(clock::now() - combine_start).count();

            // Combine: out[s] = Σ over s's kept choices of weight · the expert's output.
            std::fill_n(l.moe_out.begin(), batch * M, 0.0f);
            for (std::size_t e = 0; e < E; ++e) {
                const Queue& q = l.queues[e];
                for (std::size_t c = 0; c < q.tokens.size(); ++c) {
                    const float g = r.weight[q.choices[c]];
                    const float* from = l.returned.data() + (e * B + c) * M;
                    float* out = l.moe_out.data() + q.tokens[c] * M;
                    for (std::size_t m = 0; m < M; ++m) out[m] += g * from[m];
                }
            }
            if constexpr (residual) {
                mlp_.forward(x, l.mlp_out.data(), batch, w + offset_of_mlp());
                const float* wc = w + offset_of_coefficient(i);
                cpu::gemm(cpu::Op::none, cpu::Op::transpose, batch, 2, M, 1.0f, x, M, wc, M, 0.0f, l.coef.data(), 2);
                for (std::size_t s = 0; s < batch; ++s) {
                    float* c = l.coef.data() + 2 * s;
                    math::residual_coefficients(c[0] + wc[2 * M], c[1] + wc[2 * M + 1], c);
                    for (std::size_t m = 0; m < M; ++m)
                        y[s * M + m] = l.moe_out[s * M + m] * c[0] + l.mlp_out[s * M + m] * c[1];
                }
            } else {
                std::copy_n(l.moe_out.begin(), batch * M, y);
            }
        }

        /// dy: d loss / d output of MoE layer i; writes d loss / d its input to dx and adds
        /// the parameter gradients.
        void backward_layer(std::size_t i, const float* dy, float* dx, std::size_t batch, const float* w, float* dw,
                            const float* experts_w, float* experts_dw) {
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
                for (std::size_t s = 0; s < batch; ++s)
                    math::residual_backward(dy + s * M, l.coef.data() + 2 * s, l.moe_out.data() + s * M,
                                            l.mlp_out.data() + s * M, M, scaled + s * M, d_mlp + s * M, dz + 2 * s);
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
            // Combine: out[s] = Σ_j w_sj · y_e(slot); d w_sj = dy[s]·y, d y = w_sj · dy[s], sent
            // to the experts the way the tokens went.
            const std::size_t B = l.block, L = l.local.size();
            const std::span<float> d_weight(d_weight_.data(), batch * r.k);
            std::fill(d_weight.begin(), d_weight.end(), 0.0f);
            for (std::size_t e = 0; e < E; ++e) {
                const Queue& q = l.queues[e];
                for (std::size_t c = 0; c < q.tokens.size(); ++c) {
                    const std::size_t s = q.tokens[c];
                    const float g = r.weight[q.choices[c]];
                    const float* y = l.returned.data() + (e * B + c) * M;
                    float* d_y = outbox_.data() + (e * B + c) * M;
                    double dot = 0;
                    for (std::size_t m = 0; m < M; ++m) {
                        dot += double(d_moe[s * M + m]) * y[m];
                        d_y[m] = g * d_moe[s * M + m];
                    }
                    d_weight[q.choices[c]] = static_cast<float>(dot);
                }
            }
            exchange(outbox_.data(), inbox_.data(), E * B * M);
            for (std::size_t lambda = 0; lambda < L; ++lambda) {
                LocalExpert& ex = l.local[lambda];
                if (ex.rows == 0) continue;
                gather(l, lambda, inbox_.data(), ex.dy.data());
                ex.layer.backward(ex.x.data(), ex.y.data(), ex.dy.data(), ex.dx.data(), ex.rows,
                                  experts_w + offset_of_expert(i, lambda), experts_dw + offset_of_expert(i, lambda));
                scatter(l, lambda, ex.dx.data(), inbox_.data());
            }
            exchange(inbox_.data(), outbox_.data(), E * B * M);
            for (std::size_t e = 0; e < E; ++e) {
                const Queue& q = l.queues[e];
                for (std::size_t c = 0; c < q.tokens.size(); ++c) {
                    const float* from = outbox_.data() + (e * B + c) * M;
                    float* into = dx + q.tokens[c] * M;
                    for (std::size_t m = 0; m < M; ++m) into[m] += from[m];
                }
            }
            // Gate: d logits from the weights (l_aux is not trained on), then through x·Wgᵀ.
            const auto d_logits = gating_backward(r, d_weight);
            const bool jitter = router_.jittered();
            const float* gate_x = jitter ? l.gate_input.data() : x;
            cpu::gemm(cpu::Op::transpose, cpu::Op::none, E, M, batch, 1.0f, d_logits.data(), E, gate_x, M, 1.0f,
                      dw + offset_of_gate(i), M);
            float* const dgx = gate_dx_.data();
            cpu::gemm(cpu::Op::none, cpu::Op::none, batch, M, E, 1.0f, d_logits.data(), E, w + offset_of_gate(i), M, 0.0f,
                      dgx, M);
            for (std::size_t j = 0; j < batch * M; ++j) dx[j] += jitter ? dgx[j] * l.jitter[j] : dgx[j];
        }

        std::array<LayerState, layers> state_{};
        std::size_t max_batch_ = 0;
        comm::ExpertExchange* group_ = nullptr;  ///< the expert-parallel group; none when Ep is 1
        std::vector<float> outbox_, inbox_;      ///< this rank's [E][block][M] and the experts' [ep][L][block][M]
        MoETimings timings_{};
        expert_t mlp_{};
        std::vector<float> work_, work2_;  ///< the running gradient between MoE layers
        std::vector<float> scaled_, d_mlp_, mlp_dx_, gate_dx_, dz_, d_weight_;  ///< backward work
        MoERouter router_;
    };
};

/// DeepSpeed's MoE layers with every expert on every rank (`ep_size` 1); a `Sequential`
/// holding them splits the experts over N ranks as `with_expert_parallel<N>`.
template <class Expert, MoEMlp Mlp, std::size_t... Experts>
using MoE = BasicMoE<1, Expert, Mlp, Experts...>;

/// The forward timings of every MoE layer of `model` (a `Sequential`), summed.
template <class Model>
MoETimings moe_timings(Model& model) {
    MoETimings total;
    model.for_each_layer([&](auto& layer) {
        if constexpr (requires { layer.timings(); }) {
            total.gate += layer.timings().gate;
            total.first_all_to_all += layer.timings().first_all_to_all;
            total.second_all_to_all += layer.timings().second_all_to_all;
        }
    });
    return total;
}

}  // namespace ds::nn
