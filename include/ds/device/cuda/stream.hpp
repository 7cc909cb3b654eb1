#pragma once
/// @file
/// `ds::cuda::Stream` and `ds::cuda::Event`: owned CUDA streams and events. Each rank runs
/// its kernels on one compute stream and its collectives on one communication stream;
/// events order the two (a bucket's reduction waits for the backward that filled it).

#include <utility>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>

namespace ds::cuda {

/// A non-blocking CUDA stream (it does not synchronise with the legacy default stream).
class Stream {
public:
    Stream() { DS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
    ~Stream() {
        if (stream_) cudaStreamDestroy(stream_);
    }
    Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
    Stream& operator=(Stream&& other) noexcept {
        std::swap(stream_, other.stream_);
        return *this;
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;

    cudaStream_t get() const { return stream_; }
    operator cudaStream_t() const { return stream_; }
    /// Blocks the host until everything enqueued so far has run.
    void synchronize() const { DS_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

private:
    cudaStream_t stream_ = nullptr;
};

/// A point in a stream that other streams (or the host) can wait for. Timing is off unless
/// asked for: events without it are cheaper to record.
class Event {
public:
    explicit Event(bool timing = false) {
        DS_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
    }
    ~Event() {
        if (event_) cudaEventDestroy(event_);
    }
    Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
    Event& operator=(Event&& other) noexcept {
        std::swap(event_, other.event_);
        return *this;
    }
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;

    cudaEvent_t get() const { return event_; }
    void record(cudaStream_t stream) { DS_CUDA_CHECK(cudaEventRecord(event_, stream)); }
    /// Work enqueued on `stream` from now on waits until this event has happened.
    void make_wait(cudaStream_t stream) const { DS_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0)); }
    void synchronize() const { DS_CUDA_CHECK(cudaEventSynchronize(event_)); }
    /// Milliseconds from `start` to this event (both recorded with timing on).
    float elapsed_ms(const Event& start) const {
        float ms = 0.0f;
        DS_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
        return ms;
    }

private:
    cudaEvent_t event_ = nullptr;
};

}  // namespace ds::cuda
