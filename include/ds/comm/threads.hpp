#pragma once
/// @file
/// `ds::comm::Threads`: N ranks as N threads of one process, with shared-memory collectives.

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

#include <ds/comm/communicator.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::comm {

/// Thrown by a `Threads` collective when another rank of its world has failed: the collective
/// can never complete, so it ends instead of waiting for a rank that will not arrive.
class PeerFailed : public std::runtime_error {
public:
    PeerFailed() : std::runtime_error("ds::comm::Threads: another rank failed, so this collective cannot complete") {}
};

namespace detail {

/// What all the groups of one world share: the lock their barriers wait under, and whether a
/// rank has failed. One condition variable for every group, so that `abort` reaches ranks
/// waiting in any sub-group made by `split`.
struct ThreadWorld {
    std::mutex mutex;
    std::condition_variable changed;
    bool aborted = false;

    void abort() {
        const std::lock_guard lock(mutex);
        aborted = true;
        changed.notify_all();
    }
};

/// What the ranks of one thread group share: a barrier and one published pointer per rank.
struct ThreadGroup {
    ThreadGroup(std::shared_ptr<ThreadWorld> w, int n)
        : world(std::move(w)), size(n), inputs(n), outputs(n), colors(n), keys(n), children(n) {}
    std::shared_ptr<ThreadWorld> world;
    int size;
    int arrived = 0;
    unsigned long generation = 0;  ///< how many times the barrier has opened
    std::vector<const void*> inputs;
    std::vector<void*> outputs;
    std::vector<int> colors, keys;
    std::vector<std::shared_ptr<ThreadGroup>> children;

    /// A collective's first meeting, once each rank has published its buffers: returns when all
    /// `size` ranks have arrived; throws `PeerFailed` if the world is aborted before they have.
    void meet() { wait_for_all(true); }

    /// A collective's last meeting, once each rank is done with the others' buffers. It cannot
    /// be aborted: the ranks that met all get here (`Meeting` brings even one that threw), and
    /// a rank that left early would free a buffer another rank is still reading.
    void finish() { wait_for_all(false); }

private:
    void wait_for_all(bool abortable) {
        std::unique_lock lock(world->mutex);
        if (abortable && world->aborted) throw PeerFailed();
        const unsigned long opening = generation;
        if (++arrived == size) {
            arrived = 0;
            ++generation;
            world->changed.notify_all();
            return;
        }
        world->changed.wait(lock, [&] { return generation != opening || (abortable && world->aborted); });
        if (generation == opening) {
            --arrived;
            throw PeerFailed();
        }
    }
};

/// A rank's part in one collective: it meets the group on construction and attends the
/// closing meeting on destruction, so a rank whose copying throws in between still lets
/// the others finish (and then fails).
class Meeting {
public:
    explicit Meeting(ThreadGroup& group) : group_(group) { group_.meet(); }
    Meeting(const Meeting&) = delete;
    Meeting& operator=(const Meeting&) = delete;
    ~Meeting() { group_.finish(); }

private:
    ThreadGroup& group_;
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
        auto group = std::make_shared<detail::ThreadGroup>(std::make_shared<detail::ThreadWorld>(), n);
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
        const detail::Meeting meeting(g);  // until return: the closing meeting
        // Rank r reduces the r-th slice across all buffers and writes it back into all of them.
        const std::size_t first = n * rank_ / g.size, last = n * (rank_ + 1) / g.size;
        for (std::size_t i = first; i < last; ++i) {
            T acc = static_cast<T*>(g.outputs[0])[i];
            for (int k = 1; k < g.size; ++k) acc = detail::combine(acc, static_cast<T*>(g.outputs[k])[i], op);
            for (int k = 0; k < g.size; ++k) static_cast<T*>(g.outputs[k])[i] = acc;
        }
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
        const detail::Meeting meeting(g);  // until return: the closing meeting
        for (std::size_t i = 0; i < counts[rank_]; ++i) {
            T acc = static_cast<const T*>(g.inputs[0])[offset + i];
            for (int k = 1; k < g.size; ++k) acc = detail::combine(acc, static_cast<const T*>(g.inputs[k])[offset + i], op);
            out[i] = acc;
        }
    }

    template <class T>
    void all_gather(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_gather, n * static_cast<std::size_t>(size()));
        const CommTimer timer(counters_.seconds);
        auto& g = *group_;
        g.inputs[rank_] = in;
        const detail::Meeting meeting(g);  // until return: the closing meeting
        for (int k = 0; k < g.size; ++k) {
            const T* source = static_cast<const T*>(g.inputs[k]);
            if (source != out + k * n) std::copy_n(source, n, out + k * n);
        }
    }

    template <class T>
    void broadcast(T* buf, std::size_t n, int root) {
        counters_.add(Op::broadcast, n);
        const CommTimer timer(counters_.seconds);
        auto& g = *group_;
        g.inputs[rank_] = buf;
        const detail::Meeting meeting(g);  // until return: the closing meeting
        if (rank_ != root) std::copy_n(static_cast<const T*>(g.inputs[root]), n, buf);
    }

    template <class T>
    void all_to_all(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_to_all, n * static_cast<std::size_t>(size()));
        const CommTimer timer(counters_.seconds);
        auto& g = *group_;
        g.inputs[rank_] = in;
        const detail::Meeting meeting(g);  // until return: the closing meeting
        for (int k = 0; k < g.size; ++k)
            std::copy_n(static_cast<const T*>(g.inputs[k]) + static_cast<std::size_t>(rank_) * n, n, out + k * n);
    }

    void barrier() {
        const CommTimer timer(counters_.seconds);
        group_->meet();
    }

    /// The ranks with the same `color`, ordered by (key, rank). Collective over this group.
    Threads split(int color, int key) {
        auto& g = *group_;
        g.colors[rank_] = color;
        g.keys[rank_] = key;
        std::vector<int> members;
        {
            const detail::Meeting meeting(g);  // closes once the children are published
            for (int r = 0; r < g.size; ++r)
                if (g.colors[r] == color) members.push_back(r);
            std::stable_sort(members.begin(), members.end(), [&](int a, int b) { return g.keys[a] < g.keys[b]; });
            if (rank_ == *std::min_element(members.begin(), members.end())) {
                auto child = std::make_shared<detail::ThreadGroup>(g.world, static_cast<int>(members.size()));
                for (int m : members) g.children[m] = child;
            }
        }
        Threads sub(g.children[rank_],
                    static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin()));
        // Everyone has taken its child before the slots are reused. An abort may end this
        // meeting: nothing is read past it.
        g.meet();
        return sub;
    }

    /// What a rank that fails calls so that the others do not wait for it: from now on, a
    /// collective of this world or of a sub-group whose ranks have not all arrived throws
    /// `PeerFailed`, in the ranks waiting there and in those that call one later.
    void abort() { group_->world->abort(); }

private:
    Threads(std::shared_ptr<detail::ThreadGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}

    std::shared_ptr<detail::ThreadGroup> group_;
    int rank_;
    CommCounters counters_;
};

static_assert(communicator<Threads>);

/// Runs `body(comm)` on n threads, one per rank of a new `Threads` world, and rethrows the
/// exception of the rank that failed first, after all have finished. A failing rank aborts
/// the world, so the others' collectives throw `PeerFailed` instead of waiting for it.
template <class Body>
void run_ranks(int n, Body&& body) {
    auto comms = Threads::world(n);
    std::mutex failure;
    std::exception_ptr first;
    {
        std::vector<std::jthread> threads;
        for (int r = 0; r < n; ++r)
            threads.emplace_back([&, r] {
                try {
                    body(comms[r]);
                } catch (...) {
                    {
                        const std::lock_guard lock(failure);
                        if (!first) first = std::current_exception();
                    }
                    comms[r].abort();
                }
            });
    }
    if (first) std::rethrow_exception(first);
}

}  // namespace ds::comm
