#pragma once
/// @file
/// A synthetic, learnable image dataset for benchmarks and tests: no files needed.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <ds/data/dataset.hpp>
#include <ds/util/rng.hpp>

namespace ds::data {

/// `n` random C × H × W images in `classes` classes: each class brightens its own band of
/// rows on top of uniform noise, so a network can learn it. Reproducible from `seed`.
inline ImageDataset make_synthetic(std::size_t n, std::size_t c, std::size_t h, std::size_t w,
                                   std::size_t classes = 10, std::uint64_t seed = 0) {
    ImageDataset d{"synthetic", c, h, w, std::vector<std::uint8_t>(n * c * h * w), std::vector<std::int32_t>(n), {}};
    for (std::size_t k = 0; k < classes; ++k) d.class_names.push_back("class" + std::to_string(k));
    Rng rng(seed, 0x5eed);
    for (std::size_t i = 0; i < n; ++i) {
        const auto label = rng.below(static_cast<std::uint32_t>(classes));
        d.labels[i] = static_cast<std::int32_t>(label);
        std::uint8_t* image = d.pixels.data() + i * c * h * w;
        for (std::size_t ch = 0; ch < c; ++ch)
            for (std::size_t y = 0; y < h; ++y) {
                const bool band = (y * classes / h) == label;
                for (std::size_t x = 0; x < w; ++x)
                    image[(ch * h + y) * w + x] = static_cast<std::uint8_t>(rng.below(128) + (band ? 127 : 0));
            }
    }
    return d;
}

}  // namespace ds::data
