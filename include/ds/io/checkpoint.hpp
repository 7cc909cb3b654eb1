#pragma once
/// @file
/// Where `Engine::save_checkpoint` puts a training state, with DeepSpeed's names
/// (`runtime/engine.py`: `_get_ckpt_name`, `_get_zero_ckpt_name`, the `latest` file) and
/// safetensors in place of pickled `.pt` files:
///
/// ```
/// <dir>/latest                                                   the newest tag, as text
/// <dir>/<tag>/mp_rank_00_model_states.safetensors                rank 0: the whole model in fp32
///                                                                (PyTorch names), engine state as metadata
/// <dir>/<tag>/zero_pp_rank_<r>_mp_rank_00_optim_states.safetensors   rank r: its optimizer states
/// ```

#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>

namespace ds::io {

/// A checkpoint that cannot be written, or read into this engine (missing, truncated, or
/// saved by another model, precision, ZeRO stage, optimizer or world size). Names the file
/// and the mismatch.
class CheckpointError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// What `Engine::load_checkpoint` restores: DeepSpeed's keyword arguments of the same names.
/// A load without the optimizer's states (`load_optimizer_states = false`, or
/// `load_module_only`) reads only the model file and checks only the model there, so a
/// checkpoint of another precision, ZeRO stage, optimizer or world size still gives its
/// weights (to evaluate them, or to fine-tune them with the loading engine's optimizer).
struct LoadOptions {
    /// The optimizer's states and step count, and the fp16 loss scaler (DeepSpeed keeps it
    /// in the optimizer's state). Else they stay as they are.
    bool load_optimizer_states = true;
    /// The learning-rate schedule's position. Else it stays as it is.
    bool load_lr_scheduler_states = true;
    /// The weights alone: no step counters, schedule or optimizer state, and the gradients
    /// and accumulation cycle as they are (load it at a boundary, after `step()`).
    bool load_module_only = false;
};

inline std::filesystem::path model_states_file(const std::filesystem::path& dir, const std::string& tag) {
    return dir / tag / "mp_rank_00_model_states.safetensors";
}

inline std::filesystem::path optim_states_file(const std::filesystem::path& dir, const std::string& tag, int rank) {
    return dir / tag / ("zero_pp_rank_" + std::to_string(rank) + "_mp_rank_00_optim_states.safetensors");
}

/// The tag in `<dir>/latest`, or nothing when there is no such file (DeepSpeed then warns
/// and loads nothing).
inline std::optional<std::string> read_latest(const std::filesystem::path& dir) {
    std::ifstream in(dir / "latest");
    if (!in) return std::nullopt;
    std::string tag;
    std::getline(in, tag);
    if (tag.empty()) throw CheckpointError((dir / "latest").string() + ": empty (no tag)");
    return tag;
}

/// Names `tag` in `<dir>/latest`, through a temporary file and a rename, so a reader sees
/// the old tag or the new one, never a torn file.
inline void write_latest(const std::filesystem::path& dir, const std::string& tag) {
    const auto file = dir / "latest", temporary = dir / "latest.tmp";
    {
        std::ofstream out(temporary, std::ios::trunc);
        out << tag;
        if (!out.flush()) throw CheckpointError(temporary.string() + ": cannot write");
    }
    std::filesystem::rename(temporary, file);
}

}  // namespace ds::io
