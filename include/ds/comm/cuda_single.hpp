#pragma once
/// @file
/// `ds::comm::CudaSingle`: a world of one rank whose buffers are in device memory — what a
/// `ds::Engine<..., ds::Cuda>` runs over when it is given `comm::Single`.

#include <cstddef>
#include <span>

#include <cuda_runtime_api.h>

#include <ds/comm/communicator.hpp>
#include <ds/device/cuda/error.hpp>

namespace ds::comm {

/// As `Single`: reductions are identities and the counters record what was asked; where
/// input and output differ the values are copied device to device on `stream` (`set_stream`,
/// the legacy default stream unless set), after the work already on it.
class CudaSingle : public EagerAsync<CudaSingle> {
public:
    int rank() const { return 0; }
    int size() const { return 1; }
    const CommCounters& counters() const { return counters_; }
    void reset_counters() { counters_ = {}; }
    void set_stream(cudaStream_t stream) { stream_ = stream; }

    template <class T>
    void all_reduce(T*, std::size_t n, ReduceOp) {
        counters_.add(Op::all_reduce, 2 * n);
    }
    template <class T>
    void reduce_scatter(const T* in, T* out, std::size_t n, ReduceOp) {
        counters_.add(Op::reduce_scatter, n);
        copy(in, out, n);
    }
    template <class T>
    void reduce_scatter_v(const T* in, T* out, std::span<const std::size_t> counts, ReduceOp) {
        counters_.add(Op::reduce_scatter, counts[0]);
        copy(in, out, counts[0]);
    }
    template <class T>
    void all_gather(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_gather, n);
        copy(in, out, n);
    }
    template <class T>
    void broadcast(T*, std::size_t n, int) {
        counters_.add(Op::broadcast, n);
    }
    template <class T>
    void all_to_all(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_to_all, n);
        copy(in, out, n);
    }
    void barrier() {}
    CudaSingle split(int, int) {
        CudaSingle sub;
        sub.stream_ = stream_;
        return sub;
    }

private:
    template <class T>
    void copy(const T* in, T* out, std::size_t n) {
        if (in != out && n)
            DS_CUDA_CHECK(cudaMemcpyAsync(out, in, n * sizeof(T), cudaMemcpyDeviceToDevice, stream_));
    }

    CommCounters counters_;
    cudaStream_t stream_ = nullptr;
};

static_assert(communicator<CudaSingle>);

}  // namespace ds::comm
