#pragma once
/// @file
/// Compile-time shapes of one sample's activations, names for layers, and what a layer may
/// report of itself.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

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

/// T token ids (`int32`, one sample): the input of a language model. Its values are ids,
/// never cast through a floating dtype; the layer that takes them (`nn::Embedding`) forms no
/// input gradient.
template <std::size_t T>
struct Tokens {
    using value_type = std::int32_t;
    static constexpr std::size_t positions = T;
    static constexpr std::size_t size = T;
};

/// T positions of C features each ([T, C], one sample): per-position layers
/// (`nn::Linear<C, Out>`) apply to every position.
template <std::size_t T, std::size_t C>
struct Sequence {
    static constexpr std::size_t positions = T, features = C;
    static constexpr std::size_t size = T * C;
};

/// The element type of a shape's values: `S::value_type` where it declares one (token
/// ids), else float — stored in the model's dtype.
template <class S>
struct shape_value {
    using type = float;
};
template <class S>
    requires requires { typename S::value_type; }
struct shape_value<S> {
    using type = typename S::value_type;
};
template <class S>
using shape_value_t = typename shape_value<S>::type;

/// A shape of integer ids (`Tokens`): no dtype conversion, no gradient.
template <class S>
inline constexpr bool holds_ids = std::is_integral_v<shape_value_t<S>>;

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
