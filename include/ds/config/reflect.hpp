#pragma once
/// @file
/// Generic walks over the reflected config structs: by member name, written once.

#include <string_view>
#include <type_traits>

#include <boost/hana/accessors.hpp>
#include <boost/hana/concept/struct.hpp>
#include <boost/hana/first.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/second.hpp>
#include <boost/hana/string.hpp>

namespace ds {

/// True for the structs reflected with `BOOST_HANA_ADAPT_STRUCT` (the config's objects).
template <class T>
concept reflected = boost::hana::Struct<std::remove_cvref_t<T>>::value;

/// Calls `f(name, member)` for each reflected member of `object`, in declaration order.
/// Usable in constant expressions; `member` is a reference into `object`.
template <reflected T, class F>
constexpr void for_each_field(T&& object, F&& f) {
    namespace hana = boost::hana;
    hana::for_each(hana::accessors<std::remove_cvref_t<T>>(), [&](auto accessor) {
        constexpr std::string_view name = hana::to<const char*>(std::remove_cvref_t<decltype(hana::first(accessor))>{});
        f(name, hana::second(accessor)(object));
    });
}

/// Calls `f(name, a_member, b_member)` for each member of two objects of one type.
template <reflected T, class F>
constexpr void for_each_field_pair(const T& a, const T& b, F&& f) {
    namespace hana = boost::hana;
    hana::for_each(hana::accessors<T>(), [&](auto accessor) {
        constexpr std::string_view name = hana::to<const char*>(std::remove_cvref_t<decltype(hana::first(accessor))>{});
        f(name, hana::second(accessor)(a), hana::second(accessor)(b));
    });
}

}  // namespace ds
