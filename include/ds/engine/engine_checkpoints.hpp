#pragma once
/// @file
/// `ds::Engine`'s checkpoints: `save_checkpoint`, `save_16bit_model`, `load_checkpoint` and
/// the identity checks that keep a checkpoint of another model, precision, stage or world
/// from loading (the layout is in `ds/io/checkpoint.hpp`). Included by `ds/engine/engine.hpp`,
/// which declares them; the training step stays there.

#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ds/engine/engine.hpp>
#include <ds/io/checkpoint.hpp>
#include <ds/io/model_weights.hpp>
#include <ds/util/log.hpp>

namespace ds {

template <class Model, optimizer Opt, zero_policy Z, precision_policy P, device_policy D, comm::communicator Comm>
    requires(explain_model<Model>())
void Engine<Model, Opt, Z, P, D, Comm>::save_checkpoint(const std::filesystem::path& dir, std::string tag,
                                                 const nlohmann::json& client_state, bool save_latest) {
    if (micro_steps_ % batch_.gradient_accumulation_steps != 0)
        throw std::logic_error("Engine::save_checkpoint: micro-step " + std::to_string(micro_steps_) +
                               " is inside a gradient accumulation cycle of " +
                               std::to_string(batch_.gradient_accumulation_steps) + "; save after its last step()");
    if (tag.empty()) tag = "global_step" + std::to_string(global_steps_);
    const std::vector<float> params = full_parameters();  // collective: before any rank can fail
    nlohmann::json identity = checkpoint_identity();
    identity["save_id"] = agreed_save_id();
    agree_on([&] {
        if (comm_.rank() == 0) std::filesystem::create_directories(dir / tag);
    });
    agree_on([&] {
        if (comm_.rank() == 0) {
            nlohmann::json state = identity;
            state["global_steps"] = global_steps_;
            state["global_samples"] = global_samples_;
            state["skipped_steps"] = skipped_steps_;
            state["optimizer_steps"] = optimizer_.step_count();
            state["lr_scheduler"] = {{"last_batch_iteration", scheduler_.last_batch_iteration()}};
            if constexpr (requires { scaler_.state(); }) {
                const auto s = scaler_.state();
                state["loss_scaler"] = {{"cur_scale", s.scale},
                                        {"cur_hysteresis", s.hysteresis},
                                        {"cur_iter", s.iteration},
                                        {"last_overflow_iter", s.last_overflow_iteration}};
            }
            state["client_state"] = client_state;
            io::save_weights<full_model_type>(io::model_states_file(dir, tag), params, {{"dspp", state.dump()}});
        }
        std::vector<decltype(optimizer_.state(0))> held;  // host spans; copies from the device on ds::Cuda
        held.reserve(Opt::state_buffers);
        std::vector<io::NamedTensor> states;
        for (std::size_t k = 0; k < Opt::state_buffers; ++k) {
            const auto& values = held.emplace_back(optimizer_.state(k));
            states.push_back({"state." + std::to_string(k), {values.size()}, {values.data(), values.size()}});
        }
        io::save_safetensors(io::optim_states_file(dir, tag, comm_.rank()), states, {{"dspp", identity.dump()}});
    });
    if (save_latest) {
        agree_on([&] {
            if (comm_.rank() == 0) io::write_latest(dir, tag);
        });
    }
}

template <class Model, optimizer Opt, zero_policy Z, precision_policy P, device_policy D, comm::communicator Comm>
    requires(explain_model<Model>())
bool Engine<Model, Opt, Z, P, D, Comm>::save_16bit_model(const std::filesystem::path& dir, const std::string& file) {
    if constexpr (Z::partitions_parameters) {
        if (!cfg_.zero_optimization.stage3_gather_16bit_weights_on_model_save) {
            if (comm_.rank() == 0)
                log_line(LogLevel::warning, "Did not save the model " + (dir / file).string() +
                                                " because `stage3_gather_16bit_weights_on_model_save` is False");
            return false;
        }
    }
    constexpr io::StoredAs stored_as = std::is_same_v<compute_type, bf16>   ? io::StoredAs::BF16
                                       : std::is_same_v<compute_type, half> ? io::StoredAs::F16
                                                                            : io::StoredAs::F32;
    const std::vector<float> params = full_parameters();  // collective: before any rank can fail
    agree_on([&] {
        if (comm_.rank() != 0) return;
        std::filesystem::create_directories(dir);
        io::save_weights<full_model_type>(dir / file, params, {}, stored_as);
    });
    return true;
}

template <class Model, optimizer Opt, zero_policy Z, precision_policy P, device_policy D, comm::communicator Comm>
    requires(explain_model<Model>())
auto Engine<Model, Opt, Z, P, D, Comm>::load_checkpoint(const std::filesystem::path& dir, std::string tag, io::LoadOptions options)
    -> std::optional<LoadedCheckpoint> {
    if (tag.empty()) {
        std::optional<std::string> latest;
        agree_on([&] { latest = io::read_latest(dir); });
        const double found = zero_.sum_over_ranks(latest ? 1.0 : 0.0);
        if (found > 0.0 && found < comm_.size())
            throw io::CheckpointError((dir / "latest").string() +
                                      ": some ranks find it and some do not (every rank must see the same folder)");
        if (!latest) {
            if (comm_.rank() == 0)
                std::cerr << "[deepspeed] Unable to find latest file at " << (dir / "latest").string()
                          << ", if trying to load latest checkpoint please pass in a specific tag\n";
            return std::nullopt;
        }
        tag = *latest;
    }
    const bool counters = !options.load_module_only;
    const bool optimizer = counters && options.load_optimizer_states;
    const bool schedule = counters && options.load_lr_scheduler_states;
    // Read and check everything into `commit`; only then change the engine.
    std::function<void()> commit;
    nlohmann::json client_state;
    agree_on([&] {
        const auto model_file = io::model_states_file(dir, tag);
        const auto model = io::load_safetensors(model_file);
        // The broadest mismatch first; the rest of the identity matters to the optimizer's states only.
        const nlohmann::json state = checked_state(model, model_file, optimizer);
        std::vector<float> params(full_model_type::param_count);
        io::read_weights<full_model_type>(model, model_file.string(), params);
        std::vector<std::vector<float>> states;
        if (optimizer) {
            const auto optim_file = io::optim_states_file(dir, tag, replicated_optimizer ? 0 : comm_.rank());
            const auto optim = io::load_safetensors(optim_file);
            const nlohmann::json optim_state = checked_state(optim, optim_file, true);
            if (optim_state.value("save_id", "") != state.value("save_id", ""))
                throw io::CheckpointError(optim_file.string() + ": from another save than " + model_file.string() +
                                          " (a save that failed part-way?)");
            for (std::size_t k = 0; k < Opt::state_buffers; ++k) {
                const auto it = optim.tensors.find("state." + std::to_string(k));
                if (it == optim.tensors.end() || it->second.values.size() != optimizer_.elements())
                    throw io::CheckpointError(optim_file.string() + ": optimizer state " + std::to_string(k) +
                                              (it == optim.tensors.end() ? " is missing" : " has another size") +
                                              " (" + std::to_string(optimizer_.elements()) + " values here)");
                states.push_back(it->second.values);
            }
        }
        try {
            std::int64_t steps = 0, samples = 0, skipped = 0, optimizer_steps = 0, position = 0;
            scaler_type scaler = scaler_;  // what fp16 restores into
            if (counters) {
                steps = state.at("global_steps").get<std::int64_t>();
                samples = state.at("global_samples").get<std::int64_t>();
                skipped = state.at("skipped_steps").get<std::int64_t>();
            }
            if (schedule) position = state.at("lr_scheduler").at("last_batch_iteration").get<std::int64_t>();
            if (optimizer) {
                optimizer_steps = state.at("optimizer_steps").get<std::int64_t>();
                if constexpr (requires { scaler.state(); }) {
                    const auto& s = state.at("loss_scaler");
                    scaler.restore({s.at("cur_scale").get<double>(), s.at("cur_hysteresis").get<int>(),
                                    s.at("cur_iter").get<long>(), s.at("last_overflow_iter").get<long>()});
                }
            }
            client_state = state.at("client_state");
            commit = [=, this, params = std::move(params), states = std::move(states)] {
                set_full_parameters(params);
                if (optimizer) {
                    for (std::size_t k = 0; k < states.size(); ++k) optimizer_.set_state(k, states[k]);
                    optimizer_.set_step_count(optimizer_steps);
                    scaler_ = scaler;
                }
                if (schedule) scheduler_.set_last_batch_iteration(position);
                if (counters) {
                    global_steps_ = steps;
                    global_samples_ = samples;
                    skipped_steps_ = skipped;
                    // Aligned to this engine's accumulation cycle (DeepSpeed starts it afresh).
                    micro_steps_ = steps * batch_.gradient_accumulation_steps;
                    consecutive_skips_ = 0;
                    zero_.zero_gradients();
                }
            };
        } catch (const nlohmann::json::exception& e) {
            throw io::CheckpointError(model_file.string() + ": engine state incomplete: " + e.what());
        }
    });
    commit();
    return LoadedCheckpoint{dir / tag, std::move(client_state)};
}

template <class Model, optimizer Opt, zero_policy Z, precision_policy P, device_policy D, comm::communicator Comm>
    requires(explain_model<Model>())
nlohmann::json Engine<Model, Opt, Z, P, D, Comm>::checkpoint_identity() const {
    return {{"format_version", 1},
            {"param_count", full_model_type::param_count},
            {"dtype", bfloat16_enabled() ? "bf16" : fp16_enabled() ? "fp16" : "fp32"},
            {"zero_stage", Z::stage},
            {"optimizer", std::string(name_of(Opt::type))},
            {"world_size", comm_.size()},
            {"expert_parallel_size", expert_parallel_size},
            {"optimizer_elements", zero_.optimizer_elements()}};
}

template <class Model, optimizer Opt, zero_policy Z, precision_policy P, device_policy D, comm::communicator Comm>
    requires(explain_model<Model>())
std::string Engine<Model, Opt, Z, P, D, Comm>::agreed_save_id() {
    std::random_device device;
    const double draws = zero_.sum_over_ranks(static_cast<double>(device()));
    return std::to_string(global_steps_) + "-" + std::to_string(static_cast<std::uint64_t>(draws));
}

template <class Model, optimizer Opt, zero_policy Z, precision_policy P, device_policy D, comm::communicator Comm>
    requires(explain_model<Model>())
nlohmann::json Engine<Model, Opt, Z, P, D, Comm>::checked_state(const io::SafetensorsFile& file, const std::filesystem::path& path,
                                                      bool whole) const {
    const auto it = file.metadata.find("dspp");
    if (it == file.metadata.end())
        throw io::CheckpointError(path.string() + ": no dspp engine state in its metadata (not written by "
                                                  "Engine::save_checkpoint)");
    nlohmann::json state;
    try {
        state = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
        throw io::CheckpointError(path.string() + ": malformed engine state: " + e.what());
    }
    const nlohmann::json here = checkpoint_identity();
    // The broadest difference first: another model also has other partitions.
    for (const char* key : {"format_version", "param_count", "dtype", "zero_stage", "optimizer", "world_size",
                            "expert_parallel_size", "optimizer_elements"}) {
        const std::string_view name = key;
        if (!whole && name != "format_version" && name != "param_count") break;
        if (replicated_optimizer && name == "world_size") continue;
        if (!state.contains(key) || state[key] != here[key])
            throw io::CheckpointError(path.string() + ": saved with " + key + " = " +
                                      (state.contains(key) ? state[key].dump() : std::string("(none)")) +
                                      ", this engine has " + here[key].dump());
    }
    return state;
}

template <class Model, optimizer Opt, zero_policy Z, precision_policy P, device_policy D, comm::communicator Comm>
    requires(explain_model<Model>())
template <class Body>
void Engine<Model, Opt, Z, P, D, Comm>::agree_on(Body&& body) {
    std::exception_ptr failure;
    try {
        body();
    } catch (...) {
        failure = std::current_exception();
    }
    const double failed = zero_.sum_over_ranks(failure ? 1.0 : 0.0);
    if (failure) std::rethrow_exception(failure);
    if (failed > 0.0) throw io::CheckpointError("checkpoint: another rank failed (its error says why)");
}

}  // namespace ds
