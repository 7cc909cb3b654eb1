#pragma once
/// @file
/// `ds::comm::Worker`: one thread that runs submitted jobs in order — the communication
/// thread behind `overlap_comm` for communicators whose library does not progress
/// non-blocking operations by itself.

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

namespace ds::comm {

/// Runs jobs on its own thread, first submitted first run. Each rank submits the same
/// collectives in the same order, so a worker per rank keeps the ranks' orders equal.
class Worker {
public:
    /// A submitted job: `wait()` blocks until it ran and rethrows what it threw.
    class Job {
    public:
        void wait() {
            std::unique_lock lock(mutex_);
            finished_.wait(lock, [&] { return done_; });
            if (error_) std::rethrow_exception(error_);
        }

    private:
        friend class Worker;
        std::function<void()> run_;
        std::mutex mutex_;
        std::condition_variable finished_;
        bool done_ = false;
        std::exception_ptr error_;
    };

    Worker() : thread_([this] { loop(); }) {}
    ~Worker() {
        {
            const std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        ready_.notify_one();
        thread_.join();
    }
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    std::shared_ptr<Job> submit(std::function<void()> run) {
        auto job = std::make_shared<Job>();
        job->run_ = std::move(run);
        {
            const std::lock_guard lock(mutex_);
            queue_.push_back(job);
        }
        ready_.notify_one();
        return job;
    }

private:
    void loop() {
        for (;;) {
            std::shared_ptr<Job> job;
            {
                std::unique_lock lock(mutex_);
                ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
                if (queue_.empty()) return;  // stopping, and everything submitted has run
                job = std::move(queue_.front());
                queue_.pop_front();
            }
            std::exception_ptr error;
            try {
                job->run_();
            } catch (...) {
                error = std::current_exception();
            }
            {
                const std::lock_guard lock(job->mutex_);
                job->error_ = error;
                job->done_ = true;
            }
            job->finished_.notify_all();
        }
    }

    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<std::shared_ptr<Job>> queue_;
    bool stopping_ = false;
    std::thread thread_;  // last: starts after the members it uses exist
};

}  // namespace ds::comm
