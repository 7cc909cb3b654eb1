#pragma once
/// @file
/// `ds::ZeroState`: the model states of one rank as ZeRO stage S keeps them, and the
/// collectives that keep them consistent (DESIGN: "The ZeRO stages as traits", SPEC §5-6).

#include <algorithm>
#include <array>
#include <cstddef>
#include <deque>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <ds/comm/communicator.hpp>
#include <ds/config/config.hpp>
#include <ds/device/cpu/host_memory.hpp>
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
/// The optimizer sees `shard_parts()`: the whole model at stage 0, this rank's partition
/// otherwise. Gradients are averaged over the ranks (SPEC §5.3). With `reduce_scatter:
/// false`, stages 1-2 all-reduce instead and keep their slice; with `overlap_comm`, stage 2
/// keeps up to two bucket reductions per group in flight during backward.
///
/// A model with experts (`Model::expert_param_count` > 0) has two parameter groups, as
/// DeepSpeed splits them: the dense values, reduced and partitioned over every rank, and
/// this rank's experts, reduced and partitioned (stages 1-2) over its expert-data-parallel
/// group `experts` but averaged over the whole world (SPEC §10). Each group is padded and
/// partitioned on its own; the global norm sums both. At stage 2 each group has its own
/// `reduce_bucket_size` bucket and up to two reductions in flight (DeepSpeed's buckets mix
/// the groups), so the bucket memory doubles.
///
/// Precision `P` sets the dtypes: parameters in `P::compute_type`, gradients (accumulated,
/// reduced and communicated) in `grad_accumulation_t<P, Z>`, and with mixed precision an
/// fp32 master copy of exactly the optimizer's partition, rounded into the parameters after
/// every step — the ZeRO paper's 2Ψ + 2Ψ + 12Ψ split.
///
/// `Memory` says where the buffers live and runs their element-wise work
/// (`cpu::HostMemory`, or `cuda::DeviceMemory` on the compute stream, where `Comm` must take
/// device buffers and order its collectives after that stream's work).
template <zero_policy Z, precision_policy P, class Model, comm::communicator Comm, class Memory = cpu::HostMemory>
class ZeroState {
    template <class T>
    using Buffer = typename Memory::template buffer<T>;

public:
    static constexpr std::size_t psi = Model::param_count;
    using Range = typename Model::LayerRange;
    using compute_type = typename P::compute_type;    ///< the model's parameters
    using grad_type = grad_accumulation_t<P, Z>;      ///< gradients as accumulated
    using Part = ShardPart<grad_type>;
    static constexpr bool has_master = P::has_master_weights;
    static constexpr bool has_experts = Model::expert_param_count > 0;
    static constexpr std::size_t group_count = has_experts ? 2 : 1;
    static_assert(!(has_experts && Z::partitions_parameters), "ds::ZeroState: experts are not partitioned at stage 3");

    /// `experts` is the expert-data-parallel group (ignored without experts; `world` itself
    /// when every rank holds every expert).
    ZeroState(Comm& world, Comm& experts, const Config& cfg, std::span<const float> initial, Memory memory = {})
        : mem_(std::move(memory)), comm_(world), cfg_(cfg), rank_(static_cast<std::size_t>(world.rank())),
          ranks_(static_cast<std::size_t>(world.size())), tensors_(segments(), ranks_),
          groups_(make_groups(world, experts)) {
        std::size_t widest = 0;
        for (const auto& r : Model::layer_ranges) widest = std::max(widest, r.count);
        if constexpr (Z::partitions_parameters) {
            mem_.assign_zeros(params_, tensors_.shard);
            mem_.assign_zeros(grads_, tensors_.shard);
            mem_.assign_zeros(layer_params_, widest);
            mem_.assign_zeros(layer_grads_, widest);
            std::size_t widest_tensor = 0;
            for (const auto& t : tensors_.tensors) widest_tensor = std::max(widest_tensor, t.chunk * ranks_);
            mem_.assign_zeros(gathered_, widest_tensor);
            persistent_.resize(tensors_.tensors.size());
            std::size_t widest_gather = 0;  // Σ chunk·N over a layer's tensors
            for (const auto& r : Model::layer_ranges) {
                std::size_t n = 0;
                for (const auto& t : tensors_.tensors)
                    if (in_layer(t, r)) n += t.chunk * ranks_;
                widest_gather = std::max(widest_gather, n);
            }
            for (auto* g : {&now_, &next_}) mem_.assign_zeros(g->receive, widest_gather);
        } else {
            const Group& last = groups_.back();
            mem_.assign_zeros(params_, last.storage + last.stored());
            if constexpr (Z::partitions_gradients) {
                mem_.assign_zeros(grads_, last.shard_at + last.flat.shard);
                const auto bucket = static_cast<std::size_t>(cfg.zero_optimization.reduce_bucket_size);
                for (std::size_t i = 0; i < group_count; ++i) {
                    Group& g = groups_[i];
                    std::size_t layer = 0;
                    for (const auto& r : i == 0 ? Model::layer_ranges : Model::expert_ranges)
                        layer = std::max(layer, r.count);
                    mem_.assign_zeros(g.layer_grads, layer);
                    mem_.assign_zeros(g.bucket, std::min(bucket, g.flat.padded));
                }
            } else {
                mem_.assign_zeros(grads_, params_.size());
                if constexpr (Z::partitions_optimizer_states) mem_.assign_zeros(reduced_, last.shard_at + last.flat.shard);
            }
        }
        if constexpr (has_master) mem_.assign_zeros(master_, optimizer_elements());
        set_full_parameters(initial);
    }

    /// Elements each all-gather / reduce-scatter of the whole model moves: Ψ padded as this
    /// stage pads it (2·dp for stages 1-2, per tensor for stage 3); with experts, the sum of
    /// both groups' (which move over different communicators).
    std::size_t padded_params() const {
        if constexpr (Z::partitions_parameters) return tensors_.padded;
        else return params_.size();
    }
    /// Elements of the optimizer's partition on this rank (every group's).
    std::size_t optimizer_elements() const {
        if constexpr (Z::partitions_parameters) return tensors_.shard;
        else return groups_.back().shard_at + groups_.back().partition();
    }

    // --- hooks the model calls layer by layer (see Sequential::forward/backward) ---------

    /// The engine announces each pass, so stage 3 knows which layer comes next.
    void begin_pass(Pass pass) {
        pass_ = pass;
        position_ = pass == Pass::forward ? none : gather_order.size();
    }

    const compute_type* parameters(Range r) {
        if constexpr (Z::partitions_parameters) {
            gather_layer(r);
            return layer_params_.data();
        } else {
            return params_.data() + stored_at(r.offset);
        }
    }
    void forward_done(Range) {}  // stage 3: the layer buffer is reused by the next layer: freed
    grad_type* gradients(Range r) {
        if constexpr (Z::partitions_parameters) {
            mem_.zero(layer_grads_.data(), r.count);
            return layer_grads_.data();
        } else if constexpr (Z::partitions_gradients) {
            Group& g = group_of(r.offset);
            mem_.zero(g.layer_grads.data(), r.count);
            return g.layer_grads.data();
        } else {
            return grads_.data() + stored_at(r.offset);
        }
    }
    void backward_done(Range r) {
        if constexpr (Z::partitions_parameters) reduce_layer(r);
        else if constexpr (Z::partitions_gradients) add_to_bucket(group_of(r.offset), r);
    }

    /// After a backward: stage 2 reduces what is left in its buckets and completes the
    /// reductions still in flight.
    void backward_finished() {
        if constexpr (Z::partitions_gradients && !Z::partitions_parameters) {
            for (Group& g : groups_) {
                flush_bucket(g);
                while (!g.in_flight.empty()) complete_oldest(g);
            }
        }
    }

    /// At the accumulation boundary: make the shard gradients this rank's averaged gradient.
    void reduce_gradients() {
        if constexpr (!Z::partitions_optimizer_states) {
            for (Group& g : groups_) all_reduce_full_gradients(g);
        } else if constexpr (!Z::partitions_gradients) {
            for (Group& g : groups_) {
                grad_type* full = grads_.data() + g.storage;
                if (cfg_.zero_optimization.reduce_scatter) {
                    mem_.scale(full, g.flat.padded, 1.0f / static_cast<float>(ranks_));  // pre-divided (SPEC §5.3)
                    g.comm->reduce_scatter(full, reduced_.data() + g.shard_at, g.flat.shard, comm::ReduceOp::sum);
                } else {  // all-reduce everything, keep this rank's shard
                    all_reduce_full_gradients(g);
                    mem_.copy(full + g.flat.begin(g.rank), g.flat.shard, reduced_.data() + g.shard_at);
                }
            }
        }
        // Stages 2 and 3 reduced during backward.
    }

    /// Σ g² over the whole model's averaged gradient, as accumulated (scaled by the loss
    /// scale in fp16): every group's, every expert counted once. All ranks agree on it,
    /// and an inf/NaN anywhere makes it non-finite.
    double gradient_square_norm() {
        if constexpr (Z::partitions_optimizer_states) {  // each value in exactly one rank's partition
            const auto g = shard_grads();
            return mem_.square_sum_over(comm_, g.data(), g.size());
        } else {  // stage 0: the dense gradient is the same everywhere, an expert's on its expert-DP group
            double total = 0.0;
            for (const Group& g : groups_) {
                const grad_type* grads = grads_.data() + g.storage;
                if (g.comm == &comm_) {
                    total += mem_.square_sum(grads, g.count);
                } else {  // experts split: each rank's differ; count each once
                    const bool speaks_for_its_holders = g.rank == 0;
                    total += mem_.square_sum_over(comm_, grads, speaks_for_its_holders ? g.count : 0);
                }
            }
            return total;
        }
    }

    /// A host value summed over the world's ranks, through the memory policy (a
    /// communicator of device buffers takes no host pointers).
    double sum_over_ranks(double x) const { return mem_.sum_over(comm_, x); }

    /// What the optimizer updates, one run per group: this rank's fp32 values (the master
    /// weights in mixed precision, else the parameters themselves) and their averaged
    /// gradients in the accumulation dtype — the whole model at stage 0.
    std::array<Part, group_count> shard_parts() {
        std::array<Part, group_count> parts{};
        for (std::size_t i = 0; i < group_count; ++i) {
            const Group& g = groups_[i];
            float* values;
            if constexpr (has_master) values = master_.data() + g.shard_at;
            else if constexpr (Z::partitions_parameters) values = params_.data();
            else values = params_.data() + g.storage + (Z::partitions_optimizer_states ? g.flat.begin(g.rank) : 0);
            parts[i] = {values, shard_grads().data() + g.shard_at, g.partition()};
        }
        if constexpr (Z::partitions_parameters) parts[0].count = tensors_.shard;
        return parts;
    }
    /// This rank's averaged gradients for `shard_parts()`, back to back, in the accumulation dtype.
    std::span<grad_type> shard_grads() {
        if constexpr (Z::partitions_optimizer_states && !Z::partitions_gradients) return {reduced_.data(), reduced_.size()};
        else return {grads_.data(), grads_.size()};
    }
    /// Stages 0-1: the full gradient buffer micro-steps add into (each group padded at stage 1).
    std::span<grad_type> accumulated_gradients() { return {grads_.data(), grads_.size()}; }

    /// After the optimizer step: the master weights are rounded into the model's
    /// parameters; stages 1-2 all-gather the updated shards, stage 3 refreshes its
    /// persistent parameters.
    void publish_parameters() {
        if constexpr (Z::partitions_parameters) {
            if constexpr (has_master) mem_.convert(master_.data(), params_.data(), master_.size());
            gather_persistent();
        } else {
            for (const Group& g : groups_) {
                compute_type* own = params_.data() + g.storage + (Z::partitions_optimizer_states ? g.flat.begin(g.rank) : 0);
                if constexpr (has_master) mem_.convert(master_.data() + g.shard_at, own, g.partition());
                if constexpr (Z::partitions_optimizer_states) g.comm->all_gather(own, params_.data() + g.storage, g.flat.shard);
            }
        }
    }

    void zero_gradients() {
        mem_.zero(grads_.data(), grads_.size());
        mem_.zero(reduced_.data(), reduced_.size());
    }

    /// This rank's model's fp32 values (Ψ, laid out as `Model::parameters`; the master
    /// weights in mixed precision), gathered from the ranks where they are partitioned:
    /// every rank must call it then.
    std::vector<float> full_parameters() {
        std::vector<float> all(psi);
        Buffer<float> gathered;
        if constexpr (Z::partitions_parameters) {
            mem_.assign_zeros(gathered, gathered_.size());
            for (const auto& t : tensors_.tensors) {
                comm_.all_gather(master_or_params() + t.local, gathered.data(), t.chunk);
                mem_.download(gathered.data(), t.count, all.data() + t.offset);
            }
        } else {
            for (const Group& g : groups_) {
                float* into = all.data() + g.first;
                if constexpr (Z::partitions_optimizer_states && has_master) {
                    mem_.assign_zeros(gathered, g.flat.padded);
                    g.comm->all_gather(master_.data() + g.shard_at, gathered.data(), g.flat.shard);
                    mem_.download(gathered.data(), g.count, into);
                } else if constexpr (has_master) {
                    mem_.download(master_.data() + g.shard_at, g.count, into);
                } else {
                    mem_.download(params_.data() + g.storage, g.count, into);
                }
            }
        }
        return all;
    }
    /// Replaces this rank's model's parameters (Ψ fp32 values, the same on every rank that
    /// holds them; the model's copy is their rounding to the compute dtype).
    void set_full_parameters(std::span<const float> values) {
        if constexpr (Z::partitions_parameters) {
            std::vector<float> mine(tensors_.shard, 0.0f);
            for (const auto& t : tensors_.tensors)
                for (std::size_t i = 0; i < t.chunk; ++i) {
                    const std::size_t at = rank_ * t.chunk + i;
                    mine[t.local + i] = at < t.count ? values[t.offset + at] : 0.0f;
                }
            if constexpr (has_master) mem_.upload(mine.data(), mine.size(), master_.data());
            mem_.upload(mine.data(), mine.size(), params_.data());
            gather_persistent();
        } else {
            for (const Group& g : groups_) {
                mem_.upload(values.data() + g.first, g.count, params_.data() + g.storage);
                if constexpr (has_master) {
                    const std::size_t first = Z::partitions_optimizer_states ? g.flat.begin(g.rank) : 0;
                    std::vector<float> mine(g.partition(), 0.0f);  // zero past the group's end
                    for (std::size_t i = 0; i < mine.size() && first + i < g.count; ++i) mine[i] = values[g.first + first + i];
                    mem_.upload(mine.data(), mine.size(), master_.data() + g.shard_at);
                }
            }
        }
    }

    /// Bytes held per category, for `MemoryReport`.
    std::size_t parameter_bytes() const { return params_.size() * sizeof(compute_type); }
    std::size_t master_bytes() const { return master_.size() * sizeof(float); }
    std::size_t gradient_bytes() const { return grads_.size() * sizeof(grad_type); }
    /// Work buffers: stage 3's gathered layer and persistent parameters, stage 2's buckets
    /// and the received reductions, stage 1's reduced partition, the all-reduced pieces.
    std::size_t buffer_bytes() const {
        std::size_t n = (layer_params_.size() + gathered_.size() + now_.receive.size() + next_.receive.size()) *
                        sizeof(compute_type);
        for (const auto& p : persistent_) n += p.size() * sizeof(compute_type);
        n += (layer_grads_.size() + received_.size() + reduced_.size() + scratch_.size()) * sizeof(grad_type);
        for (const Group& g : groups_) n += (g.layer_grads.size() + g.bucket.size()) * sizeof(grad_type);
        return n;
    }

private:
    using Request = decltype(std::declval<Comm&>().template reduce_scatter_v_async<grad_type>(
        nullptr, nullptr, std::span<const std::size_t>{}, comm::ReduceOp::sum));
    /// One bucket's reduce-scatter and the buffers it owns until it completes.
    struct Reduction {
        Buffer<grad_type> send, receive;
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
        Buffer<compute_type> receive;
        std::vector<Gather> requests;
    };

    /// One parameter group (stages 0-2): the model's values [first, first + count), reduced
    /// over `comm`, padded to 2·ranks and cut into `ranks` shards at stages 1-2. Its slice of
    /// `params_` (and of the full-size `grads_` at stages 0-1) starts at `storage`; its
    /// partition in `master_`, `reduced_` and the stage-2 `grads_` at `shard_at`.
    struct Group {
        Comm* comm = nullptr;
        std::size_t rank = 0, ranks = 1;
        std::size_t first = 0, count = 0;
        FlatPartition flat{0, 1};
        std::size_t storage = 0, shard_at = 0;
        Buffer<grad_type> layer_grads, bucket;  ///< stage 2: a layer's gradient, the bucket
        std::size_t bucket_lo = 0, bucket_hi = 0;    ///< stage 2: the bucket's group-local range
        std::deque<Reduction> in_flight;

        /// Values of `params_` it takes: padded at stages 1-2.
        std::size_t stored() const { return Z::partitions_optimizer_states ? flat.padded : count; }
        /// Values of this rank's optimizer partition.
        std::size_t partition() const { return Z::partitions_optimizer_states ? flat.shard : count; }
    };

    static std::array<Group, group_count> make_groups(Comm& world, Comm& experts) {
        std::array<Group, group_count> groups{};
        std::size_t storage = 0, shard_at = 0;
        for (std::size_t i = 0; i < group_count; ++i) {
            Group& g = groups[i];
            g.comm = i == 0 ? &world : &experts;
            g.rank = static_cast<std::size_t>(g.comm->rank());
            g.ranks = static_cast<std::size_t>(g.comm->size());
            g.first = i == 0 ? 0 : Model::dense_param_count;
            g.count = i == 0 ? Model::dense_param_count : Model::expert_param_count;
            g.flat = FlatPartition(g.count, g.ranks);
            g.storage = storage;
            g.shard_at = shard_at;
            storage += g.stored();
            shard_at += g.partition();
        }
        return groups;
    }
    Group& group_of(std::size_t offset) { return groups_[has_experts && offset >= Model::dense_param_count ? 1 : 0]; }
    /// Where model value `offset` lives in `params_` (and the full-size `grads_`).
    std::size_t stored_at(std::size_t offset) {
        const Group& g = group_of(offset);
        return g.storage + (offset - g.first);
    }

    static std::vector<Segment> segments() {
        std::vector<Segment> s;
        for (const auto& p : Model::parameters) s.push_back({p.offset, p.numel()});
        return s;
    }
    /// Stage 3: this rank's fp32 chunks.
    const float* master_or_params() {
        if constexpr (has_master) return master_.data();
        else return params_.data();
    }

    /// Stage 0 and stage 1 without reduce-scatter: all of a group's gradient, in
    /// `reduce_bucket_size` buckets.
    void all_reduce_full_gradients(Group& g) {
        const auto bucket = static_cast<std::size_t>(cfg_.zero_optimization.reduce_bucket_size);
        grad_type* values = grads_.data() + g.storage;
        const std::size_t n = g.stored();
        for (std::size_t first = 0; first < n; first += bucket)
            averaging_all_reduce(*g.comm, values + first, std::min(bucket, n - first));
    }
    /// An all-reduce over `comm` that averages over the whole world (an expert's gradient
    /// too, SPEC §10): ÷ predivide factor, SUM, × factor / dp by default, or ÷ dp then SUM
    /// with `prescale_gradients` (SPEC §5.3).
    void averaging_all_reduce(Comm& comm, grad_type* values, std::size_t n) {
        const double f = cfg_.gradient_predivide_factor, dp = static_cast<double>(ranks_);
        if (cfg_.prescale_gradients) mem_.scale(values, n, static_cast<float>(1.0 / dp));
        else if (f != 1.0) mem_.scale(values, n, static_cast<float>(1.0 / f));
        comm.all_reduce(values, n, comm::ReduceOp::sum);
        if (!cfg_.prescale_gradients && f != dp) mem_.scale(values, n, static_cast<float>(f / dp));
    }
    void averaging_all_reduce(grad_type* values, std::size_t n) { averaging_all_reduce(comm_, values, n); }

    // Stage 2: each group's bucket covers a contiguous range [lo, hi) of the group that grows
    // downwards, since backward completes the layers from the last to the first. The last
    // layer's range extends over the zero padding, so the reductions cover the padded group.
    void add_to_bucket(Group& g, Range r) {
        const std::size_t lo = r.offset - g.first;
        const std::size_t end = lo + r.count == g.count ? g.flat.padded : lo + r.count;
        if (!cfg_.zero_optimization.contiguous_gradients) {  // no bucket copy: each layer reduced from its own buffer
            reduce_range(g, g.layer_grads.data(), r.count, lo, end);
            return;
        }
        if (g.bucket_lo != g.bucket_hi && (g.bucket_lo != end || g.bucket_hi - lo > g.bucket.size())) flush_bucket(g);
        if (end - lo > g.bucket.size()) {  // a layer larger than the bucket is reduced on its own
            reduce_range(g, g.layer_grads.data(), r.count, lo, end);
            return;
        }
        if (g.bucket_lo == g.bucket_hi) {
            g.bucket_lo = g.bucket_hi = end;
            mem_.zero(g.bucket.data(), g.bucket.size());
        }
        g.bucket_lo = lo;
        mem_.copy(g.layer_grads.data(), r.count, bucket_at(g, g.bucket_lo));
    }
    /// Where group index x lives in g's bucket (which ends at bucket_hi).
    static grad_type* bucket_at(Group& g, std::size_t x) { return g.bucket.data() + (x + g.bucket.size() - g.bucket_hi); }
    void flush_bucket(Group& g) {
        if (g.bucket_lo == g.bucket_hi) return;
        reduce_range(g, bucket_at(g, g.bucket_lo), g.bucket_hi - g.bucket_lo, g.bucket_lo, g.bucket_hi);
        g.bucket_lo = g.bucket_hi = 0;
    }
    /// Reduce-scatters the gradient of group range [lo, hi) to the shard owners, pre-divided
    /// by dp, and adds this rank's part to its shard. `data` holds the first `count`
    /// values; the rest of the range is padding (zeros). With `overlap_comm` the reduction
    /// is left in flight while backward goes on (at most two per group, like DeepSpeed's two buckets).
    void reduce_range(Group& g, const grad_type* data, std::size_t count, std::size_t lo, std::size_t hi) {
        grad_type* shard = grads_.data() + g.shard_at;
        if (!cfg_.zero_optimization.reduce_scatter) {  // all-reduce the bucket, keep this rank's slice
            mem_.assign_zeros(scratch_, hi - lo);
            mem_.copy(data, count, scratch_.data());
            averaging_all_reduce(*g.comm, scratch_.data(), scratch_.size());
            const std::size_t a = std::max(lo, g.flat.begin(g.rank)), b = std::min(hi, g.flat.end(g.rank));
            if (a < b) mem_.add_into(shard + (a - g.flat.begin(g.rank)), scratch_.data() + (a - lo), b - a);
            return;
        }
        if (g.in_flight.size() == max_in_flight) complete_oldest(g);
        Reduction r;
        mem_.assign_zeros(r.send, hi - lo);
        mem_.copy(data, count, r.send.data());
        mem_.scale(r.send.data(), count, 1.0f / static_cast<float>(ranks_));
        r.counts.resize(g.ranks);
        for (std::size_t k = 0; k < g.ranks; ++k) r.counts[k] = g.flat.overlap(lo, hi, k);
        mem_.assign_zeros(r.receive, r.counts[g.rank]);
        r.target = std::max(lo, g.flat.begin(g.rank)) - g.flat.begin(g.rank);
        if (overlap_comm(cfg_.zero_optimization)) {
            g.in_flight.push_back(std::move(r));
            Reduction& pending = g.in_flight.back();  // the buffers stay put while MPI uses them
            pending.request.emplace(g.comm->reduce_scatter_v_async(pending.send.data(), pending.receive.data(),
                                                                   std::span<const std::size_t>(pending.counts),
                                                                   comm::ReduceOp::sum));
        } else {
            g.comm->reduce_scatter_v(r.send.data(), r.receive.data(), std::span<const std::size_t>(r.counts),
                                     comm::ReduceOp::sum);
            accumulate(g, r);
        }
    }
    void complete_oldest(Group& g) {
        Reduction& r = g.in_flight.front();
        r.request->wait();
        accumulate(g, r);
        g.in_flight.pop_front();
    }
    void accumulate(const Group& g, const Reduction& r) {
        mem_.add_into(grads_.data() + g.shard_at + r.target, r.receive.data(), r.receive.size());
    }

    // Stage 3.
    bool persistent(std::size_t tensor) const {
        return static_cast<std::int64_t>(tensors_.tensors[tensor].count) <=
               cfg_.zero_optimization.stage3_param_persistence_threshold;
    }
    void gather_persistent() {
        for (std::size_t i = 0; i < tensors_.tensors.size(); ++i) {
            if (!persistent(i)) continue;
            const auto& t = tensors_.tensors[i];
            mem_.assign_zeros(persistent_[i], t.count);
            comm_.all_gather(params_.data() + t.local, gathered_.data(), t.chunk);
            mem_.copy(gathered_.data(), t.count, persistent_[i].data());
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
    /// The layers whose parameters a forward pass asks for, in its order: the model's
    /// `gather_order` (where a tied layer asks for its lender's again), else each layer with
    /// parameters once. A backward pass asks in the reverse order.
    static constexpr auto gather_order = [] {
        if constexpr (requires { Model::gather_order; }) {
            return Model::gather_order;
        } else {
            constexpr auto& ranges = Model::layer_ranges;
            constexpr std::size_t count = [&] {
                std::size_t n = 0;
                for (const auto& r : ranges) n += r.count > 0;
                return n;
            }();
            std::array<std::size_t, count> order{};
            std::size_t next = 0;
            for (std::size_t i = 0; i < ranges.size(); ++i)
                if (ranges[i].count > 0) order[next++] = i;
            return order;
        }
    }();
    /// Moves this pass's position to `layer`'s next request and returns the layer the pass
    /// asks for after it, if any (none when the request is not where the order expects it).
    std::optional<std::size_t> advance_to(std::size_t layer) {
        const std::size_t n = gather_order.size();
        if (pass_ == Pass::forward) {
            std::size_t p = position_ == none ? 0 : position_ + 1;
            while (p < n && gather_order[p] != layer) ++p;
            if (p == n) return std::nullopt;
            position_ = p;
            return p + 1 < n ? std::optional<std::size_t>(gather_order[p + 1]) : std::nullopt;
        }
        std::size_t p = std::min(position_, n);
        while (p > 0 && gather_order[p - 1] != layer) --p;
        if (p == 0) return std::nullopt;
        position_ = p - 1;
        return position_ > 0 ? std::optional<std::size_t>(gather_order[position_ - 1]) : std::nullopt;
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
            compute_type* into = layer_params_.data() + (t.offset - r.offset);
            if (persistent(i)) {
                mem_.copy(persistent_[i].data(), t.count, into);
            } else {
                mem_.copy(g.receive.data() + at, t.count, into);
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
        const auto following = advance_to(layer);
        if (overlap_comm(cfg_.zero_optimization) && following && *following != layer) start_gather(*following, next_);
        finish_gather(now_);
    }
    /// Each tensor's gradient, zero-padded to chunk·N: reduce-scattered pre-divided by N, or
    /// with `reduce_scatter: false` all-reduced by the averaging rule and sliced (SPEC §5.3).
    void reduce_layer(Range r) {
        for (const auto& t : tensors_.tensors) {
            if (!in_layer(t, r)) continue;
            mem_.assign_zeros(scratch_, t.chunk * ranks_);
            mem_.copy(layer_grads_.data() + (t.offset - r.offset), t.count, scratch_.data());
            if (cfg_.zero_optimization.reduce_scatter) {
                mem_.scale(scratch_.data(), t.count, 1.0f / static_cast<float>(ranks_));
                mem_.assign_zeros(received_, t.chunk);
                comm_.reduce_scatter(scratch_.data(), received_.data(), t.chunk, comm::ReduceOp::sum);
                mem_.add_into(grads_.data() + t.local, received_.data(), t.chunk);
            } else {
                averaging_all_reduce(scratch_.data(), scratch_.size());
                mem_.add_into(grads_.data() + t.local, scratch_.data() + rank_ * t.chunk, t.chunk);
            }
        }
    }

    Memory mem_;
    Comm& comm_;
    const Config& cfg_;
    std::size_t rank_, ranks_;
    TensorPartition tensors_;
    std::array<Group, group_count> groups_;  ///< stages 0-2: dense, then this rank's experts
    Buffer<compute_type> params_;  ///< the model's parameters: all (stages 0-2, padded per group at 1-2) or this rank's chunks (3)
    Buffer<float> master_;         ///< mixed precision: fp32 master of this rank's optimizer partition
    Buffer<grad_type> grads_;      ///< accumulated gradients: all (stages 0-1) or this rank's partition (2-3)
    Buffer<grad_type> reduced_;    ///< stage 1: this rank's averaged partition after the boundary reduction
    Buffer<compute_type> layer_params_, gathered_;
    Buffer<grad_type> layer_grads_, received_, scratch_;  ///< stage 3 (scratch_: also all-reduced buckets)
    std::vector<Buffer<compute_type>> persistent_;
    LayerGather now_, next_;
    Pass pass_ = Pass::forward;
    std::size_t position_ = none;  ///< stage 3: where this pass is in gather_order
};

}  // namespace ds
