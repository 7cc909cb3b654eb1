#pragma once
/// @file
/// `ds::comm::Mpi`: collectives over OpenMPI, for ranks launched with `mpirun`.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mpi.h>

#include <ds/comm/communicator.hpp>
#include <ds/comm/worker.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::comm {

/// An MPI call failed: the error names the call and MPI's message.
class MpiError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

inline void mpi_check(int code, const char* call) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(code, text, &length);
    throw MpiError(std::string(call) + " failed: " + std::string(text, static_cast<std::size_t>(length)));
}

template <class T>
MPI_Datatype mpi_type() {
    if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
    else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
    else if constexpr (std::is_same_v<T, std::int32_t>) return MPI_INT32_T;
    else if constexpr (std::is_same_v<T, std::int64_t>) return MPI_INT64_T;
    else if constexpr (std::is_same_v<T, std::uint8_t>) return MPI_UINT8_T;
    else if constexpr (narrow_float<T>) return MPI_UINT16_T;  // moved as bits, reduced by narrow_reduce
    else static_assert(sizeof(T) == 0, "ds::comm::Mpi: no MPI datatype for this element type");
}

/// MPI has no bf16 or fp16: their reductions are user operations that add (or take the
/// max) in float and round once per combination, as the threaded communicator does.
template <class T, ReduceOp Op>
void narrow_reduce(void* in, void* inout, int* length, MPI_Datatype*) {
    const auto* a = static_cast<const T*>(in);
    auto* b = static_cast<T*>(inout);
    for (int i = 0; i < *length; ++i) {
        const float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]);
        if constexpr (Op == ReduceOp::sum) b[i] = T(x + y);
        else b[i] = (x != x || y != y) ? T(x != x ? x : y) : T(x > y ? x : y);
    }
}

template <class T>
MPI_Op mpi_op(ReduceOp op) {
    if constexpr (narrow_float<T>) {
        // Created once, after MPI_Init (the first reduction comes after it); MPI frees them at finalize.
        static const MPI_Op sum = [] {
            MPI_Op o;
            MPI_Op_create(&narrow_reduce<T, ReduceOp::sum>, 1, &o);
            return o;
        }();
        static const MPI_Op max = [] {
            MPI_Op o;
            MPI_Op_create(&narrow_reduce<T, ReduceOp::max>, 1, &o);
            return o;
        }();
        return op == ReduceOp::sum ? sum : max;
    } else {
        return op == ReduceOp::sum ? MPI_SUM : MPI_MAX;
    }
}

}  // namespace detail

#define DS_MPI_CHECK(call) ::ds::comm::detail::mpi_check((call), #call)

/// MPI_Init_thread (with MPI_THREAD_MULTIPLE, so a communication thread can overlap
/// reductions with backward) and MPI_Finalize, once per process.
class MpiSession {
public:
    MpiSession(int* argc = nullptr, char*** argv = nullptr) {
        int initialized = 0;
        MPI_Initialized(&initialized);
        if (initialized) return;
        int provided = 0;
        DS_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
        owner_ = true;
        thread_level_ = provided;
    }
    ~MpiSession() {
        if (owner_) MPI_Finalize();
    }
    MpiSession(const MpiSession&) = delete;
    MpiSession& operator=(const MpiSession&) = delete;
    bool thread_multiple() const { return thread_level_ >= MPI_THREAD_MULTIPLE; }

private:
    bool owner_ = false;
    int thread_level_ = MPI_THREAD_MULTIPLE;
};

/// A collective in flight — a non-blocking MPI request, or a job on the communication
/// thread; `wait()` completes it (and so does destruction).
class MpiRequest {
public:
    MpiRequest() = default;
    /// `seconds`: the communicator's wait-time counter, which `wait()` adds to; `counts`:
    /// arguments MPI reads until the operation completes.
    MpiRequest(MPI_Request r, double* seconds, std::vector<int> counts = {})
        : request_(r), seconds_(seconds), counts_(std::move(counts)) {}
    MpiRequest(std::shared_ptr<Worker::Job> job, double* seconds) : job_(std::move(job)), seconds_(seconds) {}
    MpiRequest(MpiRequest&& other) noexcept
        : request_(std::exchange(other.request_, MPI_REQUEST_NULL)), job_(std::move(other.job_)),
          seconds_(other.seconds_), counts_(std::move(other.counts_)) {}
    MpiRequest& operator=(MpiRequest&& other) noexcept {
        if (this != &other) {
            finish();
            request_ = std::exchange(other.request_, MPI_REQUEST_NULL);
            job_ = std::move(other.job_);
            seconds_ = other.seconds_;
            counts_ = std::move(other.counts_);
        }
        return *this;
    }
    ~MpiRequest() { finish(); }
    void wait() {
        if (job_) {
            const CommTimer timer(*seconds_);
            const auto job = std::exchange(job_, nullptr);
            job->wait();
        }
        if (request_ == MPI_REQUEST_NULL) return;
        const CommTimer timer(*seconds_);
        DS_MPI_CHECK(MPI_Wait(&request_, MPI_STATUS_IGNORE));
    }

private:
    void finish() noexcept {
        if (job_) {
            try {
                job_->wait();
            } catch (...) {  // a destructor cannot report it; wait() would have
            }
            job_.reset();
        }
        if (request_ != MPI_REQUEST_NULL) MPI_Wait(&request_, MPI_STATUS_IGNORE);
    }
    MPI_Request request_ = MPI_REQUEST_NULL;
    std::shared_ptr<Worker::Job> job_;
    double* seconds_ = nullptr;
    std::vector<int> counts_;  // MPI_Ireduce_scatter reads them until completion
};

/// How an `Mpi` communicator's `_async` collectives make progress while the caller computes.
enum class Progress {
    library,  ///< MPI's non-blocking collectives (MPI_I*): OpenMPI advances them only inside MPI calls
    thread,   ///< a communication thread runs them as blocking collectives on a duplicate communicator
};

/// A communicator over an MPI communicator (MPI_COMM_WORLD by default). Needs a live
/// `MpiSession`. Owns communicators it creates with `split` and frees them.
///
/// With `Progress::thread` the `_async` collectives run on a communication thread, over a
/// duplicate of the communicator so that they never interleave with the caller's blocking
/// ones; each rank's thread runs them in submission order. That needs MPI_THREAD_MULTIPLE
/// and a core to spare: on a machine whose cores all compute, the thread only competes.
class Mpi {
public:
    explicit Mpi(Progress progress = Progress::library) : Mpi(MPI_COMM_WORLD, false, progress) {}
    Mpi(Mpi&& other) noexcept
        : comm_(std::exchange(other.comm_, MPI_COMM_NULL)), owned_(std::exchange(other.owned_, false)),
          rank_(other.rank_), size_(other.size_), counters_(other.counters_),
          worker_comm_(std::exchange(other.worker_comm_, MPI_COMM_NULL)), worker_(std::move(other.worker_)) {}
    Mpi& operator=(Mpi&& other) noexcept {
        if (this != &other) {
            release();
            comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
            owned_ = std::exchange(other.owned_, false);
            rank_ = other.rank_;
            size_ = other.size_;
            counters_ = other.counters_;
            worker_comm_ = std::exchange(other.worker_comm_, MPI_COMM_NULL);
            worker_ = std::move(other.worker_);
        }
        return *this;
    }
    ~Mpi() { release(); }

    int rank() const { return rank_; }
    int size() const { return size_; }
    const CommCounters& counters() const { return counters_; }
    void reset_counters() { counters_ = {}; }
    MPI_Comm native() const { return comm_; }
    Progress progress() const { return worker_ ? Progress::thread : Progress::library; }

    template <class T>
    void all_reduce(T* buf, std::size_t n, ReduceOp op) {
        counters_.add(Op::all_reduce, 2 * n);
        const CommTimer timer(counters_.seconds);
        DS_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, count(n), detail::mpi_type<T>(), detail::mpi_op<T>(op), comm_));
    }
    template <class T>
    void reduce_scatter(const T* in, T* out, std::size_t n, ReduceOp op) {
        counters_.add(Op::reduce_scatter, n * static_cast<std::size_t>(size_));
        const CommTimer timer(counters_.seconds);
        DS_MPI_CHECK(MPI_Reduce_scatter_block(in, out, count(n), detail::mpi_type<T>(), detail::mpi_op<T>(op), comm_));
    }
    template <class T>
    void reduce_scatter_v(const T* in, T* out, std::span<const std::size_t> counts, ReduceOp op) {
        std::vector<int> ints(counts.size());
        std::size_t total = 0;
        for (std::size_t k = 0; k < counts.size(); ++k) ints[k] = count(counts[k]), total += counts[k];
        counters_.add(Op::reduce_scatter, total);
        const CommTimer timer(counters_.seconds);
        DS_MPI_CHECK(MPI_Reduce_scatter(in, out, ints.data(), detail::mpi_type<T>(), detail::mpi_op<T>(op), comm_));
    }
    template <class T>
    void all_gather(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_gather, n * static_cast<std::size_t>(size_));
        const CommTimer timer(counters_.seconds);
        const void* source = in == out + static_cast<std::size_t>(rank_) * n ? MPI_IN_PLACE : in;
        DS_MPI_CHECK(MPI_Allgather(source, count(n), detail::mpi_type<T>(), out, count(n), detail::mpi_type<T>(), comm_));
    }
    template <class T>
    void broadcast(T* buf, std::size_t n, int root) {
        counters_.add(Op::broadcast, n);
        const CommTimer timer(counters_.seconds);
        DS_MPI_CHECK(MPI_Bcast(buf, count(n), detail::mpi_type<T>(), root, comm_));
    }
    template <class T>
    void all_to_all(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_to_all, n * static_cast<std::size_t>(size_));
        const CommTimer timer(counters_.seconds);
        DS_MPI_CHECK(MPI_Alltoall(in, count(n), detail::mpi_type<T>(), out, count(n), detail::mpi_type<T>(), comm_));
    }
    void barrier() {
        const CommTimer timer(counters_.seconds);
        DS_MPI_CHECK(MPI_Barrier(comm_));
    }

    /// MPI_Comm_split: the ranks with the same color, ordered by key.
    Mpi split(int color, int key) {
        MPI_Comm sub = MPI_COMM_NULL;
        DS_MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
        return Mpi(sub, true, progress());
    }

    template <class T>
    MpiRequest all_reduce_async(T* buf, std::size_t n, ReduceOp op) {
        counters_.add(Op::all_reduce, 2 * n);
        if (worker_)
            return on_worker([=](MPI_Comm c) {
                DS_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, count(n), detail::mpi_type<T>(), detail::mpi_op<T>(op), c));
            });
        MPI_Request r;
        DS_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, count(n), detail::mpi_type<T>(), detail::mpi_op<T>(op), comm_, &r));
        return MpiRequest(r, &counters_.seconds);
    }
    template <class T>
    MpiRequest reduce_scatter_async(const T* in, T* out, std::size_t n, ReduceOp op) {
        counters_.add(Op::reduce_scatter, n * static_cast<std::size_t>(size_));
        if (worker_)
            return on_worker([=](MPI_Comm c) {
                DS_MPI_CHECK(
                    MPI_Reduce_scatter_block(in, out, count(n), detail::mpi_type<T>(), detail::mpi_op<T>(op), c));
            });
        MPI_Request r;
        DS_MPI_CHECK(
            MPI_Ireduce_scatter_block(in, out, count(n), detail::mpi_type<T>(), detail::mpi_op<T>(op), comm_, &r));
        return MpiRequest(r, &counters_.seconds);
    }
    template <class T>
    MpiRequest reduce_scatter_v_async(const T* in, T* out, std::span<const std::size_t> counts, ReduceOp op) {
        std::vector<int> ints(counts.size());
        std::size_t total = 0;
        for (std::size_t k = 0; k < counts.size(); ++k) ints[k] = count(counts[k]), total += counts[k];
        counters_.add(Op::reduce_scatter, total);
        if (worker_)
            return on_worker([=, ints = std::move(ints)](MPI_Comm c) {
                DS_MPI_CHECK(MPI_Reduce_scatter(in, out, ints.data(), detail::mpi_type<T>(), detail::mpi_op<T>(op), c));
            });
        MPI_Request r;
        DS_MPI_CHECK(MPI_Ireduce_scatter(in, out, ints.data(), detail::mpi_type<T>(), detail::mpi_op<T>(op), comm_, &r));
        return MpiRequest(r, &counters_.seconds, std::move(ints));
    }
    template <class T>
    MpiRequest all_gather_async(const T* in, T* out, std::size_t n) {
        counters_.add(Op::all_gather, n * static_cast<std::size_t>(size_));
        const void* source = in == out + static_cast<std::size_t>(rank_) * n ? MPI_IN_PLACE : in;
        if (worker_)
            return on_worker([=](MPI_Comm c) {
                DS_MPI_CHECK(
                    MPI_Allgather(source, count(n), detail::mpi_type<T>(), out, count(n), detail::mpi_type<T>(), c));
            });
        MPI_Request r;
        DS_MPI_CHECK(
            MPI_Iallgather(source, count(n), detail::mpi_type<T>(), out, count(n), detail::mpi_type<T>(), comm_, &r));
        return MpiRequest(r, &counters_.seconds);
    }

private:
    Mpi(MPI_Comm comm, bool owned, Progress progress) : comm_(comm), owned_(owned) {
        DS_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
        DS_MPI_CHECK(MPI_Comm_size(comm_, &size_));
        if (progress == Progress::thread) {
            int level = 0;
            DS_MPI_CHECK(MPI_Query_thread(&level));
            if (level < MPI_THREAD_MULTIPLE)
                throw MpiError("ds::comm::Mpi: Progress::thread needs MPI_THREAD_MULTIPLE (MpiSession asks for it); "
                               "this MPI provides level " + std::to_string(level));
            DS_MPI_CHECK(MPI_Comm_dup(comm_, &worker_comm_));
            worker_ = std::make_unique<Worker>();
        }
    }
    /// Runs `collective(worker_comm_)` on the communication thread.
    template <class F>
    MpiRequest on_worker(F collective) {
        return MpiRequest(worker_->submit([collective, comm = worker_comm_] { collective(comm); }), &counters_.seconds);
    }
    static int count(std::size_t n) {
        if (n > static_cast<std::size_t>(INT32_MAX)) throw MpiError("ds::comm::Mpi: a message over 2^31 elements");
        return static_cast<int>(n);
    }
    void release() noexcept {
        worker_.reset();  // joins after the jobs already submitted
        if (worker_comm_ != MPI_COMM_NULL) MPI_Comm_free(&worker_comm_);
        if (owned_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
        owned_ = false;
    }

    MPI_Comm comm_ = MPI_COMM_NULL;
    bool owned_ = false;
    int rank_ = 0, size_ = 1;
    CommCounters counters_;
    MPI_Comm worker_comm_ = MPI_COMM_NULL;
    std::unique_ptr<Worker> worker_;
};

static_assert(communicator<Mpi>);

}  // namespace ds::comm
