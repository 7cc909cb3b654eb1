#pragma once
/// @file
/// A model's flat parameters to and from safetensors, by PyTorch name.

#include <algorithm>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <ds/io/safetensors.hpp>

namespace ds::io {

/// Writes the parameters of `Model` (flat, laid out as `Model::parameters`) with their
/// PyTorch names and shapes, so `safetensors.torch.load_file` gives a `state_dict`, stored
/// as fp32 or rounded to bf16 / fp16 (`stored_as`). `metadata` goes into the header beside
/// PyTorch's `"format": "pt"`.
template <class Model>
void save_weights(const std::filesystem::path& file, std::span<const float> params,
                  std::map<std::string, std::string> metadata = {}, StoredAs stored_as = StoredAs::F32) {
    static_assert(Model::expert_parallel_size == 1,
                  "ds::io::save_weights: a model with its experts split holds only this rank's; save the engine's "
                  "full_model_type (Engine::full_parameters() gathers every expert)");
    std::vector<NamedTensor> tensors;
    for (const auto& p : Model::parameters)
        tensors.push_back({std::string(p.name()), {p.shape.dims, p.shape.dims + p.shape.rank},
                           params.subspan(p.offset, p.numel()), stored_as});
    metadata["format"] = "pt";
    save_safetensors(file, tensors, metadata);
}

/// Copies the weights of `Model` from a safetensors file read into memory (`where` names
/// it in errors) into `params`. Every parameter must be present with its exact shape; a
/// tensor the model does not have is an error too (a checkpoint from another model).
/// Nothing is written unless everything fits.
template <class Model>
void read_weights(const SafetensorsFile& loaded, const std::string& where, std::span<float> params) {
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
        std::string text = where + ": does not fit this model:";
        for (const auto& problem : problems) text += " " + problem + ";";
        throw SafetensorsError(text);
    }
    for (const auto& p : Model::parameters) {
        const auto& values = loaded.tensors.at(std::string(p.name())).values;
        std::copy(values.begin(), values.end(), params.begin() + static_cast<std::ptrdiff_t>(p.offset));
    }
}

/// Reads weights saved for `Model` (by dspp or by PyTorch, in fp32, bf16 or fp16) into
/// `params` (`read_weights`).
template <class Model>
void load_weights(const std::filesystem::path& file, std::span<float> params) {
    static_assert(Model::expert_parallel_size == 1,
                  "ds::io::load_weights: load the engine's full_model_type (every expert) and pass it to "
                  "Engine::set_full_parameters, which keeps this rank's experts");
    read_weights<Model>(load_safetensors(file), file.string(), params);
}

}  // namespace ds::io
