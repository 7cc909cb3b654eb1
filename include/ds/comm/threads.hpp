#pragma once
/// @file
/// `ds::comm::Threads`: N ranks as N threads of one process, with shared-memory collectives.

#include <algorithm>
#include <barrier>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <span>
#include <thread>
#include <vector>

#include <ds/comm/communicator.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::comm {

namespace detail {

/// What the ranks of one thread group share: a barrier and one published pointer per rank.
struct ThreadGroup {
    explicit ThreadGroup(int n) : size(n), sync(n), inputs(n), outputs(n), colors(n), keys(n), children(n) {}
    int size;
    std::barrier<> sync;
    std::vector<const void*> inputs;
    std::vector<void*> outputs;
    std::vector<int> colors, keys;
    std::vector<std::shared_ptr<ThreadGroup>> children;
};

template <class T>
T combine(T a, T b, ReduceOp op) {
    if constexpr (narrow_float<T>) {  // 2-byte floats: combined in float, rounded once per addition
        return T(combine(static_cast<float>(a), static_cast<float>(b), op));
    } else {
        if (op == ReduceOp::sum) return a + b;
        if constexpr (std::is_floating_point_v<T>) {
            if (a != a || b != b) return a != a ? a : b;  // NaN wins, so overflow checks see it
        }
        return a > b ? a : b;
    }
}

}  // namespace detail

/// The threaded communicator, like PyTorch's threaded process group: `Threads::world(n)`
/// gives one communicator per rank; each rank's thread uses its own. Collectives publish a
/// pointer per rank, meet at a barrier and read each other's buffers directly.
/// Reductions add rank 0's value first, then rank 1's, ... on every rank: deterministic and
/// bit-identical across ranks. The `_async` calls complete eagerly (`Completed`).
class Threads : public EagerAsync<Threads> {
public:
    /// The n communicators of a new world, rank i at index i.
    static std::vector<Threads> world(int n) {
        auto group = std::make_shared<detail::ThreadGroup>(n);
        std::vector<Threads> ranks;
        for (int r = 0; r < n; ++r) ranks.push_back(Threads(group, r));
        return ranks;
    }

    int rank() const { return rank_; }
    int size() const { return group_->size; }
    const CommCounters& counters() const { return counters_; }
    void reset_counters() { counters_ = {}; }

    template <class T>
    void all_reduce(T* buf, std::size_t n, ReduceOp op) {
        counters_.add(Op::all_reduce, 2 * n);
        const CommTimer timer(counters_.seconds);
        auto& g = *group_;
        g.outputs[rank_] = buf;
        g.sync.arrive_and_wait();
        // Rank r reduces the r-th slice across all buffers and writes it back into all of them.
        const std::size_t first = n * rank_ / g.size, last = n * (rank_ + 1) / g.size;
        for (std::size_t i = first; i < last; ++i) {
            T acc = static_cast<T*>(g.outputs[0])[i];
            for (int k = 1; k < g.size; ++k) acc = detail::combine(acc, static_cast<T*>(g.outputs[k])[i], op);
            for (int k = 0; k < g.size; ++k) static_cast<T*>(g.outputs[k])[i] = acc;
        }
        g.sync.arrive_and_wait();
    }

    template <class T>
    void reduce_scatter(const T* in, T* out, std::size_t n, ReduceOp op) {
        const std::vector<std::size_t> counts(static_cast<std::size_t>(size()), n);
        reduce_scatter_v(in, out, std::span<const std::size_t>(counts), op);
    }

    /// Reduce-scatter with a count per rank: `in` holds Σ counts values, rank r gets the
    /// reduction of its block (at offset Σ_{k<r} counts[k]) in `out`.
    template <class T>
    void reduce_scatter_v(const T* in, T* out, std::span<const std::size_t> counts, ReduceOp op) {
        std::size_t total = 0, offset = 0;
        for (std::size_t k = 0; k < counts.size(); ++k) {
            if (static_cast<int>(k) == rank_) offset = total;
            total += counts[k];
        }
        counters_.add(Op::reduce_scatter, total);
        const CommTimer timer(counters_.seconds);
        auto& g = *group_;
        g.inputs[rank_] = in;
        g.sync.arrive_and_wait();
        for (std::size_t i = 0; i < counts[rank_]; ++i) {
            T acc = static_cast<const T*>(g.inputs[0])[offset + i];
            for (int k = 1; k < g.size; ++k) acc = detail::combine(acc, static_cast<const T*>(g.inputs[k])[offset + i], op);
            out[i] = acc;
        }
        g.sync.arrive_and_wait();
    }

    template <class T>
    void all_gather(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_gather, n * static_cast<std::size_t>(size()));
        const CommTimer timer(counters_.seconds);
        auto& g = *group_;
        g.inputs[rank_] = in;
        g.sync.arrive_and_wait();
        for (int k = 0; k < g.size; ++k) {
            const T* source = static_cast<const T*>(g.inputs[k]);
            if (source != out + k * n) std::copy_n(source, n, out + k * n);
        }
        g.sync.arrive_and_wait();
    }

    template <class T>
    void broadcast(T* buf, std::size_t n, int root) {
        counters_.add(Op::broadcast, n);
        const CommTimer timer(counters_.seconds);
        auto& g = *group_;
        g.inputs[rank_] = buf;
        g.sync.arrive_and_wait();
        if (rank_ != root) std::copy_n(static_cast<const T*>(g.inputs[root]), n, buf);
        g.sync.arrive_and_wait();
    }

    template <class T>
    void all_to_all(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_to_all, n * static_cast<std::size_t>(size()));
        const CommTimer timer(counters_.seconds);
        auto& g = *group_;
        g.inputs[rank_] = in;
        g.sync.arrive_and_wait();
        for (int k = 0; k < g.size; ++k)
            std::copy_n(static_cast<const T*>(g.inputs[k]) + static_cast<std::size_t>(rank_) * n, n, out + k * n);
        g.sync.arrive_and_wait();
    }

    void barrier() {
        const CommTimer timer(counters_.seconds);
        group_->sync.arrive_and_wait();
    }

    /// The ranks with the same `color`, ordered by (key, rank). Collective over this group.
    Threads split(int color, int key) {
        auto& g = *group_;
        g.colors[rank_] = color;
        g.keys[rank_] = key;
        g.sync.arrive_and_wait();
        std::vector<int> members;
        for (int r = 0; r < g.size; ++r)
            if (g.colors[r] == color) members.push_back(r);
        std::stable_sort(members.begin(), members.end(), [&](int a, int b) { return g.keys[a] < g.keys[b]; });
        if (rank_ == *std::min_element(members.begin(), members.end())) {
            auto child = std::make_shared<detail::ThreadGroup>(static_cast<int>(members.size()));
            for (int m : members) g.children[m] = child;
        }
        g.sync.arrive_and_wait();
        Threads sub(g.children[rank_],
                    static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin()));
        g.sync.arrive_and_wait();  // everyone has taken its child before the slots are reused
        return sub;
    }


private:
    Threads(std::shared_ptr<detail::ThreadGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}

    std::shared_ptr<detail::ThreadGroup> group_;
    int rank_;
    CommCounters counters_;
};

static_assert(communicator<Threads>);

/// Runs `body(comm)` on n threads, one per rank of a new `Threads` world, and rethrows the
/// first exception any rank threw (after all have finished or failed).
/// A rank that throws mid-collective would leave the others waiting, so `body` should
/// fail only between collectives (as test assertions do).
template <class Body>
void run_ranks(int n, Body&& body) {
    auto comms = Threads::world(n);
    std::vector<std::exception_ptr> errors(n);
    {
        std::vector<std::jthread> threads;
        for (int r = 0; r < n; ++r)
            threads.emplace_back([&, r] {
                try {
                    body(comms[r]);
                } catch (...) {
                    errors[r] = std::current_exception();
                }
            });
    }
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace ds::comm
