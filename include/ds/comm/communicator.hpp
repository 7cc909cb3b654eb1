#pragma once
/// @file
/// The `ds::comm::communicator` concept: collectives between the ranks of a group.

#include <array>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace ds::comm {

/// How `all_reduce` and `reduce_scatter` combine values.
enum class ReduceOp { sum, max };

/// The collective operations, as counted in `CommCounters`.
enum class Op { all_reduce, reduce_scatter, all_gather, broadcast, all_to_all };
inline constexpr std::array<std::string_view, 5> op_names{"all_reduce", "reduce_scatter", "all_gather", "broadcast",
                                                          "all_to_all"};

/// Elements moved per operation, in the ZeRO paper's units, so that a data-parallel step
/// over Ψ parameters reads 2Ψ: an all-reduce of n elements counts 2n (a reduce-scatter
/// plus an all-gather); a reduce-scatter, all-gather or all-to-all over a buffer of n
/// elements in total counts n; a broadcast of n counts n. Counted on every rank, for every
/// call, whatever the world size, so the figures are a property of the algorithm.
struct CommCounters {
    std::array<std::uint64_t, 5> elements{};
    std::array<std::uint64_t, 5> calls{};
    double seconds = 0.0;  ///< wall time spent inside blocking collectives and waits

    void add(Op op, std::uint64_t n) {
        elements[static_cast<std::size_t>(op)] += n;
        ++calls[static_cast<std::size_t>(op)];
    }
    std::uint64_t operator[](Op op) const { return elements[static_cast<std::size_t>(op)]; }
    std::uint64_t total() const {
        std::uint64_t t = 0;
        for (auto e : elements) t += e;
        return t;
    }
};

/// Adds the wall time of its scope to a counter: what a rank spends waiting on the others.
class CommTimer {
public:
    explicit CommTimer(double& total) : total_(total), start_(std::chrono::steady_clock::now()) {}
    ~CommTimer() { total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
    CommTimer(const CommTimer&) = delete;
    CommTimer& operator=(const CommTimer&) = delete;

private:
    double& total_;
    std::chrono::steady_clock::time_point start_;
};

/// A finished operation: communicators that complete their "asynchronous" calls before
/// returning hand this back, so waiting is free. Ordering and results are the blocking call's.
struct Completed {
    void wait() const {}
};

/// The `_async` forms for communicators whose collectives complete before returning
/// (Threads, Single): each calls the blocking form and hands back `Completed`.
template <class Derived>
class EagerAsync {
public:
    template <class T>
    Completed all_reduce_async(T* buf, std::size_t n, ReduceOp op) {
        self().all_reduce(buf, n, op);
        return {};
    }
    template <class T>
    Completed reduce_scatter_async(const T* in, T* out, std::size_t n, ReduceOp op) {
        self().reduce_scatter(in, out, n, op);
        return {};
    }
    template <class T>
    Completed reduce_scatter_v_async(const T* in, T* out, std::span<const std::size_t> counts, ReduceOp op) {
        self().reduce_scatter_v(in, out, counts, op);
        return {};
    }
    template <class T>
    Completed all_gather_async(const T* in, T* out, std::size_t n) {
        self().all_gather(in, out, n);
        return {};
    }

private:
    Derived& self() { return static_cast<Derived&>(*this); }
};

/// Ranks that run collectives together.
///
/// A model provides `rank()`, `size()`, `counters()` and, for element types float, double,
/// std::int32_t and std::uint8_t:
/// - `all_reduce(buf, n, op)`: in place; every rank ends with the same values;
/// - `reduce_scatter(in, out, n)`: `in` holds size()·n values, rank r gets the reduction of
///   block r in `out` (n values); `reduce_scatter_v(in, out, counts)` with a count per rank;
/// - `all_gather(in, out, n)`: rank r's n values land in block r of every rank's `out`;
/// - `broadcast(buf, n, root)`; `all_to_all(in, out, n)`: block r of rank k's `in` becomes
///   block k of rank r's `out`; `barrier()`;
/// - `split(color, key)`: the sub-group of ranks with the same color, ordered by key;
/// - `all_reduce_async(...)` etc.: start the operation, return a handle whose `wait()`
///   completes it; the buffers must stay untouched until then.
///
/// Laws: every rank calls the same collectives in the same order; reductions are
/// deterministic (the same inputs give bit-identical results on every rank and run).
template <class C>
concept communicator = requires(C& c, const C& cc, float* buf, const float* in, std::size_t n, int root) {
    { cc.rank() } -> std::convertible_to<int>;
    { cc.size() } -> std::convertible_to<int>;
    { cc.counters() } -> std::convertible_to<const CommCounters&>;
    c.all_reduce(buf, n, ReduceOp::sum);
    c.reduce_scatter(in, buf, n, ReduceOp::sum);
    c.reduce_scatter_v(in, buf, std::span<const std::size_t>{}, ReduceOp::sum);
    c.all_gather(in, buf, n);
    c.broadcast(buf, n, root);
    c.all_to_all(in, buf, n);
    c.barrier();
    { c.split(0, 0) } -> std::same_as<C>;
    c.all_reduce_async(buf, n, ReduceOp::sum).wait();
    c.reduce_scatter_async(in, buf, n, ReduceOp::sum).wait();
    c.reduce_scatter_v_async(in, buf, std::span<const std::size_t>{}, ReduceOp::sum).wait();
    c.all_gather_async(in, buf, n).wait();
};

}  // namespace ds::comm
