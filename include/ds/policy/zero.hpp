#pragma once
/// @file
/// `ds::Zero<S>`: which model states ZeRO stage S partitions across data-parallel ranks.

#include <concepts>

namespace ds {

/// A ZeRO stage as a policy. The engine reads the three traits with `if constexpr`.
///
/// | stage | optimizer states + fp32 master | gradients   | parameters  |
/// |-------|--------------------------------|-------------|-------------|
/// | 0     | replicated                     | all-reduced | replicated  |
/// | 1     | partitioned                    | replicated  | replicated  |
/// | 2     | partitioned                    | partitioned | replicated  |
/// | 3     | partitioned                    | partitioned | partitioned |
template <int Stage>
struct Zero {
    static_assert(Stage >= 0 && Stage <= 3, "ds::Zero<S>: the ZeRO stage must be 0, 1, 2 or 3");
    static constexpr int stage = Stage;
    static constexpr bool partitions_optimizer_states = Stage >= 1;
    static constexpr bool partitions_gradients = Stage >= 2;
    static constexpr bool partitions_parameters = Stage >= 3;
};

/// A ZeRO policy: a stage number and the three partitioning traits, each implying the previous.
template <class Z>
concept zero_policy = requires {
    { Z::stage } -> std::convertible_to<int>;
    { Z::partitions_optimizer_states } -> std::convertible_to<bool>;
    { Z::partitions_gradients } -> std::convertible_to<bool>;
    { Z::partitions_parameters } -> std::convertible_to<bool>;
} && (!Z::partitions_gradients || Z::partitions_optimizer_states) &&
                      (!Z::partitions_parameters || Z::partitions_gradients);

static_assert(zero_policy<Zero<0>> && zero_policy<Zero<1>> && zero_policy<Zero<2>> && zero_policy<Zero<3>>);

}  // namespace ds
