#pragma once
/// @file
/// `ds::bit_cast`: std::bit_cast that nvcc also accepts in device code.

#include <ds/util/host_device.hpp>

namespace ds {

/// Reinterprets the bits of `from` as a `To` of the same size; constexpr on host and device.
template <class To, class From>
DS_HOST_DEVICE constexpr To bit_cast(const From& from) noexcept {
    static_assert(sizeof(To) == sizeof(From), "ds::bit_cast needs types of the same size");
    return __builtin_bit_cast(To, from);
}

}  // namespace ds
