#pragma once
/// @file
/// `ds::cuda::DeviceMemory`: `ZeroState`'s memory policy on the GPU (see
/// `ds/device/cpu/host_memory.hpp` for what a policy provides). Buffers come from the
/// caching allocator and every operation is enqueued on one stream, the engine's compute
/// stream, so it is ordered after the backward that wrote the gradients; the communicator
/// must order its collectives after that stream too (`Nccl::set_producer`,
/// `CudaMpi::set_stream`). Host transfers wait for their copy.

#include <cstddef>
#include <type_traits>

#include <cuda_runtime_api.h>

#include <ds/comm/communicator.hpp>
#include <ds/device/cuda/convert.cuh>
#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/layer_kernels.cuh>
#include <ds/device/cuda/memory.hpp>
#include <ds/device/cuda/reduce.cuh>
#include <ds/numeric/storage.hpp>

namespace ds::cuda {

namespace detail {

/// x[i] = T(float(x[i]) · factor), as `cpu::scale`.
template <class T>
struct ScaleBy {
    T* x;
    float factor;
    __device__ void operator()(std::size_t i) const { x[i] = T(static_cast<float>(x[i]) * factor); }
};

}  // namespace detail

class DeviceMemory {
public:
    template <class T>
    using buffer = DeviceBuffer<T>;

    explicit DeviceMemory(cudaStream_t stream) : stream_(stream) {}

    cudaStream_t stream() const { return stream_; }

    /// Reallocates only when the size changes (a cache hit of the caching allocator).
    template <class T>
    void assign_zeros(buffer<T>& b, std::size_t n) const {
        if (b.size() != n) b = DeviceBuffer<T>(n);
        zero(b.data(), n);
    }
    /// All-zero bits are +0 in float, bf16 and half.
    template <class T>
    void zero(T* p, std::size_t n) const {
        if (n) DS_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(T), stream_));
    }
    template <class T>
    void copy(const T* from, std::size_t n, T* to) const {
        if (n && from != to) DS_CUDA_CHECK(cudaMemcpyAsync(to, from, n * sizeof(T), cudaMemcpyDeviceToDevice, stream_));
    }
    template <storage_float T>
    void scale(T* x, std::size_t n, float factor) const {
        if (n) detail::for_each_index(n, detail::ScaleBy<plain_t<T>>{x, factor}, stream_);
    }
    /// dst += src in T, as `cpu::add_into`.
    template <storage_float T>
    void add_into(T* dst, const T* src, std::size_t n) const {
        if (n) accumulate(src, dst, n, stream_);
    }
    /// Σ x² in float64 on the device; waits for it.
    template <storage_float T>
    double square_sum(const T* x, std::size_t n) const {
        return cuda::square_sum(x, n, stream_);
    }
    template <storage_float From, storage_float To>
    void convert(const From* in, To* out, std::size_t n) const {
        if constexpr (std::is_same_v<From, To>) copy(in, n, out);
        else cuda::convert(in, out, n, stream_);
    }
    /// Host values into device memory, cast to `To` on the device; waits for it.
    template <storage_float From, storage_float To>
    void upload(const From* host, std::size_t n, To* to) const {
        if (n == 0) return;
        if constexpr (std::is_same_v<From, To>) {
            DS_CUDA_CHECK(cudaMemcpyAsync(to, host, n * sizeof(From), cudaMemcpyHostToDevice, stream_));
        } else {
            DeviceBuffer<From> staged(n);
            DS_CUDA_CHECK(cudaMemcpyAsync(staged.data(), host, n * sizeof(From), cudaMemcpyHostToDevice, stream_));
            cuda::convert(staged.data(), to, n, stream_);
        }
        synchronize();
    }
    /// Device values to host memory, cast to `To` on the device first; waits for it.
    template <storage_float From, storage_float To>
    void download(const From* from, std::size_t n, To* host) const {
        if (n == 0) return;
        if constexpr (std::is_same_v<From, To>) {
            DS_CUDA_CHECK(cudaMemcpyAsync(host, from, n * sizeof(To), cudaMemcpyDeviceToHost, stream_));
            synchronize();
        } else {
            DeviceBuffer<To> staged(n);
            cuda::convert(from, staged.data(), n, stream_);
            DS_CUDA_CHECK(cudaMemcpyAsync(host, staged.data(), n * sizeof(To), cudaMemcpyDeviceToHost, stream_));
            synchronize();  // before `staged` goes back to the cache
        }
    }
    /// A host scalar summed over `comm`'s ranks through a device value (the communicator
    /// takes device buffers only).
    template <class Comm>
    double sum_over(Comm& comm, double x) const {
        DeviceBuffer<double> value(1);
        DS_CUDA_CHECK(cudaMemcpyAsync(value.data(), &x, sizeof(double), cudaMemcpyHostToDevice, stream_));
        return all_reduced(comm, value.data());
    }
    /// Σ x² summed over `comm`'s ranks, reduced and all-reduced on the device: the host
    /// waits once, for the result.
    template <class Comm, storage_float T>
    double square_sum_over(Comm& comm, const T* x, std::size_t n) const {
        DeviceBuffer<double> scratch(square_sum_scratch + 1);
        double* sum = scratch.data() + square_sum_scratch;
        cuda::square_sum(x, n, sum, scratch.data(), stream_);
        return all_reduced(comm, sum);
    }

private:
    /// `*value` (device memory, written on the stream) summed over `comm`'s ranks and read
    /// back. A communicator whose requests can hold a stream back (`Nccl`) orders the read
    /// after its collective without the host waiting; any other completes it first. (The
    /// one wait then covers kernel and collective together, so it is not counted as
    /// communication time in the communicator's `CommCounters::seconds`.)
    template <class Comm>
    double all_reduced(Comm& comm, double* value) const {
        auto request = comm.all_reduce_async(value, 1, comm::ReduceOp::sum);
        if constexpr (requires { request.make_wait(stream_); }) request.make_wait(stream_);
        else request.wait();
        double x = 0.0;
        DS_CUDA_CHECK(cudaMemcpyAsync(&x, value, sizeof(double), cudaMemcpyDeviceToHost, stream_));
        synchronize();
        return x;
    }

    void synchronize() const { DS_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

    cudaStream_t stream_;
};

}  // namespace ds::cuda
