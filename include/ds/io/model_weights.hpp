#pragma once
/// @file
/// A model's flat parameters to and from safetensors, by PyTorch name.

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <ds/io/safetensors.hpp>

namespace ds::io {

/// Writes the parameters of `Model` (flat, laid out as `Model::parameters`) with their
/// PyTorch names and shapes, so `safetensors.torch.load_file` gives a `state_dict`.
template <class Model>
void save_weights(const std::filesystem::path& file, std::span<const float> params) {
    static_assert(Model::expert_parallel_size == 1,
                  "ds::io::save_weights: a model with its experts split holds only this rank's; save the engine's "
                  "full_model_type (Engine::full_parameters() gathers every expert)");
    std::vector<NamedTensor> tensors;
    for (const auto& p : Model::parameters)
        tensors.push_back({std::string(p.name()), {p.shape.dims, p.shape.dims + p.shape.rank},
                           params.subspan(p.offset, p.numel())});
    save_safetensors(file, tensors, {{"format", "pt"}});
}

/// Reads weights saved for `Model` (by dspp or by PyTorch) into `params`. Every parameter
/// must be present with its exact shape; a tensor the model does not have is an error too
/// (a checkpoint from another model). Nothing is written unless everything fits.
template <class Model>
void load_weights(const std::filesystem::path& file, std::span<float> params) {
    static_assert(Model::expert_parallel_size == 1,
                  "ds::io::load_weights: load the engine's full_model_type (every expert) and pass it to "
                  "Engine::set_full_parameters, which keeps this rank's experts");
    const auto loaded = load_safetensors(file);
    std::vector<std::string> problems;
    for (const auto& p : Model::parameters) {
        const auto it = loaded.tensors.find(std::string(p.name()));
        const std::vector<std::size_t> shape(p.shape.dims, p.shape.dims + p.shape.rank);
        if (it == loaded.tensors.end()) problems.push_back("missing " + std::string(p.name()));
        else if (it->second.shape != shape) problems.push_back(std::string(p.name()) + " has another shape");
    }
    for (const auto& [name, tensor] : loaded.tensors) {
        bool known = false;
        for (const auto& p : Model::parameters) known = known || p.name() == name;
        if (!known) problems.push_back("unexpected tensor " + name);
    }
    if (!problems.empty()) {
        std::string text = file.string() + ": does not fit this model:";
        for (const auto& problem : problems) text += " " + problem + ";";
        throw SafetensorsError(text);
    }
    for (const auto& p : Model::parameters) {
        const auto& values = loaded.tensors.at(std::string(p.name())).values;
        std::copy(values.begin(), values.end(), params.begin() + static_cast<std::ptrdiff_t>(p.offset));
    }
}

}  // namespace ds::io
