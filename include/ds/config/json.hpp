#pragma once
/// @file
/// Reading and writing `ds_config.json` (nlohmann-json), generically over the reflected config.
///
/// Reading follows DeepSpeed where it is strict and is stricter where DeepSpeed is
/// silent (SPEC decisions table): duplicate keys are an error; `"auto"` means the
/// default; keys DeepSpeed knows but dspp does not implement are warnings naming them;
/// any other unknown key is an error naming its path and the closest valid key; a
/// value of the wrong type is an error naming the key and the expected type. Then the
/// same `ds::check` as at compile time runs. Writing produces JSON that reads back equal.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <ds/config/check.hpp>
#include <ds/config/config.hpp>
#include <ds/config/enums.hpp>
#include <ds/config/reflect.hpp>

namespace ds {

/// A config that cannot be used: every problem found, one per line in `what()`.
class ConfigError : public std::runtime_error {
public:
    explicit ConfigError(std::vector<std::string> problems)
        : std::runtime_error(join(problems)), problems_(std::move(problems)) {}
    /// Each problem on its own, in the order found.
    const std::vector<std::string>& problems() const noexcept { return problems_; }

private:
    static std::string join(const std::vector<std::string>& lines) {
        std::string text;
        for (const auto& line : lines) text += (text.empty() ? "" : "\n") + line;
        return text;
    }
    std::vector<std::string> problems_;
};

/// A config read from JSON, with the warnings reading it produced.
struct LoadedConfig {
    Config config;
    std::vector<std::string> warnings;
};

/// Another spelling of a member's JSON key; a deprecated one is read with a warning.
struct KeyAlias {
    std::string_view key;
    std::string_view member;
    bool deprecated;
};

/// How a reflected struct's JSON object differs from its member list: alternative
/// spellings, and keys DeepSpeed knows that dspp reads past with a warning.
template <class T>
struct JsonKeys {
    static constexpr std::array<KeyAlias, 0> aliases{};
    static constexpr std::array<std::string_view, 0> unimplemented{};
};

template <>
struct JsonKeys<Config> {
    static constexpr std::array<KeyAlias, 1> aliases{{{"bfloat16", "bf16", false}}};
    static constexpr std::array<std::string_view, 33> unimplemented{
        "amp", "communication_data_type", "seq_parallel_communication_data_type", "data_types",
        "flops_profiler", "activation_checkpointing", "tensorboard", "wandb", "csv_monitor", "comet",
        "comms_logger", "checkpoint", "aio", "autotuning", "elasticity", "compression_training",
        "curriculum_learning", "data_efficiency", "sparse_attention", "pipeline", "progressive_layer_drop",
        "sparse_gradients", "memory_breakdown", "dump_state", "timers", "hybrid_engine", "eigenvalue",
        "quantize_training", "nebula", "weight_quantization", "graph_harvesting", "use_node_local_storage",
        "load_universal_checkpoint"};
};

template <>
struct JsonKeys<ZeroConfig> {
    static constexpr std::array<KeyAlias, 6> aliases{{
        {"prefetch_bucket_size", "stage3_prefetch_bucket_size", false},
        {"param_persistence_threshold", "stage3_param_persistence_threshold", false},
        {"max_live_parameters", "stage3_max_live_parameters", false},
        {"max_reuse_distance", "stage3_max_reuse_distance", false},
        {"gather_16bit_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save", false},
        {"stage3_gather_fp16_weights_on_model_save", "stage3_gather_16bit_weights_on_model_save", true},
    }};
    static constexpr std::array<std::string_view, 21> unimplemented{
        "load_from_fp32_weights", "elastic_checkpoint", "ignore_unused_parameters", "memory_efficient_linear",
        "override_module_apply", "zero_hpz_partition_size", "zero_quantized_weights",
        "zero_quantized_nontrainable_weights", "zero_quantized_gradients", "mics_shard_size",
        "mics_hierarchical_params_gather", "pipeline_loading_checkpoint", "use_multi_rank_bucket_allreduce",
        "model_persistence_threshold", "stage3_model_persistence_threshold", "cpu_offload_use_pin_memory",
        "log_trace_cache_warnings", "module_granularity_threshold", "use_all_reduce_for_fetch_params",
        "zeropp_loco_param", "cpu_offload_param"};
};

template <>
struct JsonKeys<OffloadConfig> {
    static constexpr std::array<KeyAlias, 0> aliases{};
    static constexpr std::array<std::string_view, 5> unimplemented{"nvme_path", "buffer_count", "buffer_size",
                                                                   "max_in_cpu", "fast_init"};
};

template <>
struct JsonKeys<Fp16Config> {
    static constexpr std::array<KeyAlias, 0> aliases{};
    static constexpr std::array<std::string_view, 1> unimplemented{"type"};
};

template <>
struct JsonKeys<Bf16Config> {
    static constexpr std::array<KeyAlias, 0> aliases{};
    static constexpr std::array<std::string_view, 2> unimplemented{"immediate_grad_update", "check_grad_overflow"};
};

namespace detail {

using Json = nlohmann::ordered_json;

template <class T>
struct is_maybe : std::false_type {};
template <class T>
struct is_maybe<Maybe<T>> : std::true_type {};

template <class T>
concept config_enum = std::is_enum_v<T>;

/// Levenshtein distance, for "did you mean".
inline std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = up;
        }
    }
    return row[b.size()];
}

inline std::string describe(const Json& j) {
    std::string text = j.dump();
    if (text.size() > 40) text = text.substr(0, 37) + "...";
    return std::string(j.type_name()) + " " + text;
}

inline std::string join_path(const std::string& path, std::string_view key) {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
}

/// Reads one JSON value into a config member, collecting errors and warnings.
class JsonReader {
public:
    std::vector<std::string> errors;
    std::vector<std::string> warnings;

    template <class T>
    void read(const Json& j, T& out, const std::string& path) {
        if constexpr (std::is_same_v<T, bool>) {
            if (j.is_boolean()) out = j.get<bool>();
            else expected(path, "a boolean", j);
        } else if constexpr (std::is_integral_v<T>) {
            read_integer(j, out, path);
        } else if constexpr (std::is_floating_point_v<T>) {
            if (j.is_number()) out = j.get<double>();
            else expected(path, "a number", j);
        } else if constexpr (std::is_same_v<T, std::array<double, 2>>) {
            if (j.is_array() && j.size() == 2 && j[0].is_number() && j[1].is_number()) out = {j[0], j[1]};
            else expected(path, "an array of 2 numbers", j);
        } else if constexpr (is_maybe<T>::value) {
            if (j.is_null()) out = T{};
            else {
                out.has_value = true;
                read(j, out.value, path);
            }
        } else if constexpr (config_enum<T>) {
            read_enum(j, out, path);
        } else if constexpr (std::is_same_v<T, OptimizerConfig> || std::is_same_v<T, SchedulerConfig>) {
            read_typed_block(j, out, path);
        } else if constexpr (std::is_same_v<T, ZeroConfig>) {
            if (j.is_boolean()) {  // legacy form: true means stage 1
                out.stage = j.get<bool>() ? 1 : 0;
                warnings.push_back(path + ": a boolean is deprecated; use {\"stage\": N}");
            } else {
                read_object(j, out, path, [](std::string_view) { return true; });
            }
        } else {
            static_assert(reflected<T>, "no JSON reading for this config member type");
            read_object(j, out, path, [](std::string_view) { return true; });
        }
    }

private:
    void expected(const std::string& path, std::string_view what, const Json& j) {
        errors.push_back(path + ": expected " + std::string(what) + ", got " + describe(j));
    }

    template <class T>
    void read_integer(const Json& j, T& out, const std::string& path) {
        // DeepSpeed configs write sizes as 5e7, so integral floats are integers too.
        double value = 0;
        if (j.is_number_integer()) value = static_cast<double>(j.get<std::int64_t>());
        else if (j.is_number_float() && std::isfinite(j.get<double>()) && std::trunc(j.get<double>()) == j.get<double>())
            value = j.get<double>();
        else return expected(path, "an integer", j);
        if (value < static_cast<double>(std::numeric_limits<T>::min()) ||
            value > static_cast<double>(std::numeric_limits<T>::max()))
            return expected(path, "an integer in range", j);
        out = j.is_number_integer() ? static_cast<T>(j.get<std::int64_t>()) : static_cast<T>(value);
    }

    template <class E>
    void read_enum(const Json& j, E& out, const std::string& path) {
        std::string choices;
        for (auto name : EnumNames<E>::names) choices += (choices.empty() ? "" : ", ") + std::string(name);
        if (!j.is_string()) return expected(path, "one of: " + choices, j);
        if (auto e = enum_from_name<E>(j.get<std::string>())) out = *e;
        else errors.push_back(path + ": unknown value \"" + j.get<std::string>() + "\"; expected one of: " + choices);
    }

    /// `optimizer` / `scheduler`: which params are valid depends on `type`, read first.
    template <class Block>
    void read_typed_block(const Json& j, Block& out, const std::string& path) {
        if (!j.is_object()) return expected(path, "an object", j);
        if (auto type = j.find("type"); type != j.end()) read(*type, out.type, join_path(path, "type"));
        else if (!j.empty()) errors.push_back(path + ": missing \"type\"");
        for (const auto& [key, value] : j.items()) {
            if (key == "type") continue;
            if (key != "params") {
                unknown_key(path, key, std::array<std::string_view, 2>{"type", "params"});
                continue;
            }
            const auto type = out.type;
            const auto params_path = join_path(path, "params");
            Json params = value;
            if (std::is_same_v<Block, OptimizerConfig> && params.is_object() && params.erase("max_grad_norm") > 0)
                errors.push_back(params_path + ".max_grad_norm: not supported as an optimizer parameter; "
                                               "use \"gradient_clipping\"");
            read_object(params, out.params, params_path, [&](std::string_view name) {
                if constexpr (std::is_same_v<Block, OptimizerConfig>) {
                    if (optimizer_accepts(type, name)) return true;
                } else if (scheduler_accepts(type, name)) {
                    return true;
                }
                errors.push_back(params_path + "." + std::string(name) + ": not a parameter of " +
                                 std::string(name_of(type)));
                return false;
            });
        }
    }

    template <class T, class Accepts>
    void read_object(const Json& j, T& out, const std::string& path, Accepts&& accepts) {
        if (!j.is_object()) return expected(path, "an object", j);
        std::vector<std::string_view> names;
        for_each_field(out, [&](std::string_view name, auto&) { names.push_back(name); });
        for (const auto& [key, value] : j.items()) {
            std::string_view name = key;
            for (const auto& alias : JsonKeys<T>::aliases) {
                if (key != alias.key) continue;
                name = alias.member;
                if (alias.deprecated)
                    warnings.push_back(join_path(path, key) + " is deprecated; use " + join_path(path, name));
            }
            if (value == "auto") continue;  // "auto": keep the default
            if (std::find(names.begin(), names.end(), name) == names.end()) {
                if (std::find(JsonKeys<T>::unimplemented.begin(), JsonKeys<T>::unimplemented.end(), key) !=
                    JsonKeys<T>::unimplemented.end())
                    warnings.push_back(join_path(path, key) + ": known to DeepSpeed but not implemented by dspp; ignored");
                else
                    unknown_key(path, key, names);
                continue;
            }
            if (name == "cpu_offload") warnings.push_back(join_path(path, key) + " is deprecated; use offload_optimizer");
            if (!accepts(name)) continue;
            for_each_field(out, [&](std::string_view field, auto& member) {
                if (field == name) read(value, member, join_path(path, name));
            });
        }
    }

    template <class Names>
    void unknown_key(const std::string& path, const std::string& key, const Names& names) {
        std::string_view closest;
        std::size_t best = std::numeric_limits<std::size_t>::max();
        for (std::string_view name : names)
            if (auto d = edit_distance(key, name); d < best) best = d, closest = name;
        std::string message = "unknown key '" + join_path(path, key) + "'";
        if (!closest.empty() && best <= std::max<std::size_t>(3, key.size() / 2))
            message += "; did you mean '" + join_path(path, closest) + "'?";
        errors.push_back(message);
    }
};

/// The `type` of the struct holding a params member (optimizer or scheduler).
template <class Parent, class Member>
auto type_beside(const Parent& parent, const Member&) {
    return parent.type;
}

/// Writes one config member as JSON; `complete` also writes unset values (as null) and
/// every params key whatever the type, for `dspp-config show-defaults`.
template <class T>
Json write(const T& value, bool complete) {
    if constexpr (config_enum<T>) {
        return std::string(name_of(value));
    } else if constexpr (is_maybe<T>::value) {
        return value.has_value ? write(value.value, complete) : Json(nullptr);
    } else if constexpr (std::is_same_v<T, std::array<double, 2>>) {
        return Json::array({value[0], value[1]});
    } else if constexpr (reflected<T>) {
        Json object = Json::object();
        for_each_field(value, [&](std::string_view name, const auto& member) {
            using Member = std::remove_cvref_t<decltype(member)>;
            if constexpr (std::is_same_v<Member, OptimizerParams> || std::is_same_v<Member, SchedulerParams>) {
                Json params = write(member, complete);
                if (!complete) {
                    Json accepted = Json::object();
                    for (const auto& [key, v] : params.items()) {
                        bool ok = false;
                        // `type` is the enclosing struct's; reached through `member` so the
                        // expression depends on it (nvcc checks non-dependent ones in discarded branches).
                        const auto type = type_beside(value, member);
                        if constexpr (std::is_same_v<Member, OptimizerParams>) ok = optimizer_accepts(type, key);
                        else ok = scheduler_accepts(type, key);
                        if (ok) accepted[key] = v;
                    }
                    params = std::move(accepted);
                }
                object[std::string(name)] = std::move(params);
                return;
            } else if constexpr (is_maybe<Member>::value) {
                if (!member.has_value && !complete) return;
            } else if constexpr (std::is_same_v<Member, OptimizerConfig> || std::is_same_v<Member, SchedulerConfig>) {
                if (member.type == decltype(member.type){} && !complete) return;  // absent block
            }
            object[std::string(name)] = write(member, complete);
        });
        return object;
    } else {
        return value;
    }
}

/// Parses JSON text, rejecting duplicate keys (nlohmann keeps the last one silently).
inline Json parse_strict(std::string_view text, const std::string& origin) {
    std::vector<std::vector<std::string>> seen;  // keys per open object
    std::vector<std::string> path;
    std::vector<std::string> duplicates;
    Json::parser_callback_t callback = [&](int, Json::parse_event_t event, Json& parsed) {
        switch (event) {
        case Json::parse_event_t::object_start: seen.emplace_back(); path.emplace_back(); break;
        case Json::parse_event_t::key: {
            auto key = parsed.get<std::string>();
            auto& keys = seen.back();
            path.back() = key;
            if (std::find(keys.begin(), keys.end(), key) != keys.end()) {
                std::string full;
                for (const auto& k : path) full += (full.empty() ? "" : ".") + k;
                duplicates.push_back(full);
            }
            keys.push_back(std::move(key));
            break;
        }
        case Json::parse_event_t::object_end: seen.pop_back(); path.pop_back(); break;
        default: break;
        }
        return true;
    };
    Json j;
    try {
        j = Json::parse(text.begin(), text.end(), callback);
    } catch (const Json::parse_error& e) {
        throw ConfigError({origin + ": malformed JSON: " + e.what()});
    }
    if (!duplicates.empty()) {
        std::string list;
        for (const auto& d : duplicates) list += (list.empty() ? "" : ", ") + d;
        throw ConfigError({origin + ": Duplicate keys in DeepSpeed config: [" + list + "]"});
    }
    return j;
}

/// Tuning keys dspp reads but does not act on yet: each one given a value other than its
/// default, at a stage where DeepSpeed would use it, is a warning that says what dspp does
/// instead, so none is ignored silently. (`round_robin_gradients` orders gradient copies for
/// CPU offload only, which is warned about on its own.)
inline void warn_unhonoured_tuning(const ZeroConfig& zero, std::vector<std::string>& warnings) {
    const ZeroConfig defaults{};
    const auto warn = [&](bool given, const char* key, const char* instead) {
        if (given) warnings.push_back(std::string("zero_optimization.") + key + ": not honoured by dspp yet; " + instead);
    };
    const bool stages_1_2 = zero.stage == 1 || zero.stage == 2, stage_3 = zero.stage == 3;
    warn(stages_1_2 && zero.allgather_bucket_size != defaults.allgather_bucket_size, "allgather_bucket_size",
         "the updated partitions are all-gathered in one collective per parameter group");
    warn(stage_3 && zero.sub_group_size != defaults.sub_group_size, "sub_group_size",
         "each rank updates its whole partition in one pass");
    constexpr const char* gathers = "stage 3 gathers one layer (or block) at a time and, with overlap_comm, prefetches the next";
    warn(stage_3 && zero.stage3_max_live_parameters != defaults.stage3_max_live_parameters, "stage3_max_live_parameters",
         gathers);
    warn(stage_3 && zero.stage3_prefetch_bucket_size != defaults.stage3_prefetch_bucket_size,
         "stage3_prefetch_bucket_size", gathers);
    warn(stage_3 && zero.stage3_max_reuse_distance != defaults.stage3_max_reuse_distance, "stage3_max_reuse_distance",
         gathers);
}

}  // namespace detail

/// Reads a config from JSON text and validates it for `world_size` ranks with `ds::check`.
/// @throws ConfigError listing every problem, each prefixed by `origin`.
inline LoadedConfig parse_config(std::string_view text, std::int64_t world_size,
                                 const std::string& origin = "<config>") {
    const auto json = detail::parse_strict(text, origin);
    if (!json.is_object()) throw ConfigError({origin + ": expected a JSON object, got " + detail::describe(json)});
    detail::JsonReader reader;
    LoadedConfig loaded;
    reader.read(json, loaded.config, "");
    if (!reader.errors.empty()) {
        for (auto& e : reader.errors) e = origin + ": " + e;
        throw ConfigError(std::move(reader.errors));
    }
    const auto& zero = loaded.config.zero_optimization;
    if (optimizer_offload_device(zero) != OffloadDevice::none || zero.offload_param.device != OffloadDevice::none)
        reader.warnings.push_back("zero_optimization: offloading is not implemented by dspp; states stay in memory");
    detail::warn_unhonoured_tuning(zero, reader.warnings);
    for (auto& w : reader.warnings) loaded.warnings.push_back(origin + ": " + w);
    if (auto rule = check(loaded.config, world_size); !rule)
        throw ConfigError({origin + ": " + std::string(rule.what())});
    return loaded;
}

/// Reads and validates `ds_config.json` at `file`.
/// @throws ConfigError naming the file when it is missing, unreadable, malformed or invalid.
inline LoadedConfig load_config(const std::filesystem::path& file, std::int64_t world_size) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw ConfigError({file.string() + ": cannot open the config file (missing or unreadable)"});
    std::ostringstream text;
    text << in.rdbuf();
    return parse_config(text.str(), world_size, file.string());
}

/// `cfg` as DeepSpeed JSON: unset keys and absent optimizer/scheduler blocks are left out,
/// and params list only the keys of their type, so the text reads back equal.
inline nlohmann::ordered_json to_json(const Config& cfg) { return detail::write(cfg, false); }

/// Every key with its value, unset ones as null and all params: for `show-defaults`.
inline nlohmann::ordered_json to_json_complete(const Config& cfg) { return detail::write(cfg, true); }

/// Writes `cfg` to `file` (through a temporary file and a rename, so a crash leaves no half file).
inline void save_config(const Config& cfg, const std::filesystem::path& file) {
    const auto temporary = std::filesystem::path(file.string() + ".tmp");
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        if (!out) throw ConfigError({file.string() + ": cannot write the config file"});
        out << to_json(cfg).dump(2) << '\n';
        if (!out.flush()) throw ConfigError({file.string() + ": write failed"});
    }
    std::filesystem::rename(temporary, file);
}

}  // namespace ds
