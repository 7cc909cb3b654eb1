#pragma once
/// @file
/// `ds::comm::Single`: a world of one rank.

#include <algorithm>
#include <cstddef>
#include <span>

#include <ds/comm/communicator.hpp>

namespace ds::comm {

/// One rank: reductions are identities and nothing is copied unless input and output
/// differ. The counters still record what the algorithm asked for (see `CommCounters`).
class Single : public EagerAsync<Single> {
public:
    int rank() const { return 0; }
    int size() const { return 1; }
    const CommCounters& counters() const { return counters_; }
    void reset_counters() { counters_ = {}; }

    template <class T>
    void all_reduce(T*, std::size_t n, ReduceOp) {
        counters_.add(Op::all_reduce, 2 * n);
    }
    template <class T>
    void reduce_scatter(const T* in, T* out, std::size_t n, ReduceOp) {
        counters_.add(Op::reduce_scatter, n);
        if (in != out) std::copy_n(in, n, out);
    }
    template <class T>
    void reduce_scatter_v(const T* in, T* out, std::span<const std::size_t> counts, ReduceOp) {
        counters_.add(Op::reduce_scatter, counts[0]);
        if (in != out) std::copy_n(in, counts[0], out);
    }
    template <class T>
    void all_gather(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_gather, n);
        if (in != out) std::copy_n(in, n, out);
    }
    template <class T>
    void broadcast(T*, std::size_t n, int) {
        counters_.add(Op::broadcast, n);
    }
    template <class T>
    void all_to_all(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_to_all, n);
        if (in != out) std::copy_n(in, n, out);
    }
    void barrier() {}
    Single split(int, int) { return {}; }

private:
    CommCounters counters_;
};

static_assert(communicator<Single>);

}  // namespace ds::comm
