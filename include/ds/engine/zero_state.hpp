#pragma once
/// @file
/// `ds::ZeroState`: the fp32 model states of one rank as ZeRO stage S keeps them, and the
/// collectives that keep them consistent (DESIGN: "The ZeRO stages as traits", SPEC §5-6).

#include <algorithm>
#include <cstddef>
#include <deque>
#include <optional>
#include <utility>
#include <span>
#include <vector>

#include <ds/comm/communicator.hpp>
#include <ds/config/config.hpp>
#include <ds/device/cpu/simd.hpp>
#include <ds/engine/flat_optimizer.hpp>
#include <ds/engine/partition.hpp>
#include <ds/policy/zero.hpp>

namespace ds {

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
template <zero_policy Z, class Model, comm::communicator Comm>
class ZeroState {
public:
    static constexpr std::size_t psi = Model::param_count;
    using Range = typename Model::LayerRange;

    ZeroState(Comm& comm, const Config& cfg, std::span<const float> initial)
        : comm_(comm), cfg_(cfg), rank_(static_cast<std::size_t>(comm.rank())),
          ranks_(static_cast<std::size_t>(comm.size())), flat_(psi, ranks_), tensors_(segments(), ranks_) {
        if constexpr (Z::partitions_parameters) {
            shard_params_.assign(tensors_.shard, 0.0f);
            shard_grads_.assign(tensors_.shard, 0.0f);
            for (const auto& t : tensors_.tensors) {
                const std::size_t first = std::min(t.count, rank_ * t.chunk);
                const std::size_t n = std::min(t.count, first + t.chunk) - first;
                std::copy_n(initial.begin() + static_cast<std::ptrdiff_t>(t.offset + first), n,
                            shard_params_.begin() + static_cast<std::ptrdiff_t>(t.local));
            }
            std::size_t widest = 0;
            for (const auto& r : Model::layer_ranges) widest = std::max(widest, r.count);
            layer_params_.resize(widest);
            layer_grads_.resize(widest);
            std::size_t widest_tensor = 0;
            for (const auto& t : tensors_.tensors) widest_tensor = std::max(widest_tensor, t.chunk * ranks_);
            gathered_.resize(widest_tensor);
            persistent_.resize(tensors_.tensors.size());
            gather_persistent();
        } else {
            const std::size_t n = Z::partitions_optimizer_states ? flat_.padded : psi;
            full_params_.assign(n, 0.0f);
            std::copy(initial.begin(), initial.end(), full_params_.begin());
            if constexpr (Z::partitions_gradients) {
                shard_grads_.assign(flat_.shard, 0.0f);
                std::size_t widest = 0;
                for (const auto& r : Model::layer_ranges) widest = std::max(widest, r.count);
                layer_grads_.resize(widest);
                bucket_.resize(std::min<std::size_t>(static_cast<std::size_t>(cfg.zero_optimization.reduce_bucket_size),
                                                     flat_.padded));
            } else {
                full_grads_.assign(n, 0.0f);
                if constexpr (Z::partitions_optimizer_states) shard_grads_.assign(flat_.shard, 0.0f);
            }
        }
    }

    /// Elements each all-gather / reduce-scatter of the whole model moves: Ψ padded as this
    /// stage pads it (2·dp for stages 1-2, per tensor for stage 3).
    std::size_t padded_params() const {
        if constexpr (Z::partitions_parameters) return tensors_.padded;
        else if constexpr (Z::partitions_optimizer_states) return flat_.padded;
        else return psi;
    }

    // --- hooks the model calls layer by layer (see Sequential::forward/backward) ---------

    const float* parameters(Range r) {
        if constexpr (Z::partitions_parameters) {
            gather_layer(r);
            return layer_params_.data();
        } else {
            return full_params_.data() + r.offset;
        }
    }
    void forward_done(Range) {}  // stage 3: the layer buffer is reused by the next layer: freed
    float* gradients(Range r) {
        if constexpr (Z::partitions_gradients) {
            std::fill_n(layer_grads_.begin(), r.count, 0.0f);
            return layer_grads_.data();
        } else {
            return full_grads_.data() + r.offset;
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
                scale(full_grads_, 1.0f / static_cast<float>(ranks_));  // pre-divided (SPEC §5.3)
                comm_.reduce_scatter(full_grads_.data(), shard_grads_.data(), flat_.shard, comm::ReduceOp::sum);
            } else {  // all-reduce everything, keep this rank's shard
                all_reduce_full_gradients();
                std::copy_n(full_grads_.begin() + static_cast<std::ptrdiff_t>(flat_.begin(rank_)), flat_.shard,
                            shard_grads_.begin());
            }
        }
        // Stages 2 and 3 reduced during backward.
    }

    /// Σ g² over the whole model's averaged gradient (all ranks agree on it).
    double gradient_square_norm() {
        double local = cpu::sum_of_squares(shard_grads().data(), shard_grads().size());
        if constexpr (Z::partitions_optimizer_states) comm_.all_reduce(&local, 1, comm::ReduceOp::sum);
        return local;
    }

    std::span<float> shard_params() {
        if constexpr (Z::partitions_parameters) return shard_params_;
        else if constexpr (Z::partitions_optimizer_states) return {full_params_.data() + flat_.begin(rank_), flat_.shard};
        else return full_params_;
    }
    std::span<float> shard_grads() {
        if constexpr (Z::partitions_optimizer_states) return shard_grads_;
        else return full_grads_;
    }
    /// Stages 0-1: the full gradient buffer micro-steps add into.
    std::span<float> accumulated_gradients() { return full_grads_; }

    /// After the optimizer step: stages 1-2 all-gather the updated shards; stage 3 refreshes
    /// its persistent parameters.
    void publish_parameters() {
        if constexpr (Z::partitions_parameters) {
            gather_persistent();
        } else if constexpr (Z::partitions_optimizer_states) {
            comm_.all_gather(full_params_.data() + flat_.begin(rank_), full_params_.data(), flat_.shard);
        }
    }

    void zero_gradients() {
        std::fill(shard_grads_.begin(), shard_grads_.end(), 0.0f);
        std::fill(full_grads_.begin(), full_grads_.end(), 0.0f);
    }

    /// The whole model's parameters (gathered at stage 3), e.g. to save them.
    std::vector<float> full_parameters() {
        if constexpr (Z::partitions_parameters) {
            std::vector<float> all(psi);
            for (std::size_t i = 0; i < tensors_.tensors.size(); ++i) gather_tensor(i, all.data());
            return all;
        } else {
            return {full_params_.begin(), full_params_.begin() + psi};
        }
    }
    /// Replaces the whole model's parameters (every rank passes the same values).
    void set_full_parameters(std::span<const float> values) {
        if constexpr (Z::partitions_parameters) {
            for (const auto& t : tensors_.tensors)
                for (std::size_t i = 0; i < t.chunk; ++i) {
                    const std::size_t at = rank_ * t.chunk + i;
                    shard_params_[t.local + i] = at < t.count ? values[t.offset + at] : 0.0f;
                }
            gather_persistent();
        } else {
            std::copy(values.begin(), values.end(), full_params_.begin());
        }
    }

    /// Bytes held per category (parameters, gradients, buffers) for `MemoryReport`.
    std::size_t parameter_bytes() const { return (full_params_.size() + shard_params_.size()) * sizeof(float); }
    std::size_t gradient_bytes() const { return (full_grads_.size() + shard_grads_.size()) * sizeof(float); }
    std::size_t buffer_bytes() const {
        std::size_t n = layer_params_.size() + layer_grads_.size() + gathered_.size() + bucket_.size() +
                        received_.size();
        for (const auto& p : persistent_) n += p.size();
        return n * sizeof(float);
    }

private:
    using Request = decltype(std::declval<Comm&>().template reduce_scatter_v_async<float>(
        nullptr, nullptr, std::span<const std::size_t>{}, comm::ReduceOp::sum));
    /// One bucket's reduce-scatter and the buffers it owns until it completes.
    struct Reduction {
        std::vector<float> send, receive;
        std::vector<std::size_t> counts;
        std::size_t target = 0;  ///< where `receive` adds into this rank's shard
        std::optional<Request> request;
    };
    static constexpr std::size_t max_in_flight = 2;

    static std::vector<Segment> segments() {
        std::vector<Segment> s;
        for (const auto& p : Model::parameters) s.push_back({p.offset, p.numel()});
        return s;
    }
    static void scale(std::span<float> v, float factor) {
        for (float& x : v) x *= factor;
    }

    /// Stage 0 (SPEC §5.3): post-scaling by default (÷ predivide factor, SUM, × factor / dp),
    /// or pre-scaling (÷ dp, SUM), in buckets of `reduce_bucket_size` elements.
    void all_reduce_full_gradients() {
        const auto bucket = static_cast<std::size_t>(cfg_.zero_optimization.reduce_bucket_size);
        for (std::size_t first = 0; first < full_grads_.size(); first += bucket)
            averaging_all_reduce({full_grads_.data() + first, std::min(bucket, full_grads_.size() - first)});
    }
    /// An all-reduce that averages: ÷ predivide factor, SUM, × factor / dp by default, or
    /// ÷ dp then SUM with `prescale_gradients` (SPEC §5.3).
    void averaging_all_reduce(std::span<float> values) {
        const double f = cfg_.gradient_predivide_factor, dp = static_cast<double>(ranks_);
        if (cfg_.prescale_gradients) scale(values, static_cast<float>(1.0 / dp));
        else if (f != 1.0) scale(values, static_cast<float>(1.0 / f));
        comm_.all_reduce(values.data(), values.size(), comm::ReduceOp::sum);
        if (!cfg_.prescale_gradients && f != dp) scale(values, static_cast<float>(f / dp));
    }

    // Stage 2: the bucket covers a contiguous flat range [lo, hi) that grows downwards,
    // since backward completes the layers from the last to the first. The last layer's
    // range extends over the zero padding, so the reductions cover the padded Ψ exactly.
    void add_to_bucket(Range r) {
        const std::size_t end = r.offset + r.count == psi ? flat_.padded : r.offset + r.count;
        if (bucket_lo_ != bucket_hi_ && (bucket_lo_ != end || bucket_hi_ - r.offset > bucket_.size())) flush_bucket();
        if (end - r.offset > bucket_.size()) {  // a layer larger than the bucket is reduced on its own
            reduce_range(layer_grads_.data(), r.count, r.offset, end);
            return;
        }
        if (bucket_lo_ == bucket_hi_) {
            bucket_lo_ = bucket_hi_ = end;
            std::fill(bucket_.begin(), bucket_.end(), 0.0f);
        }
        bucket_lo_ = r.offset;
        std::copy_n(layer_grads_.data(), r.count, bucket_at(bucket_lo_));
    }
    /// Where flat index x lives in the bucket (which ends at bucket_hi_).
    float* bucket_at(std::size_t x) { return bucket_.data() + (x + bucket_.size() - bucket_hi_); }
    void flush_bucket() {
        if (bucket_lo_ == bucket_hi_) return;
        reduce_range(bucket_at(bucket_lo_), bucket_hi_ - bucket_lo_, bucket_lo_, bucket_hi_);
        bucket_lo_ = bucket_hi_ = 0;
    }
    /// Reduce-scatters the gradient of flat range [lo, hi) to the shard owners, pre-divided
    /// by dp, and adds this rank's part to its shard. `data` holds the first `count`
    /// values; the rest of the range is padding (zeros). With `overlap_comm` the reduction
    /// is left in flight while backward goes on (at most two, like DeepSpeed's two buckets).
    void reduce_range(const float* data, std::size_t count, std::size_t lo, std::size_t hi) {
        if (!cfg_.zero_optimization.reduce_scatter) {  // all-reduce the bucket, keep this rank's slice
            scratch_.assign(hi - lo, 0.0f);
            std::copy_n(data, count, scratch_.begin());
            averaging_all_reduce(scratch_);
            const std::size_t a = std::max(lo, flat_.begin(rank_)), b = std::min(hi, flat_.end(rank_));
            for (std::size_t x = a; x < b; ++x) shard_grads_[x - flat_.begin(rank_)] += scratch_[x - lo];
            return;
        }
        if (in_flight_.size() == max_in_flight) complete_oldest();
        Reduction r;
        r.send.assign(hi - lo, 0.0f);
        const float scale_by = 1.0f / static_cast<float>(ranks_);
        for (std::size_t i = 0; i < count; ++i) r.send[i] = data[i] * scale_by;
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
    void accumulate(const Reduction& r) {
        for (std::size_t i = 0; i < r.receive.size(); ++i) shard_grads_[r.target + i] += r.receive[i];
    }

    // Stage 3.
    bool persistent(std::size_t tensor) const {
        return static_cast<std::int64_t>(tensors_.tensors[tensor].count) <=
               cfg_.zero_optimization.stage3_param_persistence_threshold;
    }
    /// All-gathers tensor i into `out` at its flat offset (out indexed by flat offset).
    void gather_tensor(std::size_t i, float* out_at_flat) {
        const auto& t = tensors_.tensors[i];
        comm_.all_gather(shard_params_.data() + t.local, gathered_.data(), t.chunk);
        std::copy_n(gathered_.data(), t.count, out_at_flat + t.offset);
    }
    void gather_persistent() {
        for (std::size_t i = 0; i < tensors_.tensors.size(); ++i) {
            if (!persistent(i)) continue;
            const auto& t = tensors_.tensors[i];
            persistent_[i].resize(t.count);
            comm_.all_gather(shard_params_.data() + t.local, gathered_.data(), t.chunk);
            std::copy_n(gathered_.data(), t.count, persistent_[i].begin());
        }
    }
    void gather_layer(Range r) {
        for (std::size_t i = 0; i < tensors_.tensors.size(); ++i) {
            const auto& t = tensors_.tensors[i];
            if (t.offset < r.offset || t.offset >= r.offset + r.count) continue;
            if (persistent(i)) {
                std::copy(persistent_[i].begin(), persistent_[i].end(), layer_params_.begin() + (t.offset - r.offset));
            } else {
                comm_.all_gather(shard_params_.data() + t.local, gathered_.data(), t.chunk);
                std::copy_n(gathered_.data(), t.count, layer_params_.begin() + (t.offset - r.offset));
            }
        }
    }
    void reduce_layer(Range r) {
        for (const auto& t : tensors_.tensors) {
            if (t.offset < r.offset || t.offset >= r.offset + r.count) continue;
            scratch_.assign(t.chunk * ranks_, 0.0f);
            const float scale_by = 1.0f / static_cast<float>(ranks_);
            for (std::size_t i = 0; i < t.count; ++i) scratch_[i] = layer_grads_[t.offset - r.offset + i] * scale_by;
            received_.resize(t.chunk);
            comm_.reduce_scatter(scratch_.data(), received_.data(), t.chunk, comm::ReduceOp::sum);
            for (std::size_t i = 0; i < t.chunk; ++i) shard_grads_[t.local + i] += received_[i];
        }
    }


    Comm& comm_;
    const Config& cfg_;
    std::size_t rank_, ranks_;
    FlatPartition flat_;
    TensorPartition tensors_;
    std::vector<float> full_params_, full_grads_, shard_params_, shard_grads_;
    std::vector<float> layer_params_, layer_grads_, gathered_, bucket_, received_, scratch_;
    std::vector<std::vector<float>> persistent_;
    std::deque<Reduction> in_flight_;
    std::size_t bucket_lo_ = 0, bucket_hi_ = 0;
};

}  // namespace ds
