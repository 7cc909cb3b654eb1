#pragma once
/// @file
/// `cuda::DeviceLayer<nn::BasicMoE<...>>`: DeepSpeed's MoE layers on the GPU.
///
/// The routing is decided on the host, by the CPU layer's own `nn::MoERouter`, from the
/// gate's logits: DeepSpeed's gating also brings its expert counts to the CPU every step,
/// and sharing the router means both backends send the same tokens to the same experts and
/// draw the same noise. Everything else runs on the device: the gate and coefficient GEMMs,
/// the dispatch into DeepSpeed's [E, C, M] capacity blocks, the experts (each a
/// `DeviceLayer` over every row of its blocks: an empty slot is a zero row with a zero
/// gradient, so it adds nothing to the expert's), the all-to-alls over the expert-parallel
/// group, the weighted combine, PR-MoE's residual mix, and their backwards. Like the CPU
/// layer, it computes in fp32 on fp32 copies of its parameters and rounds its output and
/// gradients to the model's dtype once.

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_runtime_api.h>

#include <ds/comm/expert_parallel.hpp>
#include <ds/device/cuda/convert.cuh>
#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/gemm.hpp>
#include <ds/device/cuda/layer_kernels.cuh>
#include <ds/device/cuda/layers.cuh>
#include <ds/device/cuda/memory.hpp>
#include <ds/nn/gating.hpp>
#include <ds/nn/math/moe.hpp>
#include <ds/nn/moe.hpp>
#include <ds/nn/shape.hpp>

namespace ds::cuda {

namespace detail {

/// The index arrays of one routing, as the kernels read them: `slot_choice[e·B + c]` is the
/// choice (s·k + j) that slot c of expert e holds, or −1; `choice_row[s·k + j]` is the
/// row e·B + c that choice went to, or −1 when it was dropped.
struct MoEIndex {
    const std::int32_t* slot_choice;
    const std::int32_t* choice_row;
    const float* weight;  ///< each choice's combine weight
    std::size_t k, m;     ///< choices per token, hidden size
};

/// Row r of the expert blocks [E·B][M]: the token its slot holds, or 0.
struct MoEDispatch {
    MoEIndex ix;
    const float* x;
    float* rows;
    __device__ void operator()(std::size_t i) const {
        const std::int32_t c = ix.slot_choice[i / ix.m];
        rows[i] = c >= 0 ? x[(static_cast<std::size_t>(c) / ix.k) * ix.m + i % ix.m] : 0.0f;
    }
};

/// A token's kept choices (k ≤ 2: top-1 or top-2) in ascending row order, which is expert
/// order, the order the CPU layer sums them in.
struct ChoiceOrder {
    std::int32_t row[2];
    std::size_t choice[2];
    int n = 0;
    __device__ ChoiceOrder(const MoEIndex& ix, std::size_t s) {
        for (std::size_t j = 0; j < ix.k; ++j) {
            const std::int32_t r = ix.choice_row[s * ix.k + j];
            if (r < 0) continue;
            row[n] = r;
            choice[n] = s * ix.k + j;
            ++n;
        }
        if (n == 2 && row[1] < row[0]) {
            const std::int32_t r = row[0];
            row[0] = row[1], row[1] = r;
            const std::size_t c = choice[0];
            choice[0] = choice[1], choice[1] = c;
        }
    }
};

/// out[s][m] (+)= Σ over s's kept choices, in expert order, of (weight ·) the choice's row:
/// the combine (weighted, into a fresh output) and the input gradients' way back to the
/// tokens (unweighted, added to what the residual and gate parts left there).
struct MoEGather {
    MoEIndex ix;
    const float* rows;
    float* out;
    bool weighted, add;
    __device__ void operator()(std::size_t i) const {
        const std::size_t s = i / ix.m, m = i % ix.m;
        const ChoiceOrder order(ix, s);
        float sum = add ? out[i] : 0.0f;
        for (int t = 0; t < order.n; ++t) {
            const float v = rows[order.row[t] * ix.m + m];
            sum += weighted ? ix.weight[order.choice[t]] * v : v;
        }
        out[i] = sum;
    }
};

/// The combine's backward into the expert blocks: d row = weight · d out[token], 0 for an empty slot.
struct MoECombineBackward {
    MoEIndex ix;
    const float* d_out;
    float* d_rows;
    __device__ void operator()(std::size_t i) const {
        const std::int32_t c = ix.slot_choice[i / ix.m];
        d_rows[i] = c >= 0 ? ix.weight[c] * d_out[(static_cast<std::size_t>(c) / ix.k) * ix.m + i % ix.m] : 0.0f;
    }
};

/// d weight of each choice: d out[token] · the expert's output row (in double), 0 if dropped.
struct MoEWeightGradient {
    MoEIndex ix;
    const float* d_out;
    const float* returned;
    float* d_weight;
    __device__ void operator()(std::size_t c) const {
        const std::int32_t r = ix.choice_row[c];
        double dot = 0.0;
        if (r >= 0)
            for (std::size_t m = 0; m < ix.m; ++m)
                dot += double(d_out[(c / ix.k) * ix.m + m]) * returned[static_cast<std::size_t>(r) * ix.m + m];
        d_weight[c] = static_cast<float>(dot);
    }
};

/// [A][B][inner] → [B][A][inner]: the all-to-all's per-rank blocks to per-expert rows and back.
struct SwapBlocks {
    const float* in;
    float* out;
    std::size_t a, b, inner;
    __device__ void operator()(std::size_t i) const {
        const std::size_t q = i % inner, ab = i / inner, ai = ab / b, bi = ab % b;
        out[(bi * a + ai) * inner + q] = in[i];
    }
};

/// PR-MoE: c = softmax(z + bias) per token, out = moe·c₀ + mlp·c₁ (`nn::math::residual_coefficients`).
struct ResidualMix {
    const float* z;
    const float* bias;
    const float* moe;
    const float* mlp;
    float* coef;
    float* out;
    std::size_t m;
    __device__ void operator()(std::size_t i) const {
        const std::size_t s = i / m;
        float c[2];
        nn::math::residual_coefficients(z[2 * s] + bias[0], z[2 * s + 1] + bias[1], c);
        if (i % m == 0) coef[2 * s] = c[0], coef[2 * s + 1] = c[1];
        out[i] = moe[i] * c[0] + mlp[i] * c[1];
    }
};
/// One token's residual backward (`nn::math::residual_backward`).
struct ResidualBackward {
    const float* dy;
    const float* coef;
    const float* moe;
    const float* mlp;
    float* d_moe;
    float* d_mlp;
    float* dz;
    std::size_t m;
    __device__ void operator()(std::size_t s) const {
        nn::math::residual_backward(dy + s * m, coef + 2 * s, moe + s * m, mlp + s * m, m, d_moe + s * m, d_mlp + s * m,
                                    dz + 2 * s);
    }
};

/// out[j] += Σ_s in[s·cols + j]: a bias gradient over a few columns, in order.
struct AddColumnSums {
    const float* in;
    float* out;
    std::size_t rows, cols;
    __device__ void operator()(std::size_t j) const {
        float sum = out[j];
        for (std::size_t s = 0; s < rows; ++s) sum += in[s * cols + j];
        out[j] = sum;
    }
};
/// dst[i] += a[i] (· b[i] when b is given).
struct AddProduct {
    const float* a;
    const float* b;
    float* dst;
    __device__ void operator()(std::size_t i) const { dst[i] += b ? a[i] * b[i] : a[i]; }
};
/// dst[i] = a[i] · b[i].
struct Multiply {
    const float* a;
    const float* b;
    float* dst;
    __device__ void operator()(std::size_t i) const { dst[i] = a[i] * b[i]; }
};
/// dst[i] = G(float(dst[i]) + float(T(src[i]))): an fp32 gradient rounded to the model's T,
/// then added into the gradient's dtype G (`cpu::accumulate_rounded`).
template <class T, class G>
struct AccumulateRounded {
    const float* src;
    G* dst;
    __device__ void operator()(std::size_t i) const {
        dst[i] = G(static_cast<float>(dst[i]) + static_cast<float>(T(src[i])));
    }
};

}  // namespace detail

/// The MoE layers `nn::BasicMoE<Ep, Expert, Mlp, Experts...>` bound to `Input`, with the
/// model's values stored as T. The same contract as the CPU layer (`forward(x, y, batch,
/// w, experts_w)`, `backward(..., dw, experts_w, experts_dw)`, `configure`, `set_training`,
/// `set_expert_parallel_group`, `routing`, `aux_losses`, `timings`) over device pointers.
/// With Ep > 1 every forward and backward is collective over the expert-parallel group,
/// whose communicator takes device buffers (`comm::Nccl`, `comm::CudaMpi`).
template <std::size_t Ep, class Expert, nn::MoEMlp Mlp, std::size_t... Experts, class Input, class T>
struct DeviceLayer<nn::BasicMoE<Ep, Expert, Mlp, Experts...>, Input, T> {
    using layer_t = typename nn::BasicMoE<Ep, Expert, Mlp, Experts...>::template Bound<Input>;
    static constexpr std::size_t M = layer_t::M, layers = layer_t::layers;
    static constexpr bool residual = layer_t::residual;
    static constexpr std::size_t dense_count = [] {
        std::size_t n = 0;
        for (const auto& p : layer_t::params) n += p.shape.numel();
        return n;
    }();
    static constexpr std::size_t expert_count = [] {
        std::size_t n = 0;
        for (const auto& p : layer_t::expert_params) n += p.shape.numel();
        return n;
    }();
    /// Each expert (and PR-MoE's shared MLP) on the GPU, in fp32.
    using expert_layer = DeviceLayer<Expert, nn::Features<M>, float>;

    void reserve(std::size_t max_batch, LayerContext& ctx) {
        ctx_ = ctx;
        max_batch_ = max_batch;
        const std::size_t n = max_batch * M;
        for (std::size_t i = 0; i < layers; ++i) {
            LayerState& l = state_[i];
            for (auto* b : {&l.input, &l.gate_input, &l.jitter, &l.moe_out, &l.mlp_out}) *b = DeviceBuffer<float>(n);
            l.logits = DeviceBuffer<float>(max_batch * layer_t::experts[i]);
            l.coef_z = DeviceBuffer<float>(2 * max_batch);
            l.coef = DeviceBuffer<float>(2 * max_batch);
            l.host_logits.resize(max_batch * layer_t::experts[i]);
            l.host_jitter.resize(n);
        }
        for (auto* b : {&y32_, &grad_a_, &grad_b_, &d_moe_, &d_mlp_, &mlp_dx_, &gate_dx_}) *b = DeviceBuffer<float>(n);
        dz_ = DeviceBuffer<float>(2 * max_batch);
        if constexpr (residual) mlp_.reserve(max_batch, ctx_);
        if constexpr (!std::is_same_v<T, float>) {
            w32_ = DeviceBuffer<float>(dense_count);
            we32_ = DeviceBuffer<float>(expert_count);
            dw32_ = DeviceBuffer<float>(dense_count);
            dwe32_ = DeviceBuffer<float>(expert_count);
        }
        resize_exchange_buffers();
    }

    /// Device bytes of the activations, routing, all-to-all blocks, experts' work buffers
    /// and fp32 copies (they follow the capacity: `configure` may change them).
    std::size_t buffer_bytes() const {
        std::size_t n = nn::buffer_bytes_of(mlp_);
        for (const LayerState& l : state_) {
            for (const auto* b : {&l.input, &l.gate_input, &l.jitter, &l.logits, &l.weight, &l.dispatched, &l.returned,
                                  &l.expert_x, &l.expert_y, &l.moe_out, &l.mlp_out, &l.coef_z, &l.coef})
                n += b->bytes();
            n += l.index.bytes();
            for (const auto& e : l.local) n += nn::buffer_bytes_of(e);
        }
        for (const auto* b : {&outbox_, &inbox_, &d_rows_, &dx_rows_, &y32_, &grad_a_, &grad_b_, &d_moe_, &d_mlp_,
                              &mlp_dx_, &gate_dx_, &dz_, &d_weight_, &d_logits_, &w32_, &we32_, &dw32_, &dwe32_})
            n += b->bytes();
        return n;
    }

    void set_training(bool training) { router_.set_training(training); }
    /// Applies `settings` (`nn::MoERouter::configure`); the all-to-all blocks follow the capacity.
    void configure(const nn::MoESettings& settings) {
        DS_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));  // before the blocks are reallocated
        router_.configure(settings, *std::min_element(layer_t::experts.begin(), layer_t::experts.end()));
        resize_exchange_buffers();
    }
    const nn::MoESettings& settings() const { return router_.settings(); }
    void set_expert_parallel_group(comm::ExpertExchange* group) {
        layer_t::check_expert_parallel_group(group);
        group_ = group;
    }

    /// The routing of MoE layer i in the last forward (decided on the host).
    const nn::Routing& routing(std::size_t i) const { return state_[i].routing; }
    std::array<double, layers> aux_losses() const {
        std::array<double, layers> l{};
        for (std::size_t i = 0; i < layers; ++i) l[i] = state_[i].routing.l_aux;
        return l;
    }
    /// Host seconds of the forwards so far (each part waits for the device where it syncs).
    const nn::MoETimings& timings() const { return timings_; }
    void reset_timings() { timings_ = {}; }

    void forward(const T* x, T* y, std::size_t batch, const T* w, const T* experts_w, LayerContext& ctx) {
        if (Ep > 1 && !group_)
            throw std::logic_error("MoE: ep_size " + std::to_string(Ep) +
                                   " but no expert-parallel group (ds::Engine sets it; see set_expert_parallel_group)");
        const float* w32 = widened(w, w32_, dense_count, ctx.stream);
        const float* we32 = widened(experts_w, we32_, expert_count, ctx.stream);
        convert(x, state_[0].input.data(), batch * M, ctx.stream);
        float* out = output32(y);
        for (std::size_t i = 0; i < layers; ++i)
            forward_layer(i, batch, i + 1 == layers ? out : state_[i + 1].input.data(), w32, we32, ctx);
        if constexpr (!std::is_same_v<T, float>) convert(out, y, batch * M, ctx.stream);
    }

    template <class G>
    void backward(const T* /*x*/, const T* /*y*/, const T* dy, T* dx, std::size_t batch, const T* w, G* dw,
                  const T* experts_w, G* experts_dw, LayerContext& ctx) {
        constexpr bool direct = std::is_same_v<T, float> && std::is_same_v<G, float>;
        const float* w32 = widened(w, w32_, dense_count, ctx.stream);
        const float* we32 = widened(experts_w, we32_, expert_count, ctx.stream);
        float* dw32;
        float* dwe32;
        if constexpr (direct) {
            dw32 = dw, dwe32 = experts_dw;
        } else {
            dw32 = dw32_.data(), dwe32 = dwe32_.data();
            DS_CUDA_CHECK(cudaMemsetAsync(dw32, 0, dw32_.bytes(), ctx.stream));
            DS_CUDA_CHECK(cudaMemsetAsync(dwe32, 0, dwe32_.bytes(), ctx.stream));
        }
        // The gradient runs back through the layers, ping-ponging between two buffers.
        float* grad = grad_a_.data();
        float* next = grad_b_.data();
        convert(dy, grad, batch * M, ctx.stream);
        for (std::size_t i = layers; i-- > 0;) {
            backward_layer(i, batch, grad, next, w32, dw32, we32, dwe32, ctx);
            std::swap(grad, next);
        }
        if (dx) convert(grad, dx, batch * M, ctx.stream);
        if constexpr (!direct) {
            detail::for_each_index(dense_count, detail::AccumulateRounded<plain_t<T>, plain_t<G>>{dw32, dw}, ctx.stream);
            detail::for_each_index(expert_count, detail::AccumulateRounded<plain_t<T>, plain_t<G>>{dwe32, experts_dw},
                                   ctx.stream);
        }
    }

private:
    /// One MoE layer's device buffers, the routing of its last forward and its experts.
    struct LayerState {
        DeviceBuffer<float> input, gate_input, jitter, logits;  ///< [S×M], [S×M], [S×M], [S×E]
        std::vector<float> host_logits, host_jitter;
        nn::Routing routing;
        std::vector<std::int32_t> host_index;  ///< slot_choice [E·B], then choice_row [S·k]
        std::vector<float> host_weight;        ///< [S·k]
        std::vector<float> host_d_logits;      ///< the backward's d loss / d logits, [S×E]
        DeviceBuffer<std::int32_t> index;
        DeviceBuffer<float> weight;
        std::size_t block = 0;  ///< B: rows per (rank, expert) block, the largest capacity
        /// [E][B][M]: this rank's tokens in their experts' blocks (with Ep = 1, the experts' inputs)
        DeviceBuffer<float> dispatched;
        /// [E][B][M]: the experts' outputs for those rows
        DeviceBuffer<float> returned;
        /// Ep > 1: [L][Ep·B][M], each local expert's rows from every rank of the group, and its outputs
        DeviceBuffer<float> expert_x, expert_y;
        std::vector<expert_layer> local;  ///< this rank's experts
        DeviceBuffer<float> moe_out, mlp_out, coef_z, coef;
    };

    static const float* widened(const T* values, DeviceBuffer<float>& wide, std::size_t n, cudaStream_t stream) {
        if constexpr (std::is_same_v<T, float>) {
            return values;
        } else {
            convert(values, wide.data(), n, stream);
            return wide.data();
        }
    }
    float* output32(T* y) {
        if constexpr (std::is_same_v<T, float>) return y;
        else return y32_.data();
    }

    void resize_exchange_buffers() {
        std::size_t widest = 0;
        for (std::size_t i = 0; i < layers; ++i) {
            LayerState& l = state_[i];
            const std::size_t E = layer_t::experts[i], L = layer_t::local_experts[i];
            l.block = router_.block(max_batch_, E);
            const std::size_t rows = E * l.block;
            l.dispatched = DeviceBuffer<float>(rows * M);
            l.returned = DeviceBuffer<float>(rows * M);
            if constexpr (Ep > 1) {
                l.expert_x = DeviceBuffer<float>(rows * M);
                l.expert_y = DeviceBuffer<float>(rows * M);
            }
            l.index = DeviceBuffer<std::int32_t>(rows + 2 * max_batch_);
            l.weight = DeviceBuffer<float>(2 * max_batch_);
            l.host_index.resize(rows + 2 * max_batch_);
            l.host_weight.resize(2 * max_batch_);
            l.local.resize(L);
            for (auto& e : l.local) e.reserve(Ep * l.block, ctx_);
            widest = std::max(widest, rows * M);
        }
        for (auto* b : {&outbox_, &inbox_, &d_rows_, &dx_rows_}) *b = DeviceBuffer<float>(widest);
        d_weight_ = DeviceBuffer<float>(2 * max_batch_);
        host_d_weight_.resize(2 * max_batch_);
        d_logits_ = DeviceBuffer<float>(max_batch_ * *std::max_element(layer_t::experts.begin(), layer_t::experts.end()));
    }

    detail::MoEIndex index_of(const LayerState& l, std::size_t E) const {
        return {l.index.data(), l.index.data() + E * l.block, l.weight.data(), l.routing.k, M};
    }

    /// The all-to-all over the expert-parallel group, after the compute stream's work: the
    /// group's collectives are not ordered after this stream, so the host waits for it.
    void exchange(const float* from, float* to, std::size_t n, cudaStream_t stream) {
        DS_CUDA_CHECK(cudaStreamSynchronize(stream));
        group_->all_to_all(from, to, n / Ep);
    }

    /// The routing's index arrays on the host, uploaded (the host copies stay until the next
    /// forward of this layer, which first waits for the stream).
    void upload_index(LayerState& l, std::size_t E, std::size_t batch, cudaStream_t stream) {
        const nn::Routing& r = l.routing;
        const std::size_t B = l.block, rows = E * B;
        std::fill_n(l.host_index.begin(), rows + batch * r.k, -1);
        std::fill_n(l.host_weight.begin(), batch * r.k, 0.0f);
        for (std::size_t s = 0; s < batch; ++s)
            for (std::size_t j = 0; j < r.k; ++j) {
                if (!r.kept(s, j)) continue;
                const std::size_t c = s * r.k + j, e = static_cast<std::size_t>(r.expert[c]),
                                  slot = static_cast<std::size_t>(r.slot[c]);
                if (slot >= B)  // the capacity bound resize_exchange_buffers() sized the blocks for
                    throw std::logic_error("MoE: slot " + std::to_string(slot) + " of expert " + std::to_string(e) +
                                           " is outside the all-to-all block of " + std::to_string(B));
                l.host_index[e * B + slot] = static_cast<std::int32_t>(c);
                l.host_index[rows + c] = static_cast<std::int32_t>(e * B + slot);
                l.host_weight[c] = r.weight[c];
            }
        DS_CUDA_CHECK(cudaMemcpyAsync(l.index.data(), l.host_index.data(), (rows + batch * r.k) * sizeof(std::int32_t),
                                      cudaMemcpyHostToDevice, stream));
        DS_CUDA_CHECK(cudaMemcpyAsync(l.weight.data(), l.host_weight.data(), batch * r.k * sizeof(float),
                                      cudaMemcpyHostToDevice, stream));
    }

    void forward_layer(std::size_t i, std::size_t batch, float* y, const float* w, const float* experts_w,
                       LayerContext& ctx) {
        using clock = std::chrono::steady_clock;
        LayerState& l = state_[i];
        const std::size_t E = layer_t::experts[i], B = l.block, L = layer_t::local_experts[i];
        const cudaStream_t stream = ctx.stream;
        Gemm& gemm = *ctx.gemm;
        const float* x = l.input.data();
        const auto gate_start = clock::now();
        // Gate, in fp32 (Jitter: the gate sees x · U(0.99, 1.01) in training), and the
        // routing on the host from its logits.
        const float* gate_x = x;
        if (router_.jittered()) {
            router_.draw_jitter(l.host_jitter.data(), batch * M);
            DS_CUDA_CHECK(cudaMemcpyAsync(l.jitter.data(), l.host_jitter.data(), batch * M * sizeof(float),
                                          cudaMemcpyHostToDevice, stream));
            detail::for_each_index(batch * M, detail::Multiply{x, l.jitter.data(), l.gate_input.data()}, stream);
            gate_x = l.gate_input.data();
        }
        gemm(Op::none, Op::transpose, batch, E, M, 1.0f, gate_x, M, w + layer_t::offset_of_gate(i), M, 0.0f,
             l.logits.data(), E, stream);
        DS_CUDA_CHECK(cudaMemcpyAsync(l.host_logits.data(), l.logits.data(), batch * E * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream));
        DS_CUDA_CHECK(cudaStreamSynchronize(stream));
        l.routing = router_.route({l.host_logits.data(), batch * E}, E);
        upload_index(l, E, batch, stream);
        const detail::MoEIndex ix = index_of(l, E);
        detail::for_each_index(E * B * M, detail::MoEDispatch{ix, x, l.dispatched.data()}, stream);
        const auto dispatch_start = clock::now();
        timings_.gate += std::chrono::duration<double>(dispatch_start - gate_start).count();

        // The experts, each over every row of its blocks (DeepSpeed's [E, C, M] layout).
        if constexpr (Ep == 1) {
            for (std::size_t e = 0; e < E; ++e)
                l.local[e].forward(l.dispatched.data() + e * B * M, l.returned.data() + e * B * M, B,
                                   experts_w + layer_t::offset_of_expert(i, e), ctx);
        } else {
            exchange(l.dispatched.data(), inbox_.data(), E * B * M, stream);  // [Ep][L][B][M]
            const auto experts_start = clock::now();
            timings_.first_all_to_all += std::chrono::duration<double>(experts_start - dispatch_start).count();
            detail::for_each_index(E * B * M, detail::SwapBlocks{inbox_.data(), l.expert_x.data(), Ep, L, B * M}, stream);
            for (std::size_t lambda = 0; lambda < L; ++lambda)
                l.local[lambda].forward(l.expert_x.data() + lambda * Ep * B * M, l.expert_y.data() + lambda * Ep * B * M,
                                        Ep * B, experts_w + layer_t::offset_of_expert(i, lambda), ctx);
            detail::for_each_index(E * B * M, detail::SwapBlocks{l.expert_y.data(), outbox_.data(), L, Ep, B * M}, stream);
            const auto combine_start = clock::now();
            exchange(outbox_.data(), l.returned.data(), E * B * M, stream);
            timings_.second_all_to_all += std::chrono::duration<double>(clock::now() - combine_start).count();
        }

        if constexpr (residual) {
            detail::for_each_index(batch * M, detail::MoEGather{ix, l.returned.data(), l.moe_out.data(), true, false}, stream);
            mlp_.forward(x, l.mlp_out.data(), batch, w + layer_t::offset_of_mlp(), ctx);
            const float* wc = w + layer_t::offset_of_coefficient(i);
            gemm(Op::none, Op::transpose, batch, 2, M, 1.0f, x, M, wc, M, 0.0f, l.coef_z.data(), 2, stream);
            detail::for_each_index(batch * M,
                                   detail::ResidualMix{l.coef_z.data(), wc + 2 * M, l.moe_out.data(), l.mlp_out.data(),
                                                       l.coef.data(), y, M},
                                   stream);
        } else {
            detail::for_each_index(batch * M, detail::MoEGather{ix, l.returned.data(), y, true, false}, stream);
        }
    }

    /// dy: d loss / d output of MoE layer i; writes d loss / d its input to dx and adds
    /// the parameter gradients (fp32).
    void backward_layer(std::size_t i, std::size_t batch, const float* dy, float* dx, const float* w, float* dw,
                        const float* experts_w, float* experts_dw, LayerContext& ctx) {
        LayerState& l = state_[i];
        const std::size_t E = layer_t::experts[i], B = l.block, L = layer_t::local_experts[i], k = l.routing.k;
        const cudaStream_t stream = ctx.stream;
        Gemm& gemm = *ctx.gemm;
        const float* x = l.input.data();
        const float* d_moe = dy;
        if constexpr (residual) {
            // out = moe·c₀ + mlp·c₁: the coefficient's gradient, then the shared MLP's.
            detail::for_each_index(batch,
                                   detail::ResidualBackward{dy, l.coef.data(), l.moe_out.data(), l.mlp_out.data(),
                                                            d_moe_.data(), d_mlp_.data(), dz_.data(), M},
                                   stream);
            const float* wc = w + layer_t::offset_of_coefficient(i);
            float* dwc = dw + layer_t::offset_of_coefficient(i);
            gemm(Op::transpose, Op::none, 2, M, batch, 1.0f, dz_.data(), 2, x, M, 1.0f, dwc, M, stream);
            detail::for_each_index(2, detail::AddColumnSums{dz_.data(), dwc + 2 * M, batch, 2}, stream);
            gemm(Op::none, Op::none, batch, M, 2, 1.0f, dz_.data(), 2, wc, M, 0.0f, dx, M, stream);
            mlp_.backward(x, l.mlp_out.data(), d_mlp_.data(), mlp_dx_.data(), batch, w + layer_t::offset_of_mlp(),
                          dw + layer_t::offset_of_mlp(), ctx);
            detail::for_each_index(batch * M, detail::AddProduct{mlp_dx_.data(), nullptr, dx}, stream);
            d_moe = d_moe_.data();
        } else {
            DS_CUDA_CHECK(cudaMemsetAsync(dx, 0, batch * M * sizeof(float), stream));
        }
        // Combine: d weight = d out · the expert's row; d row = weight · d out, sent back to
        // the experts the way the tokens went, and their input gradients back to the tokens.
        const detail::MoEIndex ix = index_of(l, E);
        detail::for_each_index(batch * k, detail::MoEWeightGradient{ix, d_moe, l.returned.data(), d_weight_.data()},
                               stream);
        detail::for_each_index(E * B * M, detail::MoECombineBackward{ix, d_moe, d_rows_.data()}, stream);
        if constexpr (Ep == 1) {
            for (std::size_t e = 0; e < E; ++e)
                l.local[e].backward(l.dispatched.data() + e * B * M, l.returned.data() + e * B * M,
                                    d_rows_.data() + e * B * M, dx_rows_.data() + e * B * M, B,
                                    experts_w + layer_t::offset_of_expert(i, e),
                                    experts_dw + layer_t::offset_of_expert(i, e), ctx);
        } else {
            exchange(d_rows_.data(), inbox_.data(), E * B * M, stream);
            detail::for_each_index(E * B * M, detail::SwapBlocks{inbox_.data(), outbox_.data(), Ep, L, B * M}, stream);
            for (std::size_t lambda = 0; lambda < L; ++lambda) {
                const std::size_t at = lambda * Ep * B * M;
                l.local[lambda].backward(l.expert_x.data() + at, l.expert_y.data() + at, outbox_.data() + at,
                                         inbox_.data() + at, Ep * B, experts_w + layer_t::offset_of_expert(i, lambda),
                                         experts_dw + layer_t::offset_of_expert(i, lambda), ctx);
            }
            detail::for_each_index(E * B * M, detail::SwapBlocks{inbox_.data(), outbox_.data(), L, Ep, B * M}, stream);
            exchange(outbox_.data(), dx_rows_.data(), E * B * M, stream);
        }
        detail::for_each_index(batch * M, detail::MoEGather{ix, dx_rows_.data(), dx, false, true}, stream);

        // Gate: d logits from the weights on the host (l_aux is not trained on), then through x·Wgᵀ.
        DS_CUDA_CHECK(cudaMemcpyAsync(host_d_weight_.data(), d_weight_.data(), batch * k * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream));
        DS_CUDA_CHECK(cudaStreamSynchronize(stream));
        l.host_d_logits = nn::gating_backward(l.routing, {host_d_weight_.data(), batch * k});
        DS_CUDA_CHECK(cudaMemcpyAsync(d_logits_.data(), l.host_d_logits.data(), batch * E * sizeof(float),
                                      cudaMemcpyHostToDevice, stream));
        const bool jitter = router_.jittered();
        const float* gate_x = jitter ? l.gate_input.data() : x;
        gemm(Op::transpose, Op::none, E, M, batch, 1.0f, d_logits_.data(), E, gate_x, M, 1.0f,
             dw + layer_t::offset_of_gate(i), M, stream);
        gemm(Op::none, Op::none, batch, M, E, 1.0f, d_logits_.data(), E, w + layer_t::offset_of_gate(i), M, 0.0f,
             gate_dx_.data(), M, stream);
        detail::for_each_index(batch * M, detail::AddProduct{gate_dx_.data(), jitter ? l.jitter.data() : nullptr, dx},
                               stream);
    }

    std::array<LayerState, layers> state_{};
    LayerContext ctx_{};
    std::size_t max_batch_ = 0;
    nn::MoERouter router_;
    comm::ExpertExchange* group_ = nullptr;  ///< the expert-parallel group; none when Ep is 1
    expert_layer mlp_{};                      ///< PR-MoE's shared MLP
    DeviceBuffer<float> outbox_, inbox_, d_rows_, dx_rows_;  ///< [E][B][M] blocks, sized for the widest layer
    DeviceBuffer<float> y32_, grad_a_, grad_b_, d_moe_, d_mlp_, mlp_dx_, gate_dx_, dz_, d_weight_, d_logits_;
    DeviceBuffer<float> w32_, we32_, dw32_, dwe32_;  ///< fp32 copies of 2-byte parameters and their gradients
    std::vector<float> host_d_weight_;
    nn::MoETimings timings_{};
};

}  // namespace ds::cuda
