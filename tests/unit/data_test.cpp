// Data: CIFAR-10 and IDX readers (good, missing, truncated, malformed files), the
// distributed sampler's sharding, and the background loader.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <zlib.h>

#include <ds/data/cifar10.hpp>
#include <ds/data/data_loader.hpp>
#include <ds/data/distributed_sampler.hpp>
#include <ds/data/idx.hpp>
#include <ds/data/synthetic.hpp>

namespace fs = std::filesystem;
using namespace ds::data;

namespace {

fs::path scratch_dir(const std::string& name) {
    const auto dir = fs::temp_directory_path() / ("dspp_data_test_" + name);
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

std::string error_of(auto&& f) {
    try {
        f();
    } catch (const DataError& e) {
        return e.what();
    }
    return "";
}

void write_gz(const fs::path& file, const std::vector<std::uint8_t>& bytes) {
    gzFile out = gzopen(file.c_str(), "wb");
    gzwrite(out, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(out);
}

std::vector<std::uint8_t> idx_header(std::uint8_t dims, std::initializer_list<std::uint32_t> sizes) {
    std::vector<std::uint8_t> h{0, 0, 0x08, dims};
    for (auto s : sizes)
        for (int shift : {24, 16, 8, 0}) h.push_back(static_cast<std::uint8_t>(s >> shift));
    return h;
}

}  // namespace

TEST_SUITE("data") {

TEST_CASE("CIFAR-10 test batch: records, labels, planes, normalisation") {
    const auto dir = scratch_dir("cifar");
    std::vector<char> bytes(10000 * 3073);
    for (std::size_t r = 0; r < 10000; ++r) {
        bytes[r * 3073] = static_cast<char>(r % 10);
        bytes[r * 3073 + 1] = static_cast<char>(255);              // R plane, first pixel
        bytes[r * 3073 + 1 + 1024] = static_cast<char>(r % 256);   // G plane, first pixel
    }
    std::ofstream(dir / "test_batch.bin", std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    const auto d = load_cifar10(dir, false);
    REQUIRE(d.size() == 10000);
    CHECK(d.class_names[3] == "cat");
    std::vector<float> sample(d.sample_size());
    CHECK(d.get(1234, sample.data()) == 4);
    CHECK(sample[0] == 1.0f);                                 // 255 → (1 − 0.5) / 0.5
    CHECK(sample[1024] == doctest::Approx(1234 % 256 / 127.5 - 1.0));
    CHECK(sample[1] == -1.0f);                                // 0 → −1

    std::ofstream(dir / "data_batch_1.bin", std::ios::binary).write(bytes.data(), 5000);
    CHECK(error_of([&] { load_cifar10(dir, true); }).find("data_batch_1.bin: expected 30730000 bytes") != std::string::npos);
    bytes[3073 * 7] = 10;
    std::ofstream(dir / "test_batch.bin", std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    CHECK(error_of([&] { load_cifar10(dir, false); }).find("record 7 has label 10") != std::string::npos);
    CHECK(error_of([&] { load_cifar10(dir / "nowhere", false); }).find("cannot open") != std::string::npos);
    CHECK(has_cifar10(dir));
    CHECK_FALSE(has_cifar10(dir / "nowhere"));
    fs::remove_all(dir);
}

TEST_CASE("IDX images and labels, gzip or plain, and what makes them unusable") {
    const auto dir = scratch_dir("idx");
    auto images = idx_header(3, {3, 2, 2});
    for (std::uint8_t v = 0; v < 12; ++v) images.push_back(v * 20);
    auto labels = idx_header(1, {3});
    labels.insert(labels.end(), {7, 0, 9});
    write_gz(dir / "img.gz", images);
    std::ofstream(dir / "lbl", std::ios::binary).write(reinterpret_cast<const char*>(labels.data()), static_cast<std::streamsize>(labels.size()));
    const auto d = load_idx(dir / "img.gz", dir / "lbl", "fashion-mnist", fashion_mnist_classes);
    REQUIRE(d.size() == 3);
    CHECK(d.channels == 1);
    CHECK(d.height == 2);
    CHECK(d.width == 2);
    std::vector<float> sample(4);
    CHECK(d.get(2, sample.data()) == 9);
    CHECK(sample[3] == doctest::Approx(220 / 127.5 - 1.0));

    auto truncated = images;
    truncated.resize(truncated.size() - 3);
    write_gz(dir / "short.gz", truncated);
    CHECK(error_of([&] { read_idx(dir / "short.gz"); }).find("short.gz: truncated data (read 9 of 12 bytes)") != std::string::npos);
    auto bad_magic = images;
    bad_magic[0] = 1;
    write_gz(dir / "magic.gz", bad_magic);
    CHECK(error_of([&] { read_idx(dir / "magic.gz"); }).find("not an IDX file") != std::string::npos);
    auto floats = images;
    floats[2] = 0x0d;
    write_gz(dir / "floats.gz", floats);
    CHECK(error_of([&] { read_idx(dir / "floats.gz"); }).find("not unsigned byte") != std::string::npos);
    auto two_labels = idx_header(1, {2});
    two_labels.insert(two_labels.end(), {1, 2});
    write_gz(dir / "two.gz", two_labels);
    CHECK(error_of([&] { load_idx(dir / "img.gz", dir / "two.gz", "x", fashion_mnist_classes); })
              .find("has 3 images but") != std::string::npos);
    CHECK(error_of([&] { read_idx(dir / "missing.gz"); }).find("missing.gz: cannot open") != std::string::npos);
    fs::remove_all(dir);
}

TEST_CASE("Debian's Fashion-MNIST loads when installed") {
    if (!fs::exists(debian_fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")) {
        MESSAGE("skipped: dataset-fashion-mnist is not installed");
        return;
    }
    const auto test = load_fashion_mnist(debian_fashion_mnist_dir, false);
    CHECK(test.size() == 10000);
    CHECK(test.height == 28);
    std::vector<int> counts(10);
    for (auto l : test.labels) ++counts[l];
    for (int c : counts) CHECK(c == 1000);  // the test split is balanced
}

TEST_CASE("DistributedSampler: shards cover the data, pad from the start, reshuffle per epoch") {
    const std::size_t n = 10, world = 4;
    std::multiset<std::size_t> seen;
    for (std::size_t r = 0; r < world; ++r) {
        const auto mine = DistributedSampler(n, world, r, false).indices(0);
        CHECK(mine.size() == 3);
        CHECK(mine[0] == r);  // file order, strided
        seen.insert(mine.begin(), mine.end());
    }
    CHECK(seen.size() == 12);
    CHECK(seen.count(0) == 2);  // padding repeats indices 0 and 1
    CHECK(seen.count(1) == 2);
    for (std::size_t i = 2; i < n; ++i) CHECK(seen.count(i) == 1);

    const DistributedSampler shuffled(1000, 1, 0, true, 42);
    const auto e0 = shuffled.indices(0), e1 = shuffled.indices(1);
    CHECK(e0 != e1);
    CHECK(e0 == DistributedSampler(1000, 1, 0, true, 42).indices(0));
    auto sorted = e0;
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t i = 0; i < 1000; ++i) CHECK(sorted[i] == i);
    CHECK_THROWS_AS(DistributedSampler(10, 2, 2), std::invalid_argument);
}

TEST_CASE("DataLoader yields the sampler's order in batches, across epochs, with drop_last") {
    const auto d = make_synthetic(50, 1, 4, 4, 10, 3);
    const DistributedSampler sampler(d.size(), 1, 0, true, 5);
    for (bool drop_last : {false, true}) {
        DataLoader loader(d, sampler, 16, drop_last);
        CHECK(loader.size() == (drop_last ? 3u : 4u));
        for (std::uint64_t epoch : {0u, 1u}) {
            const auto order = sampler.indices(epoch);
            loader.start_epoch(epoch);
            std::size_t seen = 0, batches = 0;
            std::vector<float> expected(d.sample_size());
            while (auto batch = loader.next()) {
                ++batches;
                for (std::size_t i = 0; i < batch->size; ++i, ++seen) {
                    CHECK(batch->labels[i] == d.get(order[seen], expected.data()));
                    CHECK(std::equal(expected.begin(), expected.end(), batch->inputs.begin() + i * d.sample_size()));
                }
            }
            CHECK(batches == loader.size());
            CHECK(seen == (drop_last ? 48u : 50u));
        }
    }
    DataLoader abandoned(d, sampler, 4);
    abandoned.start_epoch(0);
    CHECK(abandoned.next().has_value());  // destroyed mid-epoch: must not hang
}

}  // TEST_SUITE
