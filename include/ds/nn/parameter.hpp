#pragma once
/// @file
/// The entries of a model's parameter table: one tensor (`nn::Parameter`), and the span of
/// the flat buffer a layer owns (`nn::LayerRange`, the unit ZeRO stage 3 gathers).

#include <cstddef>
#include <string_view>

#include <ds/nn/shape.hpp>

namespace ds::nn {

/// One parameter tensor of a model: its full PyTorch name (`conv1.weight`; any length — the
/// text lives in the model's constexpr name table), its offset in the flat buffer, and shape.
struct Parameter {
    std::string_view full_name;
    std::size_t offset = 0;
    TensorShape shape{};
    constexpr std::string_view name() const { return full_name; }
    constexpr std::size_t numel() const { return shape.numel(); }
};

/// Where a layer's parameters live in the flat buffer: [offset, offset + count).
struct LayerRange {
    std::size_t offset, count;
};

}  // namespace ds::nn
