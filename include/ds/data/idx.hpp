#pragma once
/// @file
/// The IDX format of MNIST and Fashion-MNIST, plain or gzip-compressed (through zlib; a
/// build without zlib — the GPU check machine may have none — reads plain files and names a
/// compressed one).

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#if __has_include(<zlib.h>)
#include <zlib.h>
#define DSPP_HAVE_ZLIB 1
#else
#include <fstream>
#define DSPP_HAVE_ZLIB 0
#endif

#include <ds/data/dataset.hpp>

namespace ds::data {

namespace detail {

/// A file's bytes, gunzipped when it is gzip-compressed.
class IdxBytes {
public:
    /// @throws DataError naming the file when it cannot be opened (or, without zlib, is compressed)
    explicit IdxBytes(const std::filesystem::path& file) {
#if DSPP_HAVE_ZLIB
        in_ = gzopen(file.c_str(), "rb");  // reads plain files transparently too
        if (!in_) throw DataError(file.string() + ": cannot open the IDX file (missing or unreadable)");
#else
        in_.open(file, std::ios::binary);
        if (!in_) throw DataError(file.string() + ": cannot open the IDX file (missing or unreadable)");
        if (in_.peek() == 0x1f)
            throw DataError(file.string() + ": gzip-compressed, and this build has no zlib (install zlib1g-dev and "
                                            "rebuild, or gunzip the file)");
#endif
    }
    ~IdxBytes() {
#if DSPP_HAVE_ZLIB
        gzclose(in_);
#endif
    }
    IdxBytes(const IdxBytes&) = delete;
    IdxBytes& operator=(const IdxBytes&) = delete;

    /// Reads up to n bytes into `out`; returns how many, or −1 on a read error.
    long long read(void* out, std::size_t n) {
#if DSPP_HAVE_ZLIB
        return gzread(in_, out, static_cast<unsigned>(n));
#else
        in_.read(static_cast<char*>(out), static_cast<std::streamsize>(n));
        return in_.bad() ? -1 : static_cast<long long>(in_.gcount());
#endif
    }

private:
#if DSPP_HAVE_ZLIB
    gzFile in_ = nullptr;
#else
    std::ifstream in_;
#endif
};

}  // namespace detail

/// Fashion-MNIST's class names.
inline const std::vector<std::string> fashion_mnist_classes{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                            "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

/// Where Debian's `dataset-fashion-mnist` installs the files.
inline const std::filesystem::path debian_fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";

/// An unsigned-byte IDX tensor: its dimensions and values.
struct IdxArray {
    std::vector<std::size_t> dims;
    std::vector<std::uint8_t> values;
};

/// Reads an IDX file of unsigned bytes (magic 0x0000 08 NN), gzip-compressed or not.
/// @throws DataError naming the file when it is missing, not IDX, not bytes or truncated
inline IdxArray read_idx(const std::filesystem::path& file) {
    detail::IdxBytes in(file);
    auto read = [&](void* out, std::size_t n, const char* what) {
        const long long got = in.read(out, n);
        if (got < 0 || static_cast<std::size_t>(got) != n)
            throw DataError(file.string() + ": truncated " + what + " (read " + std::to_string(got < 0 ? 0 : got) +
                            " of " + std::to_string(n) + " bytes)");
    };
    std::array<std::uint8_t, 4> magic{};
    read(magic.data(), 4, "header");
    if (magic[0] != 0 || magic[1] != 0) throw DataError(file.string() + ": not an IDX file (bad magic number)");
    if (magic[2] != 0x08) throw DataError(file.string() + ": IDX element type is not unsigned byte (0x08)");
    IdxArray a;
    std::size_t count = 1;
    for (int d = 0; d < magic[3]; ++d) {
        std::array<std::uint8_t, 4> be{};
        read(be.data(), 4, "header");
        a.dims.push_back((std::size_t{be[0]} << 24) | (std::size_t{be[1]} << 16) | (std::size_t{be[2]} << 8) | be[3]);
        count *= a.dims.back();
    }
    if (count > (std::size_t{1} << 32)) throw DataError(file.string() + ": IDX dimensions are implausibly large");
    a.values.resize(count);
    read(a.values.data(), count, "data");
    std::uint8_t extra = 0;
    if (in.read(&extra, 1) != 0) throw DataError(file.string() + ": trailing bytes after the IDX data");
    return a;
}

/// Reads an image/label pair of IDX files (`train-images-idx3-ubyte.gz`, ...) as a dataset.
/// @throws DataError when a file is bad or the two files disagree
inline ImageDataset load_idx(const std::filesystem::path& images_file, const std::filesystem::path& labels_file,
                             std::string name, std::vector<std::string> class_names) {
    IdxArray images = read_idx(images_file);
    IdxArray labels = read_idx(labels_file);
    if (images.dims.size() != 3) throw DataError(images_file.string() + ": expected 3 dimensions (N × H × W)");
    if (labels.dims.size() != 1) throw DataError(labels_file.string() + ": expected 1 dimension (N)");
    if (images.dims[0] != labels.dims[0])
        throw DataError(images_file.string() + " has " + std::to_string(images.dims[0]) + " images but " +
                        labels_file.string() + " has " + std::to_string(labels.dims[0]) + " labels");
    ImageDataset d{std::move(name), 1, images.dims[1], images.dims[2], std::move(images.values), {}, std::move(class_names)};
    d.labels.reserve(labels.values.size());
    for (std::size_t i = 0; i < labels.values.size(); ++i) {
        if (labels.values[i] >= d.class_names.size())
            throw DataError(labels_file.string() + ": label " + std::to_string(labels.values[i]) + " at " +
                            std::to_string(i) + " is not a class index");
        d.labels.push_back(labels.values[i]);
    }
    return d;
}

/// Fashion-MNIST's training (60,000) or test (10,000) split from `dir`.
inline ImageDataset load_fashion_mnist(const std::filesystem::path& dir, bool train) {
    const std::string prefix = train ? "train" : "t10k";
    return load_idx(dir / (prefix + "-images-idx3-ubyte.gz"), dir / (prefix + "-labels-idx1-ubyte.gz"),
                    "fashion-mnist", fashion_mnist_classes);
}

}  // namespace ds::data
