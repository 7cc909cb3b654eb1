#pragma once
/// @file
/// `DataLoader`: normalised batches assembled on a background thread.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>
#include <vector>

#include <ds/data/dataset.hpp>
#include <ds/data/distributed_sampler.hpp>

namespace ds::data {

/// One batch: `size` samples of `sample_size` floats, and their labels.
struct Batch {
    std::vector<float> inputs;
    std::vector<std::int32_t> labels;
    std::size_t size = 0;
};

/// Iterates a dataset in batches of `batch_size` per epoch, in the sampler's order. A
/// background thread assembles up to `prefetch` batches ahead, so the training step does
/// not wait on copying and normalising. `drop_last` drops a final partial batch
/// (DeepSpeed's `dataloader_drop_last`).
template <dataset D>
class DataLoader {
public:
    DataLoader(const D& data, DistributedSampler sampler, std::size_t batch_size, bool drop_last = false,
               std::size_t prefetch = 2)
        : data_(&data), sampler_(sampler), batch_size_(batch_size), drop_last_(drop_last), prefetch_(prefetch) {}
    DataLoader(const DataLoader&) = delete;
    DataLoader& operator=(const DataLoader&) = delete;
    ~DataLoader() { stop(); }

    /// Batches per epoch: ⌊n / b⌋ with drop_last, else ⌈n / b⌉ (n = samples per rank).
    std::size_t size() const {
        const std::size_t n = sampler_.samples_per_rank();
        return drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
    }
    std::size_t batch_size() const { return batch_size_; }

    /// Starts producing the batches of `epoch` (stopping any epoch in progress).
    void start_epoch(std::uint64_t epoch) {
        stop();
        queue_.clear();
        finished_ = false;
        producer_ = std::jthread([this, epoch](std::stop_token stop) { produce(epoch, stop); });
    }

    /// The next batch of the epoch, or nullopt after the last one.
    std::optional<Batch> next() {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return !queue_.empty() || finished_; });
        if (queue_.empty()) return std::nullopt;
        Batch b = std::move(queue_.front());
        queue_.pop_front();
        space_.notify_one();
        return b;
    }

private:
    void produce(std::uint64_t epoch, std::stop_token stop) {
        const auto order = sampler_.indices(epoch);
        const std::size_t sample = data_->sample_size();
        for (std::size_t first = 0; first < order.size() && !stop.stop_requested(); first += batch_size_) {
            const std::size_t n = std::min(batch_size_, order.size() - first);
            if (n < batch_size_ && drop_last_) break;
            Batch b{std::vector<float>(n * sample), std::vector<std::int32_t>(n), n};
            for (std::size_t i = 0; i < n; ++i) b.labels[i] = data_->get(order[first + i], b.inputs.data() + i * sample);
            std::unique_lock lock(mutex_);
            space_.wait(lock, stop, [&] { return queue_.size() < prefetch_; });
            if (stop.stop_requested()) break;
            queue_.push_back(std::move(b));
            ready_.notify_one();
        }
        std::lock_guard lock(mutex_);
        finished_ = true;
        ready_.notify_all();
    }

    void stop() {
        if (producer_.joinable()) {
            producer_.request_stop();
            producer_.join();
        }
    }

    const D* data_;
    DistributedSampler sampler_;
    std::size_t batch_size_;
    bool drop_last_;
    std::size_t prefetch_;
    std::mutex mutex_;
    std::condition_variable_any ready_, space_;
    std::deque<Batch> queue_;
    bool finished_ = true;
    std::jthread producer_;
};

}  // namespace ds::data
