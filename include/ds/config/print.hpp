#pragma once
/// @file
/// Printing and diffing configs, through the same reflection as the JSON writer.

#include <ostream>
#include <string>
#include <vector>

#include <ds/config/config.hpp>
#include <ds/config/json.hpp>

namespace ds {

/// Prints `cfg` as the JSON `save_config` would write.
inline std::ostream& operator<<(std::ostream& out, const Config& cfg) { return out << to_json(cfg).dump(2); }

/// The keys whose values differ, one line each: `zero_optimization.stage: 0 -> 2`.
/// Unset values print as null.
inline std::vector<std::string> diff(const Config& from, const Config& to) {
    const auto a = to_json_complete(from);
    const auto b = to_json_complete(to);
    std::vector<std::string> lines;
    for (const auto& op : nlohmann::ordered_json::diff(a, b)) {
        const auto pointer = nlohmann::ordered_json::json_pointer(op["path"].get<std::string>());
        std::string key = pointer.to_string().substr(1);
        for (auto& c : key)
            if (c == '/') c = '.';
        const auto old_value = a.contains(pointer) ? a.at(pointer).dump() : "(absent)";
        const auto new_value = b.contains(pointer) ? b.at(pointer).dump() : "(absent)";
        lines.push_back(key + ": " + old_value + " -> " + new_value);
    }
    return lines;
}

}  // namespace ds
