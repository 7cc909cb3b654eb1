#pragma once
/// @file
/// Device memory: `ds::cuda::CachingAllocator` over `cudaMalloc` (no managed memory),
/// `ds::cuda::DeviceBuffer<T>`, the owner of one allocation, and `ds::cuda::PinnedBuffer<T>`,
/// page-locked host memory for the copies between the two.

#include <cstddef>
#include <map>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>

namespace ds::cuda {

/// Keeps freed device blocks for reuse, as PyTorch's caching allocator does, so a training
/// step allocates nothing from the driver once its buffers exist (`cudaMalloc` and
/// `cudaFree` synchronise the device). Sizes round up to 512 bytes; a request takes the
/// smallest cached block that fits without wasting more than half of it, else a new one.
///
/// A block freed here may still be read by kernels already enqueued. Reuse is safe in
/// stream order: buffers are freed and reallocated for the compute stream, and a buffer a
/// second stream uses is freed only after an event shows that stream is done with it
/// (the allocator records no streams, unlike PyTorch's `record_stream`).
/// One allocator per device and host thread (the device current when `current()` is
/// called: a thread that allocates must have called `cudaSetDevice`), so ranks run as
/// threads, each on its own compute stream, never reuse each other's freed blocks while
/// their kernels may still read them. A block goes back to the allocator it came from,
/// whichever thread frees it, so free a buffer another thread's stream used only after that
/// stream is synchronised. Thread-safe; a thread's cache outlives the thread, and running
/// out of memory first frees every thread's cache on the device.
class CachingAllocator {
public:
    static constexpr std::size_t granularity = 512;

    /// The allocator of the current device for this thread.
    static CachingAllocator& current();
    /// Frees the cached blocks of every thread's allocator on `device`.
    static void release_device(int device);

    CachingAllocator() = default;
    CachingAllocator(const CachingAllocator&) = delete;
    CachingAllocator& operator=(const CachingAllocator&) = delete;
    ~CachingAllocator() { release_cached(); }

    /// @throws CudaError when the device is out of memory even after the cache is released
    void* allocate(std::size_t bytes) {
        if (bytes == 0) return nullptr;
        const std::size_t size = (bytes + granularity - 1) / granularity * granularity;
        std::unique_lock lock(mutex_);
        if (auto it = cached_.lower_bound(size); it != cached_.end() && it->first <= 2 * size) {
            void* p = it->second;
            live_[p] = {it->first, bytes};
            cached_bytes_ -= it->first;
            allocated_bytes_ += it->first;
            requested_bytes_ += bytes;
            cached_.erase(it);
            return p;
        }
        void* p = nullptr;
        if (cudaMalloc(&p, size) != cudaSuccess) {
            (void)cudaGetLastError();  // clear the sticky out-of-memory error, free the caches, try once more
            lock.unlock();             // release_device takes every allocator's lock, this one's too
            release_device(device_);
            lock.lock();
            const cudaError_t status = cudaMalloc(&p, size);
            if (status != cudaSuccess) {
                (void)cudaGetLastError();  // so the next launch check does not report this failure
                throw CudaError("CUDA", "cudaMalloc",
                                std::string(cudaGetErrorString(status)) + " allocating " + std::to_string(size) +
                                    " bytes with " + std::to_string(allocated_bytes_) + " in use",
                                __FILE__, __LINE__);
            }
        }
        live_[p] = {size, bytes};
        allocated_bytes_ += size;
        requested_bytes_ += bytes;
        return p;
    }

    /// Returns `p` (from `allocate`) to the cache.
    void deallocate(void* p) noexcept {
        if (!p) return;
        const std::lock_guard lock(mutex_);
        const auto it = live_.find(p);
        if (it == live_.end()) return;
        const Block block = it->second;
        cached_.emplace(block.size, p);
        cached_bytes_ += block.size;
        allocated_bytes_ -= block.size;
        requested_bytes_ -= block.requested;
        live_.erase(it);
    }

    /// Frees every cached block back to the driver (`torch.cuda.empty_cache()`).
    void release_cached() {
        const std::lock_guard lock(mutex_);
        release_cached_locked();
    }

    std::size_t allocated_bytes() const {
        const std::lock_guard lock(mutex_);
        return allocated_bytes_;
    }
    std::size_t cached_bytes() const {
        const std::lock_guard lock(mutex_);
        return cached_bytes_;
    }
    /// Bytes asked for by the blocks handed out and not yet returned (`allocated_bytes` is
    /// the blocks' sizes: rounded up, or a cached block up to twice the request).
    std::size_t requested_bytes() const {
        const std::lock_guard lock(mutex_);
        return requested_bytes_;
    }

private:
    void release_cached_locked() {
        for (auto& [size, p] : cached_) cudaFree(p);
        cached_.clear();
        cached_bytes_ = 0;
    }

    struct Registry;
    static Registry& registry();

    int device_ = 0;
    mutable std::mutex mutex_;
    std::multimap<std::size_t, void*> cached_;
    struct Block {
        std::size_t size, requested;
    };
    std::unordered_map<void*, Block> live_;
    std::size_t allocated_bytes_ = 0, cached_bytes_ = 0, requested_bytes_ = 0;
};

/// Every allocator, by device and host thread.
struct CachingAllocator::Registry {
    std::mutex guard;
    std::map<std::pair<int, std::thread::id>, CachingAllocator> allocators;
};

inline CachingAllocator::Registry& CachingAllocator::registry() {
    static Registry r;
    return r;
}

inline CachingAllocator& CachingAllocator::current() {
    int device = 0;
    DS_CUDA_CHECK(cudaGetDevice(&device));
    Registry& r = registry();
    const std::lock_guard lock(r.guard);
    CachingAllocator& allocator = r.allocators[{device, std::this_thread::get_id()}];
    allocator.device_ = device;
    return allocator;
}

inline void CachingAllocator::release_device(int device) {
    Registry& r = registry();
    const std::lock_guard lock(r.guard);
    for (auto& [key, allocator] : r.allocators)
        if (key.first == device) allocator.release_cached();
}

/// `n` values of T in device memory from the current device's caching allocator, given
/// back to that same allocator whichever device is current when it is freed. Copies run on
/// the stream given (the legacy default stream if none, which a non-blocking `Stream` does
/// not wait for: pass the stream that uses the buffer).
template <class T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t n)
        : allocator_(&CachingAllocator::current()), data_(static_cast<T*>(allocator_->allocate(n * sizeof(T)))),
          size_(n) {}
    ~DeviceBuffer() {
        if (data_) allocator_->deallocate(data_);
    }
    DeviceBuffer(DeviceBuffer&& other) noexcept
        : allocator_(other.allocator_), data_(std::exchange(other.data_, nullptr)),
          size_(std::exchange(other.size_, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        std::swap(allocator_, other.allocator_);
        std::swap(data_, other.data_);
        std::swap(size_, other.size_);
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    T* data() { return data_; }
    const T* data() const { return data_; }
    std::size_t size() const { return size_; }
    std::size_t bytes() const { return size_ * sizeof(T); }

    /// Host → device, ordered on `stream` (the host buffer must outlive the copy).
    void copy_from(std::span<const T> host, cudaStream_t stream = nullptr) {
        check_size(host.size());
        DS_CUDA_CHECK(cudaMemcpyAsync(data_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice, stream));
    }
    /// Device → host; waits for it.
    void copy_to(std::span<T> host, cudaStream_t stream = nullptr) const {
        check_size(host.size());
        DS_CUDA_CHECK(cudaMemcpyAsync(host.data(), data_, host.size_bytes(), cudaMemcpyDeviceToHost, stream));
        DS_CUDA_CHECK(cudaStreamSynchronize(stream));
    }

private:
    void check_size(std::size_t n) const {
        if (n != size_)
            throw std::invalid_argument("DeviceBuffer: " + std::to_string(n) + " host values for a buffer of " +
                                        std::to_string(size_));
    }

    CachingAllocator* allocator_ = nullptr;
    T* data_ = nullptr;
    std::size_t size_ = 0;
};

/// `n` values of T in page-locked host memory (`cudaMallocHost`): copies between it and the
/// device run at full bus speed and are truly asynchronous, so the host must not write it
/// while a copy from it may be in flight, nor read it before a copy into it is waited for.
template <class T>
class PinnedBuffer {
public:
    PinnedBuffer() = default;
    explicit PinnedBuffer(std::size_t n) : size_(n) {
        if (n) DS_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&data_), n * sizeof(T)));
    }
    ~PinnedBuffer() {
        if (data_) cudaFreeHost(data_);
    }
    PinnedBuffer(PinnedBuffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(size_, other.size_);
        return *this;
    }
    PinnedBuffer(const PinnedBuffer&) = delete;
    PinnedBuffer& operator=(const PinnedBuffer&) = delete;

    T* data() { return data_; }
    const T* data() const { return data_; }
    std::size_t size() const { return size_; }
    std::size_t bytes() const { return size_ * sizeof(T); }

private:
    T* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace ds::cuda
