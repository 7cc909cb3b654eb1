#pragma once
/// @file
/// `ds::CheckResult`: the outcome of validating a config, usable in constant expressions.

#include <cstdint>
#include <string_view>

namespace ds {

/// Valid, or the text of the first broken rule.
///
/// It converts to `true` for a valid config, so `static_assert(ds::check(cfg, 1))`
/// works. The text lives in a fixed buffer rather than a pointer, which keeps the
/// type structural: `ds::require_valid<ds::check(cfg, 1)>()` shows it in the
/// compiler's diagnostic.
struct CheckResult {
    static constexpr std::size_t capacity = 240;
    char text[capacity]{};  ///< empty when valid; NUL-terminated

    constexpr explicit operator bool() const { return text[0] == '\0'; }
    /// The broken rule, or "" when valid.
    constexpr std::string_view what() const { return {text, length()}; }

    constexpr std::size_t length() const {
        std::size_t n = 0;
        while (n < capacity && text[n] != '\0') ++n;
        return n;
    }
    /// Appends text; truncates at capacity - 1 characters.
    constexpr CheckResult& operator<<(std::string_view s) {
        std::size_t n = length();
        for (char c : s) {
            if (n + 1 >= capacity) break;
            text[n++] = c;
        }
        return *this;
    }
    /// Appends an integer in decimal.
    constexpr CheckResult& operator<<(std::int64_t v) {
        char digits[24]{};
        int i = 0;
        const bool negative = v < 0;
        std::uint64_t u = negative ? 0 - static_cast<std::uint64_t>(v) : static_cast<std::uint64_t>(v);
        do {
            digits[i++] = static_cast<char>('0' + u % 10);
            u /= 10;
        } while (u != 0);
        if (negative) *this << "-";
        while (i > 0) {
            const char c[1] = {digits[--i]};
            *this << std::string_view(c, 1);
        }
        return *this;
    }
    constexpr CheckResult& operator<<(int v) { return *this << static_cast<std::int64_t>(v); }
    constexpr CheckResult& operator<<(const char* s) { return *this << std::string_view(s); }
};

/// Compiles only when `R` is valid; otherwise the diagnostic prints `R`, i.e. the rule's text.
template <CheckResult R>
constexpr bool require_valid() {
    static_assert(static_cast<bool>(R), "ds::Config breaks the rule quoted in 'CheckResult{\"...\"}' above");
    return true;
}

}  // namespace ds
