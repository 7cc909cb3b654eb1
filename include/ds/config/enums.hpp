#pragma once
/// @file
/// The config's named choices and their JSON spellings.

#include <array>
#include <optional>
#include <string_view>
#include <utility>

namespace ds {

/// `optimizer.type`. `none` is DeepSpeed's absent optimizer block.
enum class OptimizerType { none, Adam, AdamW, Lamb, Lion, SGD };
/// `scheduler.type`. `none` is DeepSpeed's absent scheduler block.
enum class SchedulerType { none, WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest };
/// `scheduler.params.warmup_type`.
enum class WarmupType { log, linear };
/// `zero_optimization.offload_optimizer.device` / `offload_param.device`.
enum class OffloadDevice { none, cpu, nvme };

/// The JSON spelling of each enumerator, in declaration order.
template <class E>
struct EnumNames;

template <>
struct EnumNames<OptimizerType> {
    static constexpr std::array<std::string_view, 6> names{"none", "Adam", "AdamW", "Lamb", "Lion", "SGD"};
    /// DeepSpeed lower-cases its own optimizer names but matches torch's ("SGD") exactly.
    static constexpr bool case_insensitive(OptimizerType t) { return t != OptimizerType::SGD; }
};
template <>
struct EnumNames<SchedulerType> {
    static constexpr std::array<std::string_view, 6> names{"none",           "WarmupLR", "WarmupDecayLR",
                                                           "WarmupCosineLR", "OneCycle", "LRRangeTest"};
    static constexpr bool case_insensitive(SchedulerType) { return false; }
};
template <>
struct EnumNames<WarmupType> {
    static constexpr std::array<std::string_view, 2> names{"log", "linear"};
    static constexpr bool case_insensitive(WarmupType) { return false; }
};
template <>
struct EnumNames<OffloadDevice> {
    static constexpr std::array<std::string_view, 3> names{"none", "cpu", "nvme"};
    static constexpr bool case_insensitive(OffloadDevice) { return false; }
};

/// The JSON spelling of `e`.
template <class E>
constexpr std::string_view name_of(E e) {
    return EnumNames<E>::names[static_cast<std::size_t>(e)];
}

namespace detail {
constexpr char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
constexpr bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
    return true;
}
}  // namespace detail

/// The enumerator spelled `text`, with DeepSpeed's case rules, or nullopt.
template <class E>
constexpr std::optional<E> enum_from_name(std::string_view text) {
    for (std::size_t i = 0; i < EnumNames<E>::names.size(); ++i) {
        const auto e = static_cast<E>(i);
        const auto name = EnumNames<E>::names[i];
        if (text == name || (EnumNames<E>::case_insensitive(e) && detail::iequals(text, name))) return e;
    }
    return std::nullopt;
}

}  // namespace ds
