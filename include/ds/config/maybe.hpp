#pragma once
/// @file
/// `ds::Maybe<T>`: a config value that may be absent (DeepSpeed's `None`).

namespace ds {

/// A value that may be unset, like a JSON key that is absent or `null`.
///
/// Unlike `std::optional` it is a structural type, so a `ds::Config` holding it can
/// be a template argument; converting from `T` sets it, which keeps designated
/// initializers short: `ds::Config{.train_batch_size = 16}`.
template <class T>
struct Maybe {
    T value{};         ///< meaningful only when `has_value`
    bool has_value{};  ///< whether the key was given

    constexpr Maybe() = default;
    constexpr Maybe(T v) : value(v), has_value(true) {}  // NOLINT: implicit by design

    /// The value, or `fallback` when unset.
    constexpr T value_or(T fallback) const { return has_value ? value : fallback; }
    constexpr explicit operator bool() const { return has_value; }
    constexpr bool operator==(const Maybe&) const = default;
};

}  // namespace ds
