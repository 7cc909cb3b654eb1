#pragma once
/// @file
/// CIFAR-10's binary format (`data_batch_1..5.bin`, `test_batch.bin`).

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ds/data/dataset.hpp>

namespace ds::data {

/// The class names the CIFAR example prints.
inline const std::vector<std::string> cifar10_classes{"plane", "car",  "bird", "cat",  "deer",
                                                      "dog",   "frog", "horse", "ship", "truck"};

/// Whether `dir` holds the CIFAR-10 binary batches.
inline bool has_cifar10(const std::filesystem::path& dir) {
    return std::filesystem::exists(dir / "data_batch_1.bin") && std::filesystem::exists(dir / "test_batch.bin");
}

/// Reads the training (`data_batch_1..5.bin`, 50,000 images) or test (`test_batch.bin`,
/// 10,000) split from `dir`. Each record is a label byte and 3,072 pixel bytes (R, G, B planes).
/// @throws DataError naming the file when it is missing, truncated or holds a bad label
inline ImageDataset load_cifar10(const std::filesystem::path& dir, bool train) {
    constexpr std::size_t record = 1 + 3 * 32 * 32, per_file = 10000;
    ImageDataset d{"cifar10", 3, 32, 32, {}, {}, cifar10_classes};
    std::vector<std::filesystem::path> files;
    if (train)
        for (int i = 1; i <= 5; ++i) files.push_back(dir / ("data_batch_" + std::to_string(i) + ".bin"));
    else
        files.push_back(dir / "test_batch.bin");
    d.pixels.reserve(files.size() * per_file * (record - 1));
    std::vector<char> bytes(per_file * record);
    for (const auto& file : files) {
        std::ifstream in(file, std::ios::binary);
        if (!in) throw DataError(file.string() + ": cannot open the CIFAR-10 batch (missing or unreadable)");
        in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        const auto got = static_cast<std::size_t>(in.gcount());
        if (got != bytes.size() || in.peek() != std::ifstream::traits_type::eof())
            throw DataError(file.string() + ": expected " + std::to_string(bytes.size()) + " bytes (" +
                            std::to_string(per_file) + " records of " + std::to_string(record) + "), found " +
                            (got == bytes.size() ? "more" : std::to_string(got)) + " (truncated or not a CIFAR-10 batch)");
        for (std::size_t r = 0; r < per_file; ++r) {
            const auto label = static_cast<std::uint8_t>(bytes[r * record]);
            if (label >= 10)
                throw DataError(file.string() + ": record " + std::to_string(r) + " has label " +
                                std::to_string(label) + ", expected 0-9");
            d.labels.push_back(label);
            const auto* first = reinterpret_cast<const std::uint8_t*>(bytes.data() + r * record + 1);
            d.pixels.insert(d.pixels.end(), first, first + record - 1);
        }
    }
    return d;
}

}  // namespace ds::data
