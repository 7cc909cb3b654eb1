#pragma once
/// @file
/// The `ds::data::dataset` concept and `ImageDataset`, labelled 8-bit images held in memory.

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ds::data {

/// Samples of a fixed shape that can be fetched by index into a caller's buffer.
///
/// A model provides `size()`, `sample_size()` (floats per sample) and `get(i, out)`
/// which writes sample i's normalised values to `out` and returns its label. Law: `get`
/// is a pure function of i (the loader calls it from a background thread).
template <class D>
concept dataset = requires(const D& d, std::size_t i, float* out) {
    { d.size() } -> std::convertible_to<std::size_t>;
    { d.sample_size() } -> std::convertible_to<std::size_t>;
    { d.get(i, out) } -> std::convertible_to<std::int32_t>;
};

/// A data file that cannot be used: missing, truncated or malformed. The message names the file.
class DataError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// Labelled C × H × W images of bytes, normalised on access as the CIFAR example's
/// `transforms.Normalize((0.5, ...), (0.5, ...))` after `ToTensor()`: (x / 255 − 0.5) / 0.5.
struct ImageDataset {
    std::string name;                      ///< "cifar10", "fashion-mnist", ...
    std::size_t channels = 0, height = 0, width = 0;
    std::vector<std::uint8_t> pixels;      ///< size() × C × H × W, channel-major per image
    std::vector<std::int32_t> labels;
    std::vector<std::string> class_names;  ///< label → name

    std::size_t size() const { return labels.size(); }
    std::size_t sample_size() const { return channels * height * width; }
    std::int32_t get(std::size_t i, float* out) const {
        const std::uint8_t* image = pixels.data() + i * sample_size();
        // (x / 255 - 0.5) / 0.5, written so that 0 and 255 map to exactly -1 and 1 even with FMA.
        for (std::size_t j = 0; j < sample_size(); ++j) out[j] = (static_cast<float>(image[j]) - 127.5f) / 127.5f;
        return labels[i];
    }
};

static_assert(dataset<ImageDataset>);

}  // namespace ds::data
