#pragma once
/// @file
/// safetensors files with PyTorch names: what `safetensors.torch.load_file` opens. Tensors are
/// written as F32, BF16 or F16 and read from any of the three, widened to fp32.

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ds/numeric/bf16.hpp>
#include <ds/numeric/half.hpp>

namespace ds::io {

/// A file that is not a usable safetensors file, or does not fit the model. Names the file.
class SafetensorsError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// How a tensor is stored in the file: safetensors' dtype names.
enum class StoredAs { F32, BF16, F16 };

inline const char* name_of(StoredAs s) {
    switch (s) {
        case StoredAs::BF16: return "BF16";
        case StoredAs::F16: return "F16";
        default: return "F32";
    }
}
inline std::size_t bytes_of(StoredAs s) { return s == StoredAs::F32 ? 4 : 2; }

/// One tensor to write: its name, shape and fp32 values, stored as `stored_as` (each value
/// rounded to nearest even, as `tensor.to(torch.bfloat16)` rounds).
struct NamedTensor {
    std::string name;
    std::vector<std::size_t> shape;
    std::span<const float> values;
    StoredAs stored_as = StoredAs::F32;
};

/// Writes `tensors` as safetensors (8-byte little-endian header length, JSON header padded
/// with spaces to 8 bytes, then the data), through a temporary file and a rename.
inline void save_safetensors(const std::filesystem::path& file, std::span<const NamedTensor> tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::size_t offset = 0;
    for (const auto& t : tensors) {
        const std::size_t bytes = t.values.size() * bytes_of(t.stored_as);
        header[t.name] = {{"dtype", name_of(t.stored_as)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    const auto temporary = std::filesystem::path(file.string() + ".tmp");
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        if (!out) throw SafetensorsError(file.string() + ": cannot write");
        std::uint64_t length = text.size();
        unsigned char le[8];
        for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(length >> (8 * i));
        out.write(reinterpret_cast<const char*>(le), 8);
        out.write(text.data(), static_cast<std::streamsize>(text.size()));
        for (const auto& t : tensors) {
            if (t.stored_as == StoredAs::F32) {
                out.write(reinterpret_cast<const char*>(t.values.data()), static_cast<std::streamsize>(t.values.size_bytes()));
                continue;
            }
            std::vector<std::uint16_t> narrow(t.values.size());
            for (std::size_t i = 0; i < narrow.size(); ++i)
                narrow[i] = t.stored_as == StoredAs::BF16 ? bf16(t.values[i]).bits : half(t.values[i]).bits;
            out.write(reinterpret_cast<const char*>(narrow.data()), static_cast<std::streamsize>(narrow.size() * 2));
        }
        if (!out.flush()) throw SafetensorsError(file.string() + ": write failed");
    }
    std::filesystem::rename(temporary, file);
}

/// A safetensors file read into memory: each tensor's shape, fp32 values (widened from
/// BF16 or F16, exactly) and stored dtype by name.
struct SafetensorsFile {
    struct Tensor {
        std::vector<std::size_t> shape;
        std::vector<float> values;
        StoredAs stored_as = StoredAs::F32;
    };
    std::map<std::string, Tensor> tensors;
    std::map<std::string, std::string> metadata;
};

/// Reads a safetensors file of F32, BF16 and F16 tensors.
/// @throws SafetensorsError naming the file: missing, header length or JSON bad, another
/// dtype, offsets out of range or not matching the shape
inline SafetensorsFile load_safetensors(const std::filesystem::path& file) {
    auto fail = [&](const std::string& what) { return SafetensorsError(file.string() + ": " + what); };
    std::ifstream in(file, std::ios::binary);
    if (!in) throw fail("cannot open (missing or unreadable)");
    const auto file_size = std::filesystem::file_size(file);
    unsigned char le[8]{};
    if (!in.read(reinterpret_cast<char*>(le), 8)) throw fail("too short for a safetensors header");
    std::uint64_t length = 0;
    for (int i = 7; i >= 0; --i) length = (length << 8) | le[i];
    if (length > file_size - 8 || length > (100u << 20)) throw fail("header length " + std::to_string(length) + " exceeds the file");
    std::string text(length, '\0');
    in.read(text.data(), static_cast<std::streamsize>(length));
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw fail(std::string("malformed JSON header: ") + e.what());
    }
    if (!header.is_object()) throw fail("the header is not a JSON object");
    const std::uint64_t data_size = file_size - 8 - length;
    std::vector<char> data(data_size);
    in.read(data.data(), static_cast<std::streamsize>(data_size));
    SafetensorsFile result;
    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            for (const auto& [k, v] : entry.items())
                if (v.is_string()) result.metadata[k] = v.get<std::string>();
            continue;
        }
        try {
            SafetensorsFile::Tensor t;
            const auto dtype = entry.at("dtype").get<std::string>();
            if (dtype == "BF16") t.stored_as = StoredAs::BF16;
            else if (dtype == "F16") t.stored_as = StoredAs::F16;
            else if (dtype != "F32") throw fail(name + ": dtype \"" + dtype + "\", expected \"F32\", \"BF16\" or \"F16\"");
            const std::size_t width = bytes_of(t.stored_as);
            t.shape = entry.at("shape").get<std::vector<std::size_t>>();
            const auto offsets = entry.at("data_offsets").get<std::vector<std::uint64_t>>();
            std::uint64_t numel = 1;
            for (auto d : t.shape) numel *= d;
            if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
                throw fail(name + ": data_offsets out of range of the " + std::to_string(data_size) + "-byte data");
            if (offsets[1] - offsets[0] != numel * width)
                throw fail(name + ": data_offsets span " + std::to_string(offsets[1] - offsets[0]) +
                           " bytes, the shape needs " + std::to_string(numel * width));
            t.values.resize(numel);
            const char* at = data.data() + offsets[0];
            if (t.stored_as == StoredAs::F32) {
                std::memcpy(t.values.data(), at, numel * sizeof(float));
            } else {
                for (std::size_t i = 0; i < numel; ++i) {
                    std::uint16_t b;
                    std::memcpy(&b, at + 2 * i, 2);
                    t.values[i] = t.stored_as == StoredAs::BF16 ? static_cast<float>(bf16::from_bits(b))
                                                                : static_cast<float>(half::from_bits(b));
                }
            }
            result.tensors.emplace(name, std::move(t));
        } catch (const nlohmann::json::exception& e) {
            throw fail(name + ": malformed entry: " + e.what());
        }
    }
    return result;
}

}  // namespace ds::io
