#pragma once
/// @file
/// `ds::comm::CudaStaged<Host>`: the communicator concept for device buffers over a host
/// communicator (`comm::Mpi`: `CudaMpi`; `comm::Threads`: ranks as threads of one process),
/// staging through pinned host memory. NCCL refuses two ranks on one GPU; this lets tests
/// run 2 or 4 GPU ranks on a single card (and runs where NCCL is absent). Every collective
/// copies its input to the host, runs the host collective there and copies the result back,
/// so it is slow and blocking: the `_async` forms complete before returning.

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include <cuda_runtime_api.h>

#include <ds/comm/communicator.hpp>
#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/memory.hpp>

namespace ds::comm {

/// Device-buffer collectives over the host communicator `Host`. The copies run on `stream`
/// (`set_stream`; the legacy default stream unless set), after the work already on it.
template <communicator Host>
class CudaStaged : public EagerAsync<CudaStaged<Host>> {
public:
    explicit CudaStaged(Host host = Host{}) : host_(std::move(host)) {}
    CudaStaged(CudaStaged&& other) noexcept
        : host_(std::move(other.host_)), stream_(other.stream_), send_(std::move(other.send_)),
          receive_(std::move(other.receive_)) {}
    CudaStaged& operator=(CudaStaged&&) = delete;
    CudaStaged(const CudaStaged&) = delete;
    CudaStaged& operator=(const CudaStaged&) = delete;

    int rank() const { return host_.rank(); }
    int size() const { return host_.size(); }
    const CommCounters& counters() const { return host_.counters(); }
    void set_stream(cudaStream_t stream) { stream_ = stream; }

    template <class T>
    void all_reduce(T* buf, std::size_t n, ReduceOp op) {
        staged_in_place(buf, n, [&](T* host) { host_.all_reduce(host, n, op); });
    }
    template <class T>
    void reduce_scatter(const T* in, T* out, std::size_t n, ReduceOp op) {
        staged(in, n * static_cast<std::size_t>(size()), out, n,
               [&](const T* host, T* result) { host_.reduce_scatter(host, result, n, op); });
    }
    template <class T>
    void reduce_scatter_v(const T* in, T* out, std::span<const std::size_t> counts, ReduceOp op) {
        std::size_t total = 0;
        for (std::size_t c : counts) total += c;
        staged(in, total, out, counts[static_cast<std::size_t>(rank())],
               [&](const T* host, T* result) { host_.reduce_scatter_v(host, result, counts, op); });
    }
    template <class T>
    void all_gather(const T* in, T* out, std::size_t n) {
        staged(in, n, out, n * static_cast<std::size_t>(size()),
               [&](const T* host, T* result) { host_.all_gather(host, result, n); });
    }
    template <class T>
    void broadcast(T* buf, std::size_t n, int root) {
        staged_in_place(buf, n, [&](T* host) { host_.broadcast(host, n, root); });
    }
    template <class T>
    void all_to_all(const T* in, T* out, std::size_t n) {
        const std::size_t total = n * static_cast<std::size_t>(size());
        staged(in, total, out, total, [&](const T* host, T* result) { host_.all_to_all(host, result, n); });
    }
    void barrier() { host_.barrier(); }
    CudaStaged split(int color, int key) {
        CudaStaged sub(host_.split(color, key));
        sub.stream_ = stream_;
        return sub;
    }

private:
    /// Pinned host memory that grows to the largest transfer (page-locked: the copies run
    /// at full bus speed).
    using Staging = cuda::PinnedBuffer<std::byte>;
    template <class T>
    static T* staging(Staging& buffer, std::size_t n) {
        if (buffer.size() < n * sizeof(T)) {
            buffer = Staging();  // the old block first: peak pinned memory stays one block
            buffer = Staging(n * sizeof(T));
        }
        return reinterpret_cast<T*>(buffer.data());
    }

    template <class T>
    T* to_host(Staging& buffer, const T* device, std::size_t n) {
        T* host = staging<T>(buffer, n);
        DS_CUDA_CHECK(cudaMemcpyAsync(host, device, n * sizeof(T), cudaMemcpyDeviceToHost, stream_));
        DS_CUDA_CHECK(cudaStreamSynchronize(stream_));
        return host;
    }
    /// in_n device values to the host, `collective(host_in, host_out)`, out_n values back.
    template <class T, class Collective>
    void staged(const T* in, std::size_t in_n, T* out, std::size_t out_n, Collective&& collective) {
        const T* host = to_host(send_, in, in_n);
        T* result = staging<T>(receive_, out_n);
        collective(host, result);
        to_device(out, result, out_n);
    }
    /// n device values to the host, `collective(host)` on them in place, and back.
    template <class T, class Collective>
    void staged_in_place(T* buf, std::size_t n, Collective&& collective) {
        T* host = to_host(send_, buf, n);
        collective(host);
        to_device(buf, host, n);
    }
    template <class T>
    void to_device(T* device, const T* host, std::size_t n) {
        DS_CUDA_CHECK(cudaMemcpyAsync(device, host, n * sizeof(T), cudaMemcpyHostToDevice, stream_));
        DS_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the staging buffer is reused next call
    }

    Host host_;  ///< the host communicator
    cudaStream_t stream_ = nullptr;
    Staging send_, receive_;
};


}  // namespace ds::comm
