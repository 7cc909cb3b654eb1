#pragma once
/// @file
/// `ds::comm::Nccl`: the communicator concept over NCCL, for GPU ranks. Buffers are device
/// pointers; every collective is enqueued on the communicator's own communication stream,
/// so it overlaps the compute stream's work (DeepSpeed's `overlap_comm`) until an event
/// orders the two. The blocking forms wait for the stream; the `_async` forms return a
/// handle whose `wait()` does.

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <ds/comm/communicator.hpp>
#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/memory.hpp>
#include <ds/device/cuda/stream.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::comm {

namespace detail {

inline void nccl_check(ncclResult_t status, const char* call, const char* file, int line) {
    if (status != ncclSuccess) throw CudaError("NCCL", call, ncclGetErrorString(status), file, line);
}

template <class T>
constexpr ncclDataType_t nccl_type() {
    if constexpr (std::is_same_v<T, float>) return ncclFloat32;
    else if constexpr (std::is_same_v<T, double>) return ncclFloat64;
    else if constexpr (std::is_same_v<T, std::int32_t>) return ncclInt32;
    else if constexpr (std::is_same_v<T, std::uint8_t>) return ncclUint8;
    else if constexpr (std::is_same_v<T, bf16>) return ncclBfloat16;
    else if constexpr (std::is_same_v<T, half>) return ncclFloat16;
    else static_assert(sizeof(T) == 0, "ds::comm::Nccl: no NCCL type for this element type");
}

inline ncclRedOp_t nccl_op(ReduceOp op) {
    switch (op) {
        case ReduceOp::sum: return ncclSum;
        case ReduceOp::max: return ncclMax;
    }
    return ncclSum;  // unreachable: every ReduceOp is handled above
}

/// ncclGroupStart … ncclGroupEnd, closed on unwind too (an open group breaks every later call).
class NcclGroup {
public:
    NcclGroup() { nccl_check(ncclGroupStart(), "ncclGroupStart()", __FILE__, __LINE__); }
    ~NcclGroup() noexcept(false) {
        const ncclResult_t status = ncclGroupEnd();
        if (std::uncaught_exceptions() == entered_) nccl_check(status, "ncclGroupEnd()", __FILE__, __LINE__);
    }
    NcclGroup(const NcclGroup&) = delete;
    NcclGroup& operator=(const NcclGroup&) = delete;

private:
    int entered_ = std::uncaught_exceptions();
};

}  // namespace detail

/// Throws `ds::CudaError` ("NCCL") unless the NCCL call succeeds.
#define DS_NCCL_CHECK(call) ::ds::comm::detail::nccl_check((call), #call, __FILE__, __LINE__)

/// Completion of collectives enqueued on a communication stream: an event recorded after
/// them. The host's wait adds to its communicator's `CommCounters::seconds`, so the request
/// must not outlive the communicator.
class NcclRequest {
public:
    NcclRequest(cudaStream_t stream, double& waited) : event_(std::make_unique<cuda::Event>()), waited_(&waited) {
        event_->record(stream);
    }
    /// Blocks the host until the collective is done.
    void wait() const {
        const CommTimer timer(*waited_);
        event_->synchronize();
    }
    /// Makes `stream` (say, the compute stream) wait for it, without blocking the host.
    void make_wait(cudaStream_t stream) const { event_->make_wait(stream); }

private:
    std::unique_ptr<cuda::Event> event_;
    double* waited_;
};

/// One NCCL rank: `ncclCommInitRank` with a unique id that rank 0 made and every rank
/// received (over MPI, see `Nccl::over`), on the device already selected with
/// `cudaSetDevice` (by convention `local_rank % device_count`). Sub-groups by `ncclCommSplit`.
///
/// Ordering: each collective first makes the communication stream wait for what the
/// producer stream (`set_producer`, the legacy default stream unless set) has enqueued, so
/// it reads buffers that kernel or copy has finished writing; consumers wait for the
/// returned request (`wait()` on the host, `make_wait(stream)` on a stream).
class Nccl {
public:
    /// Joins the NCCL world `id` as rank `rank` of `size`.
    Nccl(ncclUniqueId id, int rank, int size) : state_(std::make_unique<State>()) {
        DS_NCCL_CHECK(ncclCommInitRank(&state_->comm, size, id, rank));
        state_->rank = rank;
        state_->size = size;
    }
    /// A world of one rank on the current device (tests, single-GPU runs).
    static Nccl single() {
        ncclUniqueId id;
        DS_NCCL_CHECK(ncclGetUniqueId(&id));
        return Nccl(id, 0, 1);
    }
    /// The NCCL world of the ranks of `bootstrap` (e.g. `comm::Mpi`): rank 0 makes the
    /// unique id and broadcasts it as bytes; each rank must have selected its device.
    template <class Bootstrap>
    static Nccl over(Bootstrap& bootstrap) {
        ncclUniqueId id{};
        if (bootstrap.rank() == 0) DS_NCCL_CHECK(ncclGetUniqueId(&id));
        bootstrap.broadcast(reinterpret_cast<std::uint8_t*>(&id), sizeof(id), 0);
        return Nccl(id, bootstrap.rank(), bootstrap.size());
    }

    int rank() const { return state_->rank; }
    int size() const { return state_->size; }
    /// The stream whose work the collectives wait for (the compute stream).
    void set_producer(cudaStream_t stream) { state_->producer = stream; }
    const CommCounters& counters() const { return state_->counters; }
    /// The stream the collectives run on.
    cudaStream_t stream() const { return state_->stream; }
    ncclComm_t native() const { return state_->comm; }
    /// The GPU this rank's communicator was made on (the one current then).
    int device() const {
        int device = -1;
        DS_NCCL_CHECK(ncclCommCuDevice(state_->comm, &device));
        return device;
    }

    template <class T>
    void all_reduce(T* buf, std::size_t n, ReduceOp op) {
        all_reduce_async(buf, n, op);
        synchronize();
    }
    template <class T>
    void reduce_scatter(const T* in, T* out, std::size_t n, ReduceOp op) {
        reduce_scatter_async(in, out, n, op);
        synchronize();
    }
    template <class T>
    void reduce_scatter_v(const T* in, T* out, std::span<const std::size_t> counts, ReduceOp op) {
        reduce_scatter_v_async(in, out, counts, op);
        synchronize();
    }
    template <class T>
    void all_gather(const T* in, T* out, std::size_t n) {
        all_gather_async(in, out, n);
        synchronize();
    }
    template <class T>
    void broadcast(T* buf, std::size_t n, int root) {
        state_->counters.add(Op::broadcast, n);
        after_producer();
        DS_NCCL_CHECK(ncclBroadcast(buf, buf, n, detail::nccl_type<T>(), root, state_->comm, state_->stream));
        synchronize();
    }
    /// Block r of `in` to rank r, as grouped point-to-point sends and receives.
    template <class T>
    void all_to_all(const T* in, T* out, std::size_t n) {
        state_->counters.add(Op::all_to_all, n * static_cast<std::size_t>(size()));
        after_producer();
        {
            const detail::NcclGroup group;
            for (int r = 0; r < size(); ++r) {
                const std::size_t at = static_cast<std::size_t>(r) * n;
                DS_NCCL_CHECK(ncclSend(in + at, n, detail::nccl_type<T>(), r, state_->comm, state_->stream));
                DS_NCCL_CHECK(ncclRecv(out + at, n, detail::nccl_type<T>(), r, state_->comm, state_->stream));
            }
        }
        synchronize();
    }
    void barrier() {
        after_producer();  // first: a block from the allocator is free in the producer's order only
        if (state_->flag.size() == 0) {
            state_->flag = cuda::DeviceBuffer<std::int32_t>(1);
            DS_CUDA_CHECK(cudaMemsetAsync(state_->flag.data(), 0, sizeof(std::int32_t), state_->stream));
        }
        DS_NCCL_CHECK(ncclAllReduce(state_->flag.data(), state_->flag.data(), 1, ncclInt32, ncclSum, state_->comm,
                                    state_->stream));
        synchronize();
    }

    /// The ranks with the same color, ordered by key (`ncclCommSplit`). Collective.
    Nccl split(int color, int key) {
        auto sub = std::make_unique<State>();
        DS_NCCL_CHECK(ncclCommSplit(state_->comm, color, key, &sub->comm, nullptr));
        DS_NCCL_CHECK(ncclCommCount(sub->comm, &sub->size));
        DS_NCCL_CHECK(ncclCommUserRank(sub->comm, &sub->rank));
        sub->producer = state_->producer;
        return Nccl(std::move(sub));
    }

    template <class T>
    NcclRequest all_reduce_async(T* buf, std::size_t n, ReduceOp op) {
        state_->counters.add(Op::all_reduce, 2 * n);
        after_producer();
        DS_NCCL_CHECK(ncclAllReduce(buf, buf, n, detail::nccl_type<T>(), detail::nccl_op(op), state_->comm,
                                    state_->stream));
        return request();
    }
    template <class T>
    NcclRequest reduce_scatter_async(const T* in, T* out, std::size_t n, ReduceOp op) {
        state_->counters.add(Op::reduce_scatter, n * static_cast<std::size_t>(size()));
        after_producer();
        DS_NCCL_CHECK(ncclReduceScatter(in, out, n, detail::nccl_type<T>(), detail::nccl_op(op), state_->comm,
                                        state_->stream));
        return request();
    }
    /// Uneven blocks: one `ncclReduce` to each owner, grouped into one launch.
    template <class T>
    NcclRequest reduce_scatter_v_async(const T* in, T* out, std::span<const std::size_t> counts, ReduceOp op) {
        if (counts.size() != static_cast<std::size_t>(size()))
            throw std::invalid_argument("Nccl::reduce_scatter_v: " + std::to_string(counts.size()) + " counts for " +
                                        std::to_string(size()) + " ranks");
        std::size_t total = 0, at = 0;
        for (std::size_t c : counts) total += c;
        state_->counters.add(Op::reduce_scatter, total);
        after_producer();
        {
            const detail::NcclGroup group;
            for (int r = 0; r < size(); ++r) {
                const std::size_t n = counts[static_cast<std::size_t>(r)];
                if (n > 0)  // the receive buffer is read only on the root
                    DS_NCCL_CHECK(ncclReduce(in + at, r == rank() ? out : nullptr, n, detail::nccl_type<T>(),
                                             detail::nccl_op(op), r, state_->comm, state_->stream));
                at += n;
            }
        }
        return request();
    }
    template <class T>
    NcclRequest all_gather_async(const T* in, T* out, std::size_t n) {
        state_->counters.add(Op::all_gather, n * static_cast<std::size_t>(size()));
        after_producer();
        DS_NCCL_CHECK(ncclAllGather(in, out, n, detail::nccl_type<T>(), state_->comm, state_->stream));
        return request();
    }

private:
    struct State {
        ncclComm_t comm = nullptr;
        int rank = 0, size = 1;
        CommCounters counters;
        cuda::Stream stream_owner;
        cudaStream_t stream = stream_owner.get();
        cudaStream_t producer = nullptr;  ///< the legacy default stream unless set
        cuda::Event produced;
        cuda::DeviceBuffer<std::int32_t> flag;  ///< what `barrier` all-reduces
        /// On unwind from an error, a collective still queued may wait for a rank that
        /// threw and will never join it: `ncclCommAbort` drops it, where `ncclCommDestroy`
        /// would first flush it and hang.
        ~State() {
            if (!comm) return;
            if (std::uncaught_exceptions() > 0) ncclCommAbort(comm);
            else ncclCommDestroy(comm);
        }
    };
    explicit Nccl(std::unique_ptr<State> state) : state_(std::move(state)) {}
    NcclRequest request() { return NcclRequest(state_->stream, state_->counters.seconds); }
    /// The communication stream waits for the producer's work so far.
    void after_producer() {
        state_->produced.record(state_->producer);
        state_->produced.make_wait(state_->stream);
    }
    void synchronize() {
        const CommTimer timer(state_->counters.seconds);
        DS_CUDA_CHECK(cudaStreamSynchronize(state_->stream));
    }

    std::unique_ptr<State> state_;
};

static_assert(communicator<Nccl>);

}  // namespace ds::comm
