#pragma once
/// @file
/// `ds::comm::Single`: a world of one rank (`BasicSingle<Copy>`: whatever memory `Copy`
/// copies; `comm::CudaSingle` is the device's).

#include <algorithm>
#include <cstddef>
#include <span>

#include <ds/comm/communicator.hpp>

namespace ds::comm {

/// Host memory's copy.
struct HostCopy {
    template <class T>
    void operator()(const T* in, T* out, std::size_t n) const {
        std::copy_n(in, n, out);
    }
};

/// One rank: reductions are identities and nothing is copied unless input and output
/// differ, and then by `Copy`. The counters still record what the algorithm asked for
/// (see `CommCounters`).
template <class Copy>
class BasicSingle : public EagerAsync<BasicSingle<Copy>> {
public:
    BasicSingle() = default;
    explicit BasicSingle(Copy copy) : copy_(copy) {}

    int rank() const { return 0; }
    int size() const { return 1; }
    const CommCounters& counters() const { return counters_; }
    void reset_counters() { counters_ = {}; }
    /// For a `Copy` that runs on a stream (`comm::CudaSingle`): the one its copies follow.
    template <class Stream>
        requires requires(Copy c, Stream s) { c.stream = s; }
    void set_stream(Stream stream) {
        copy_.stream = stream;
    }

    template <class T>
    void all_reduce(T*, std::size_t n, ReduceOp) {
        counters_.add(Op::all_reduce, 2 * n);
    }
    template <class T>
    void reduce_scatter(const T* in, T* out, std::size_t n, ReduceOp) {
        counters_.add(Op::reduce_scatter, n);
        if (in != out) copy_(in, out, n);
    }
    template <class T>
    void reduce_scatter_v(const T* in, T* out, std::span<const std::size_t> counts, ReduceOp) {
        counters_.add(Op::reduce_scatter, counts[0]);
        if (in != out) copy_(in, out, counts[0]);
    }
    template <class T>
    void all_gather(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_gather, n);
        if (in != out) copy_(in, out, n);
    }
    template <class T>
    void broadcast(T*, std::size_t n, int) {
        counters_.add(Op::broadcast, n);
    }
    template <class T>
    void all_to_all(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_to_all, n);
        if (in != out) copy_(in, out, n);
    }
    void barrier() {}
    BasicSingle split(int, int) { return BasicSingle(copy_); }

private:
    CommCounters counters_;
    [[no_unique_address]] Copy copy_{};
};

using Single = BasicSingle<HostCopy>;

static_assert(communicator<Single>);

}  // namespace ds::comm
