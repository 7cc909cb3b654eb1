#pragma once
/// @file
/// Compile-time shapes of one sample's activations, names for layers, and what a layer may
/// report of itself.

#include <algorithm>
#include <cstddef>
#include <string_view>

namespace ds::nn {

/// A C × H × W image (one sample; the batch dimension is a run-time value).
template <std::size_t C, std::size_t H, std::size_t W>
struct Image {
    static constexpr std::size_t channels = C, height = H, width = W;
    static constexpr std::size_t size = C * H * W;
};

/// A flat feature vector of N values.
template <std::size_t N>
struct Features {
    static constexpr std::size_t size = N;
};

/// A string usable as a template argument: `Named<"conv1", Conv2d<3, 6, 5>>`.
template <std::size_t N>
struct FixedString {
    char text[N]{};
    constexpr FixedString(const char (&s)[N]) { std::copy_n(s, N, text); }  // NOLINT: implicit by design
    constexpr std::string_view view() const { return {text, N - 1}; }
};

/// The shape of one parameter tensor, as PyTorch reports it (at most 4 dimensions).
struct TensorShape {
    std::size_t rank = 0;
    std::size_t dims[4]{};
    constexpr std::size_t numel() const {
        std::size_t n = 1;
        for (std::size_t i = 0; i < rank; ++i) n *= dims[i];
        return n;
    }
};

/// The bytes of work buffers a layer keeps for itself: its `buffer_bytes()`, else none.
template <class L>
std::size_t buffer_bytes_of(const L& layer) {
    if constexpr (requires { layer.buffer_bytes(); }) return layer.buffer_bytes();
    else return 0;
}

/// One parameter tensor of a layer: its name within the layer ("weight", "bias") and shape.
struct ParamSpec {
    std::string_view name;
    TensorShape shape;
};

}  // namespace ds::nn
