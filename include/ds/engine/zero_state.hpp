#pragma once
/// @file
/// `ds::ZeroState`: the model states of one rank as ZeRO stage S keeps them, and the
/// collectives that keep them consistent (DESIGN: "The ZeRO stages as traits", SPEC §5-6).

#include <algorithm>
#include <cstddef>
#include <deque>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <ds/comm/communicator.hpp>
#include <ds/config/config.hpp>
#include <ds/device/cpu/convert.hpp>
#include <ds/device/cpu/simd.hpp>
#include <ds/engine/flat_optimizer.hpp>
#include <ds/engine/partition.hpp>
#include <ds/policy/precision.hpp>
#include <ds/policy/zero.hpp>

namespace ds {

/// Which way the model is being run: stage 3 prefetches the next layer in this order.
enum class Pass { forward, backward };

/// Parameters and gradients of `Model` on one data-parallel rank.
///
/// | stage | parameters | gradients | reduction |
/// |---|---|---|---|
/// | 0 | full | full | all-reduce at the boundary, in `reduce_bucket_size` buckets |
/// | 1 | full | full, then this rank's shard | reduce-scatter at the boundary |
/// | 2 | full | this rank's shard only | bucketed reduce-scatter as backward finishes each layer, every micro-step |
/// | 3 | this rank's chunk of every tensor | this rank's chunks | gather each layer before its forward and backward; reduce-scatter each layer's gradient |
///
/// The optimizer sees `shard_params()` / `shard_grads()`: the whole model at stage 0, this
/// rank's partition otherwise. Gradients are averaged over the ranks (SPEC §5.3). With
/// `reduce_scatter: false`, stages 1-2 all-reduce instead and keep their slice; with
/// `overlap_comm`, stage 2 keeps up to two bucket reductions in flight during backward.
///
/// Precision `P` sets the dtypes: parameters in `P::compute_type`, gradients (accumulated,
/// reduced and communicated) in `grad_accumulation_t<P, Z>`, and with mixed precision an
/// fp32 master copy of exactly the optimizer's partition, rounded into the parameters after
/// every step — the ZeRO paper's 2Ψ + 2Ψ + 12Ψ split.
template <zero_policy Z, precision_policy P, class Model, comm::communicator Comm>
class ZeroState {
public:
    static constexpr std::size_t psi = Model::param_count;
    using Range = typename Model::LayerRange;
    using compute_type = typename P::compute_type;    ///< the model's parameters
    using grad_type = grad_accumulation_t<P, Z>;      ///< gradients as accumulated
    static constexpr bool has_master = P::has_master_weights;

    ZeroState(Comm& comm, const Config& cfg, std::span<const float> initial)
        : comm_(comm), cfg_(cfg), rank_(static_cast<std::size_t>(comm.rank())),
          ranks_(static_cast<std::size_t>(comm.size())), flat_(psi, ranks_), tensors_(segments(), ranks_) {
        std::size_t widest = 0;
        for (const auto& r : Model::layer_ranges) widest = std::max(widest, r.count);
        if constexpr (Z::partitions_parameters) {
            params_.assign(tensors_.shard, compute_type{});
            grads_.assign(tensors_.shard, grad_type{});
            layer_params_.resize(widest);
            layer_grads_.resize(widest);
            std::size_t widest_tensor = 0;
            for (const auto& t : tensors_.tensors) widest_tensor = std::max(widest_tensor, t.chunk * ranks_);
            gathered_.resize(widest_tensor);
            persistent_.resize(tensors_.tensors.size());
            std::size_t widest_gather = 0;  // Σ chunk·N over a layer's tensors
            for (const auto& r : Model::layer_ranges) {
                std::size_t n = 0;
                for (const auto& t : tensors_.tensors)
                    if (in_layer(t, r)) n += t.chunk * ranks_;
                widest_gather = std::max(widest_gather, n);
            }
            for (auto* g : {&now_, &next_}) g->receive.resize(widest_gather);
        } else {
            params_.assign(Z::partitions_optimizer_states ? flat_.padded : psi, compute_type{});
            if constexpr (Z::partitions_gradients) {
                grads_.assign(flat_.shard, grad_type{});
                layer_grads_.resize(widest);
                bucket_.resize(std::min<std::size_t>(static_cast<std::size_t>(cfg.zero_optimization.reduce_bucket_size),
                                                     flat_.padded));
            } else {
                grads_.assign(params_.size(), grad_type{});
                if constexpr (Z::partitions_optimizer_states) reduced_.assign(flat_.shard, grad_type{});
            }
        }
        if constexpr (has_master) master_.assign(optimizer_elements(), 0.0f);
        set_full_parameters(initial);
    }

    /// Elements each all-gather / reduce-scatter of the whole model moves: Ψ padded as this
    /// stage pads it (2·dp for stages 1-2, per tensor for stage 3).
    std::size_t padded_params() const {
        if constexpr (Z::partitions_parameters) return tensors_.padded;
        else if constexpr (Z::partitions_optimizer_states) return flat_.padded;
        else return psi;
    }

    // --- hooks the model calls layer by layer (see Sequential::forward/backward) ---------

    /// The engine announces each pass, so stage 3 knows which layer comes next.
    void begin_pass(Pass pass) { pass_ = pass; }

    const compute_type* parameters(Range r) {
        if constexpr (Z::partitions_parameters) {
            gather_layer(r);
            return layer_params_.data();
        } else {
            return params_.data() + r.offset;
        }
    }
    void forward_done(Range) {}  // stage 3: the layer buffer is reused by the next layer: freed
    grad_type* gradients(Range r) {
        if constexpr (Z::partitions_gradients) {
            std::fill_n(layer_grads_.begin(), r.count, grad_type{});
            return layer_grads_.data();
        } else {
            return grads_.data() + r.offset;
        }
    }
    void backward_done(Range r) {
        if constexpr (Z::partitions_parameters) reduce_layer(r);
        else if constexpr (Z::partitions_gradients) add_to_bucket(r);
    }

    /// After a backward: stage 2 reduces what is left in its bucket and completes the
    /// reductions still in flight.
    void backward_finished() {
        if constexpr (Z::partitions_gradients && !Z::partitions_parameters) {
            flush_bucket();
            while (!in_flight_.empty()) complete_oldest();
        }
    }

    /// At the accumulation boundary: make `shard_grads()` this rank's averaged gradient.
    void reduce_gradients() {
        if constexpr (!Z::partitions_optimizer_states) {
            all_reduce_full_gradients();
        } else if constexpr (!Z::partitions_gradients) {
            if (cfg_.zero_optimization.reduce_scatter) {
                cpu::scale(grads_.data(), grads_.size(), 1.0f / static_cast<float>(ranks_));  // pre-divided (SPEC §5.3)
                comm_.reduce_scatter(grads_.data(), reduced_.data(), flat_.shard, comm::ReduceOp::sum);
            } else {  // all-reduce everything, keep this rank's shard
                all_reduce_full_gradients();
                std::copy_n(grads_.begin() + static_cast<std::ptrdiff_t>(flat_.begin(rank_)), flat_.shard,
                            reduced_.begin());
            }
        }
        // Stages 2 and 3 reduced during backward.
    }

    /// Σ g² over the whole model's averaged gradient, as accumulated (scaled by the loss
    /// scale in fp16); all ranks agree on it, and an inf/NaN anywhere makes it non-finite.
    double gradient_square_norm() {
        const auto g = shard_grads();
        double local = cpu::sum_of_squares(g.data(), g.size());
        if constexpr (Z::partitions_optimizer_states) comm_.all_reduce(&local, 1, comm::ReduceOp::sum);
        return local;
    }

    /// The fp32 values the optimizer updates: this rank's partition (the whole model at
    /// stage 0) — the master weights in mixed precision, the parameters themselves in fp32.
    std::span<float> shard_params() {
        if constexpr (has_master) return master_;
        else if constexpr (Z::partitions_optimizer_states && !Z::partitions_parameters)
            return {params_.data() + flat_.begin(rank_), flat_.shard};
        else return params_;
    }
    /// This rank's averaged gradient for `shard_params()`, in the accumulation dtype.
    std::span<grad_type> shard_grads() {
        if constexpr (Z::partitions_optimizer_states && !Z::partitions_gradients) return reduced_;
        else return grads_;
    }
    /// Stages 0-1: the full gradient buffer micro-steps add into.
    std::span<grad_type> accumulated_gradients() { return grads_; }

    /// After the optimizer step: the master weights are rounded into the model's
    /// parameters; stages 1-2 all-gather the updated shards, stage 3 refreshes its
    /// persistent parameters.
    void publish_parameters() {
        if constexpr (has_master) cpu::convert(master_.data(), own_params(), master_.size());
        if constexpr (Z::partitions_parameters) {
            gather_persistent();
        } else if constexpr (Z::partitions_optimizer_states) {
            comm_.all_gather(params_.data() + flat_.begin(rank_), params_.data(), flat_.shard);
        }
    }

    void zero_gradients() {
        std::fill(grads_.begin(), grads_.end(), grad_type{});
        std::fill(reduced_.begin(), reduced_.end(), grad_type{});
    }

    /// The whole model's fp32 values (the master weights in mixed precision), gathered from
    /// the ranks where they are partitioned: every rank must call it then.
    std::vector<float> full_parameters() {
        std::vector<float> all(psi);
        if constexpr (Z::partitions_parameters) {
            std::vector<float> gathered(gathered_.size());
            for (const auto& t : tensors_.tensors) {
                comm_.all_gather(shard_params().data() + t.local, gathered.data(), t.chunk);
                std::copy_n(gathered.begin(), t.count, all.begin() + static_cast<std::ptrdiff_t>(t.offset));
            }
        } else if constexpr (Z::partitions_optimizer_states && has_master) {
            std::vector<float> gathered(flat_.padded);
            comm_.all_gather(master_.data(), gathered.data(), flat_.shard);
            std::copy_n(gathered.begin(), psi, all.begin());
        } else if constexpr (has_master) {
            std::copy_n(master_.begin(), psi, all.begin());
        } else {
            std::copy_n(params_.begin(), psi, all.begin());
        }
        return all;
    }
    /// Replaces the whole model's parameters (every rank passes the same fp32 values; the
    /// model's copy is their rounding to the compute dtype).
    void set_full_parameters(std::span<const float> values) {
        if constexpr (Z::partitions_parameters) {
            std::vector<float> mine(tensors_.shard, 0.0f);
            for (const auto& t : tensors_.tensors)
                for (std::size_t i = 0; i < t.chunk; ++i) {
                    const std::size_t at = rank_ * t.chunk + i;
                    mine[t.local + i] = at < t.count ? values[t.offset + at] : 0.0f;
                }
            if constexpr (has_master) master_ = mine;
            cpu::convert(mine.data(), params_.data(), mine.size());
            gather_persistent();
        } else {
            cpu::convert(values.data(), params_.data(), psi);
            if constexpr (has_master) {
                const std::size_t first = Z::partitions_optimizer_states ? flat_.begin(rank_) : 0;
                for (std::size_t i = 0; i < master_.size(); ++i)
                    master_[i] = first + i < psi ? values[first + i] : 0.0f;
            }
        }
    }

    /// Bytes held per category, for `MemoryReport`.
    std::size_t parameter_bytes() const { return params_.size() * sizeof(compute_type); }
    std::size_t master_bytes() const { return master_.size() * sizeof(float); }
    std::size_t gradient_bytes() const { return grads_.size() * sizeof(grad_type); }
    /// Work buffers: stage 3's gathered layer and persistent parameters, stage 2's bucket
    /// and the received reductions, stage 1's reduced partition.
    std::size_t buffer_bytes() const {
        std::size_t n = (layer_params_.size() + gathered_.size() + now_.receive.size() + next_.receive.size()) *
                        sizeof(compute_type);
        for (const auto& p : persistent_) n += p.size() * sizeof(compute_type);
        n += (layer_grads_.size() + bucket_.size() + received_.size() + reduced_.size()) * sizeof(grad_type);
        return n;
    }

private:
    using Request = decltype(std::declval<Comm&>().template reduce_scatter_v_async<grad_type>(
        nullptr, nullptr, std::span<const std::size_t>{}, comm::ReduceOp::sum));
    /// One bucket's reduce-scatter and the buffers it owns until it completes.
    struct Reduction {
        std::vector<grad_type> send, receive;
        std::vector<std::size_t> counts;
        std::size_t target = 0;  ///< where `receive` adds into this rank's shard
        std::optional<Request> request;
    };
    static constexpr std::size_t max_in_flight = 2;
    static constexpr std::size_t none = static_cast<std::size_t>(-1);
    using Gather = decltype(std::declval<Comm&>().template all_gather_async<compute_type>(nullptr, nullptr, 0));
    /// One layer's gathers in flight and the buffer they land in.
    struct LayerGather {
        std::size_t layer = none;
        std::vector<compute_type> receive;
        std::vector<Gather> requests;
    };

    static std::vector<Segment> segments() {
        std::vector<Segment> s;
        for (const auto& p : Model::parameters) s.push_back({p.offset, p.numel()});
        return s;
    }
    /// Elements of the optimizer's partition on this rank.
    std::size_t optimizer_elements() const {
        if constexpr (Z::partitions_parameters) return tensors_.shard;
        else if constexpr (Z::partitions_optimizer_states) return flat_.shard;
        else return psi;
    }
    /// Where this rank's partition of the model's parameters starts.
    compute_type* own_params() {
        if constexpr (Z::partitions_optimizer_states && !Z::partitions_parameters)
            return params_.data() + flat_.begin(rank_);
        else return params_.data();
    }

    /// Stage 0 and stage 1 without reduce-scatter: all of the gradient, in
    /// `reduce_bucket_size` buckets.
    void all_reduce_full_gradients() {
        const auto bucket = static_cast<std::size_t>(cfg_.zero_optimization.reduce_bucket_size);
        for (std::size_t first = 0; first < grads_.size(); first += bucket)
            averaging_all_reduce(grads_.data() + first, std::min(bucket, grads_.size() - first));
    }
    /// An all-reduce that averages: ÷ predivide factor, SUM, × factor / dp by default, or
    /// ÷ dp then SUM with `prescale_gradients` (SPEC §5.3).
    void averaging_all_reduce(grad_type* values, std::size_t n) {
        const double f = cfg_.gradient_predivide_factor, dp = static_cast<double>(ranks_);
        if (cfg_.prescale_gradients) cpu::scale(values, n, static_cast<float>(1.0 / dp));
        else if (f != 1.0) cpu::scale(values, n, static_cast<float>(1.0 / f));
        comm_.all_reduce(values, n, comm::ReduceOp::sum);
        if (!cfg_.prescale_gradients && f != dp) cpu::scale(values, n, static_cast<float>(f / dp));
    }

    // Stage 2: the bucket covers a contiguous flat range [lo, hi) that grows downwards,
    // since backward completes the layers from the last to the first. The last layer's
    // range extends over the zero padding, so the reductions cover the padded Ψ exactly.
    void add_to_bucket(Range r) {
        const std::size_t end = r.offset + r.count == psi ? flat_.padded : r.offset + r.count;
        if (!cfg_.zero_optimization.contiguous_gradients) {  // no bucket copy: each layer reduced from its own buffer
            reduce_range(layer_grads_.data(), r.count, r.offset, end);
            return;
        }
        if (bucket_lo_ != bucket_hi_ && (bucket_lo_ != end || bucket_hi_ - r.offset > bucket_.size())) flush_bucket();
        if (end - r.offset > bucket_.size()) {  // a layer larger than the bucket is reduced on its own
            reduce_range(layer_grads_.data(), r.count, r.offset, end);
            return;
        }
        if (bucket_lo_ == bucket_hi_) {
            bucket_lo_ = bucket_hi_ = end;
            std::fill(bucket_.begin(), bucket_.end(), grad_type{});
        }
        bucket_lo_ = r.offset;
        std::copy_n(layer_grads_.data(), r.count, bucket_at(bucket_lo_));
    }
    /// Where flat index x lives in the bucket (which ends at bucket_hi_).
    grad_type* bucket_at(std::size_t x) { return bucket_.data() + (x + bucket_.size() - bucket_hi_); }
    void flush_bucket() {
        if (bucket_lo_ == bucket_hi_) return;
        reduce_range(bucket_at(bucket_lo_), bucket_hi_ - bucket_lo_, bucket_lo_, bucket_hi_);
        bucket_lo_ = bucket_hi_ = 0;
    }
    /// Reduce-scatters the gradient of flat range [lo, hi) to the shard owners, pre-divided
    /// by dp, and adds this rank's part to its shard. `data` holds the first `count`
    /// values; the rest of the range is padding (zeros). With `overlap_comm` the reduction
    /// is left in flight while backward goes on (at most two, like DeepSpeed's two buckets).
    void reduce_range(const grad_type* data, std::size_t count, std::size_t lo, std::size_t hi) {
        if (!cfg_.zero_optimization.reduce_scatter) {  // all-reduce the bucket, keep this rank's slice
            scratch_.assign(hi - lo, grad_type{});
            std::copy_n(data, count, scratch_.begin());
            averaging_all_reduce(scratch_.data(), scratch_.size());
            const std::size_t a = std::max(lo, flat_.begin(rank_)), b = std::min(hi, flat_.end(rank_));
            if (a < b) cpu::add_into(grads_.data() + (a - flat_.begin(rank_)), scratch_.data() + (a - lo), b - a);
            return;
        }
        if (in_flight_.size() == max_in_flight) complete_oldest();
        Reduction r;
        r.send.assign(hi - lo, grad_type{});
        std::copy_n(data, count, r.send.begin());
        cpu::scale(r.send.data(), count, 1.0f / static_cast<float>(ranks_));
        r.counts.resize(ranks_);
        for (std::size_t k = 0; k < ranks_; ++k) r.counts[k] = flat_.overlap(lo, hi, k);
        r.receive.resize(r.counts[rank_]);
        r.target = std::max(lo, flat_.begin(rank_)) - flat_.begin(rank_);
        const std::span<const std::size_t> counts(r.counts);
        if (overlap_comm(cfg_.zero_optimization)) {
            in_flight_.push_back(std::move(r));
            Reduction& pending = in_flight_.back();  // the buffers stay put while MPI uses them
            pending.request.emplace(comm_.reduce_scatter_v_async(pending.send.data(), pending.receive.data(),
                                                                 std::span<const std::size_t>(pending.counts),
                                                                 comm::ReduceOp::sum));
        } else {
            comm_.reduce_scatter_v(r.send.data(), r.receive.data(), counts, comm::ReduceOp::sum);
            accumulate(r);
        }
    }
    void complete_oldest() {
        Reduction& r = in_flight_.front();
        r.request->wait();
        accumulate(r);
        in_flight_.pop_front();
    }
    void accumulate(const Reduction& r) { cpu::add_into(grads_.data() + r.target, r.receive.data(), r.receive.size()); }

    // Stage 3.
    bool persistent(std::size_t tensor) const {
        return static_cast<std::int64_t>(tensors_.tensors[tensor].count) <=
               cfg_.zero_optimization.stage3_param_persistence_threshold;
    }
    void gather_persistent() {
        for (std::size_t i = 0; i < tensors_.tensors.size(); ++i) {
            if (!persistent(i)) continue;
            const auto& t = tensors_.tensors[i];
            persistent_[i].resize(t.count);
            comm_.all_gather(params_.data() + t.local, gathered_.data(), t.chunk);
            std::copy_n(gathered_.data(), t.count, persistent_[i].begin());
        }
    }
    static bool in_layer(const TensorPartition::Chunk& t, Range r) {
        return t.offset >= r.offset && t.offset < r.offset + r.count;
    }
    static std::size_t layer_of(Range r) {
        for (std::size_t i = 0; i < Model::layer_ranges.size(); ++i)
            if (Model::layer_ranges[i].offset == r.offset && Model::layer_ranges[i].count == r.count) return i;
        return Model::layer_ranges.size();
    }
    /// The layer with parameters that this pass reaches after `layer`, if any.
    std::optional<std::size_t> next_layer(std::size_t layer) const {
        const auto& ranges = Model::layer_ranges;
        if (pass_ == Pass::forward) {
            for (std::size_t i = layer + 1; i < ranges.size(); ++i)
                if (ranges[i].count > 0) return i;
        } else {
            for (std::size_t i = layer; i-- > 0;)
                if (ranges[i].count > 0) return i;
        }
        return std::nullopt;
    }
    /// Starts the all-gathers of `layer`'s partitioned tensors into `g.receive`.
    void start_gather(std::size_t layer, LayerGather& g) {
        const Range r = Model::layer_ranges[layer];
        g.layer = layer;
        g.requests.clear();
        std::size_t at = 0;
        for (std::size_t i = 0; i < tensors_.tensors.size(); ++i) {
            const auto& t = tensors_.tensors[i];
            if (!in_layer(t, r) || persistent(i)) continue;
            g.requests.push_back(comm_.all_gather_async(params_.data() + t.local, g.receive.data() + at, t.chunk));
            at += t.chunk * ranks_;
        }
    }
    /// Completes `g` and assembles the layer's parameters (persistent tensors from their copies).
    void finish_gather(LayerGather& g) {
        const Range r = Model::layer_ranges[g.layer];
        for (auto& q : g.requests) q.wait();
        std::size_t at = 0;
        for (std::size_t i = 0; i < tensors_.tensors.size(); ++i) {
            const auto& t = tensors_.tensors[i];
            if (!in_layer(t, r)) continue;
            const auto into = layer_params_.begin() + static_cast<std::ptrdiff_t>(t.offset - r.offset);
            if (persistent(i)) {
                std::copy(persistent_[i].begin(), persistent_[i].end(), into);
            } else {
                std::copy_n(g.receive.begin() + static_cast<std::ptrdiff_t>(at), t.count, into);
                at += t.chunk * ranks_;
            }
        }
        g.layer = none;
        g.requests.clear();
    }
    /// Gathers the layer about to run: from the prefetch started at the previous layer if
    /// there is one, else now; with `overlap_comm` it then starts the next layer's gathers,
    /// which complete while this layer computes (DeepSpeed's prefetch, one layer ahead).
    void gather_layer(Range r) {
        const std::size_t layer = layer_of(r);
        if (next_.layer == layer) {
            std::swap(now_, next_);
        } else {
            if (next_.layer != none) finish_gather(next_);  // a pass ended early: drain it
            start_gather(layer, now_);
        }
        if (overlap_comm(cfg_.zero_optimization))
            if (const auto following = next_layer(layer)) start_gather(*following, next_);
        finish_gather(now_);
    }
    /// Each tensor's gradient, zero-padded to chunk·N: reduce-scattered pre-divided by N, or
    /// with `reduce_scatter: false` all-reduced by the averaging rule and sliced (SPEC §5.3).
    void reduce_layer(Range r) {
        for (const auto& t : tensors_.tensors) {
            if (!in_layer(t, r)) continue;
            scratch_.assign(t.chunk * ranks_, grad_type{});
            std::copy_n(layer_grads_.data() + (t.offset - r.offset), t.count, scratch_.begin());
            if (cfg_.zero_optimization.reduce_scatter) {
                cpu::scale(scratch_.data(), t.count, 1.0f / static_cast<float>(ranks_));
                received_.resize(t.chunk);
                comm_.reduce_scatter(scratch_.data(), received_.data(), t.chunk, comm::ReduceOp::sum);
                cpu::add_into(grads_.data() + t.local, received_.data(), t.chunk);
            } else {
                averaging_all_reduce(scratch_.data(), scratch_.size());
                cpu::add_into(grads_.data() + t.local, scratch_.data() + rank_ * t.chunk, t.chunk);
            }
        }
    }

    Comm& comm_;
    const Config& cfg_;
    std::size_t rank_, ranks_;
    FlatPartition flat_;
    TensorPartition tensors_;
    std::vector<compute_type> params_;  ///< the model's parameters: all (stages 0-2, padded at 1-2) or this rank's chunks (3)
    std::vector<float> master_;         ///< mixed precision: fp32 master of this rank's optimizer partition
    std::vector<grad_type> grads_;      ///< accumulated gradients: all (stages 0-1) or this rank's partition (2-3)
    std::vector<grad_type> reduced_;    ///< stage 1: this rank's averaged partition after the boundary reduction
    std::vector<compute_type> layer_params_, gathered_;
    std::vector<grad_type> layer_grads_, bucket_, received_, scratch_;
    std::vector<std::vector<compute_type>> persistent_;
    LayerGather now_, next_;
    Pass pass_ = Pass::forward;
    std::deque<Reduction> in_flight_;
    std::size_t bucket_lo_ = 0, bucket_hi_ = 0;
};

}  // namespace ds
