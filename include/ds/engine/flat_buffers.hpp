#pragma once
/// @file
/// `ds::FlatBuffers`: one arena holding a model's flat fp32 buffers at staggered offsets.

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <span>
#include <vector>

namespace ds {

/// `count` buffers of `elements` floats each in one 64-byte-aligned allocation, zeroed.
///
/// The buffers are staggered by 16 KiB beyond their size: separate allocations of 2^24
/// floats land at identical page offsets and an element-wise pass over four of them runs
/// 2.5-4x slower on this project's CPUs (MACHINE.md); one arena with offsets avoids it.
class FlatBuffers {
public:
    static constexpr std::size_t alignment = 64;
    static constexpr std::size_t stagger_bytes = 16 * 1024;

    FlatBuffers(std::size_t count, std::size_t elements) : elements_(elements) {
        const std::size_t bytes = elements * sizeof(float);
        stride_ = (bytes + stagger_bytes + alignment - 1) / alignment * alignment;
        const std::size_t total = stride_ * (count ? count : 1);
        data_.reset(static_cast<std::byte*>(::operator new(total, std::align_val_t{alignment})));
        std::fill_n(data_.get(), total, std::byte{0});
        for (std::size_t i = 0; i < count; ++i) buffers_.push_back(reinterpret_cast<float*>(data_.get() + i * stride_));
    }

    std::size_t size() const { return buffers_.size(); }
    std::size_t elements() const { return elements_; }
    float* operator[](std::size_t i) { return buffers_[i]; }
    const float* operator[](std::size_t i) const { return buffers_[i]; }
    std::span<float> span(std::size_t i) { return {buffers_[i], elements_}; }
    std::span<const float> span(std::size_t i) const { return {buffers_[i], elements_}; }
    /// The buffer pointers, in order: what element-wise functors take as `states`.
    float* const* pointers() { return buffers_.data(); }
    /// Bytes the buffers hold (without the stagger).
    std::size_t bytes() const { return buffers_.size() * elements_ * sizeof(float); }

private:
    struct AlignedDelete {
        void operator()(std::byte* p) const { ::operator delete(p, std::align_val_t{alignment}); }
    };
    std::unique_ptr<std::byte, AlignedDelete> data_;
    std::vector<float*> buffers_;
    std::size_t elements_, stride_ = 0;
};

}  // namespace ds
