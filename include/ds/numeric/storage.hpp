#pragma once
/// @file
/// The dtypes the engine stores values in: float, and the 2-byte `ds::bf16` and `ds::half`.

#include <concepts>

#include <ds/numeric/bf16.hpp>
#include <ds/numeric/half.hpp>

namespace ds {

/// The 2-byte floating-point storage types: arithmetic on them happens in float.
template <class T>
concept narrow_float = std::same_as<T, bf16> || std::same_as<T, half>;

/// A type the engine stores parameters, activations or gradients in.
template <class T>
concept storage_float = std::same_as<T, float> || narrow_float<T>;

}  // namespace ds
