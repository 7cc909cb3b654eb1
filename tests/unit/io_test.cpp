// safetensors: files round-trip by PyTorch name, and bad or foreign files are refused
// with the reason, leaving the parameters untouched.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <ds/io/model_weights.hpp>
#include <ds/util/rng.hpp>

#include "cifar10/net.hpp"

namespace fs = std::filesystem;

namespace {
fs::path temp(const std::string& name) { return fs::temp_directory_path() / ("dspp_io_" + name); }

std::string error_of(auto&& f) {
    try {
        f();
    } catch (const ds::io::SafetensorsError& e) {
        return e.what();
    }
    return "";
}

std::vector<char> read_all(const fs::path& f) {
    std::ifstream in(f, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}
void write_all(const fs::path& f, const std::vector<char>& bytes) {
    std::ofstream(f, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
}  // namespace

TEST_SUITE("io") {

TEST_CASE("model weights round-trip through safetensors with PyTorch names and shapes") {
    using Net = cifar10::CifarNet;
    std::vector<float> params(Net::param_count), loaded(Net::param_count, 0.0f);
    ds::Rng rng(1);
    Net::init(params.data(), rng);
    const auto file = temp("roundtrip.safetensors");
    ds::io::save_weights<Net>(file, params);
    ds::io::load_weights<Net>(file, loaded);
    CHECK(loaded == params);

    // The layout safetensors readers expect: u64 header length, JSON header, 8-byte aligned data.
    const auto bytes = read_all(file);
    std::uint64_t length = 0;
    for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(bytes[i]);
    CHECK(length % 8 == 0);
    const auto header = nlohmann::json::parse(std::string(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(length)));
    CHECK(header["conv1.weight"]["dtype"] == "F32");
    CHECK(header["conv1.weight"]["shape"] == std::vector<int>{6, 3, 5, 5});
    CHECK(header["fc1.weight"]["shape"] == std::vector<int>{120, 400});
    CHECK(header["__metadata__"]["format"] == "pt");
    CHECK(bytes.size() == 8 + length + Net::param_count * 4);
    fs::remove(file);
}

TEST_CASE("weights stored as BF16 or F16 hold each value rounded to nearest even, and read back widened") {
    using Net = cifar10::Net<1, 16, 4>;
    std::vector<float> params(Net::param_count);
    ds::Rng rng(2);
    Net::init(params.data(), rng);
    params[0] = 1.0f + 1.0f / 256.0f;  // a bf16 tie: rounds to even (1.0)
    params[1] = 70000.0f;             // beyond fp16: rounds to inf
    for (const auto stored : {ds::io::StoredAs::BF16, ds::io::StoredAs::F16}) {
        const bool is_bf16 = stored == ds::io::StoredAs::BF16;
        INFO(ds::io::name_of(stored));
        const auto file = temp("narrow.safetensors");
        ds::io::save_weights<Net>(file, params, {}, stored);
        std::vector<float> loaded(Net::param_count, 0.0f);
        ds::io::load_weights<Net>(file, loaded);
        std::size_t differ = 0;
        for (std::size_t i = 0; i < params.size(); ++i) {
            const float expected = is_bf16 ? static_cast<float>(ds::bf16(params[i])) : static_cast<float>(ds::half(params[i]));
            differ += std::memcmp(&loaded[i], &expected, sizeof(float)) != 0;
        }
        CHECK(differ == 0);
        CHECK(loaded[0] == (is_bf16 ? 1.0f : params[0]));  // fp16 holds 1 + 2^-8 exactly
        CHECK(loaded[1] == (is_bf16 ? 70144.0f : INFINITY));
        const auto bytes = read_all(file);
        std::uint64_t length = 0;
        for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(bytes[i]);
        const auto header = nlohmann::json::parse(std::string(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(length)));
        CHECK(header["conv1.weight"]["dtype"] == (is_bf16 ? "BF16" : "F16"));
        CHECK(bytes.size() == 8 + length + Net::param_count * 2);
        CHECK(ds::io::load_safetensors(file).tensors.at("fc1.bias").stored_as == stored);
        fs::remove(file);
    }
}

TEST_CASE("a checkpoint from another model is refused, naming what does not fit") {
    std::vector<float> fashion(cifar10::FashionMnistNet::param_count, 1.0f);
    const auto file = temp("fashion.safetensors");
    ds::io::save_weights<cifar10::FashionMnistNet>(file, fashion);
    std::vector<float> cifar(cifar10::CifarNet::param_count, 7.0f);
    const auto e = error_of([&] { ds::io::load_weights<cifar10::CifarNet>(file, cifar); });
    CHECK(e.find("does not fit this model: conv1.weight has another shape") != std::string::npos);
    CHECK(e.find("fc1.weight has another shape") != std::string::npos);
    for (float v : cifar) REQUIRE(v == 7.0f);  // nothing was written
    fs::remove(file);
}

TEST_CASE("bad headers and out-of-range offsets are clear errors") {
    using Net = cifar10::Net<1, 16, 4>;
    std::vector<float> params(Net::param_count, 0.5f);
    const auto file = temp("bad.safetensors");
    ds::io::save_weights<Net>(file, params);
    const auto good = read_all(file);

    auto bytes = good;
    bytes[7] = 0x7f;  // absurd header length
    write_all(file, bytes);
    CHECK(error_of([&] { ds::io::load_safetensors(file); }).find("header length") != std::string::npos);

    bytes = good;
    bytes[8] = '[';  // not an object / malformed JSON
    write_all(file, bytes);
    CHECK(error_of([&] { ds::io::load_safetensors(file); }).find("malformed JSON header") != std::string::npos);

    bytes = good;
    bytes.resize(bytes.size() - 100);  // truncated data: offsets now point past the end
    write_all(file, bytes);
    CHECK(error_of([&] { ds::io::load_safetensors(file); }).find("data_offsets out of range") != std::string::npos);

    bytes = good;  // a dtype safetensors has but dspp does not read
    const std::string f32 = "\"F32\"", i32 = "\"I32\"";
    const auto at = std::search(bytes.begin(), bytes.end(), f32.begin(), f32.end());
    REQUIRE(at != bytes.end());
    std::copy(i32.begin(), i32.end(), at);
    write_all(file, bytes);
    CHECK(error_of([&] { ds::io::load_safetensors(file); }).find("dtype \"I32\", expected \"F32\", \"BF16\" or \"F16\"") !=
          std::string::npos);

    write_all(file, {'x', 'y'});
    CHECK(error_of([&] { ds::io::load_safetensors(file); }).find("too short") != std::string::npos);
    CHECK(error_of([&] { ds::io::load_safetensors(temp("missing.safetensors")); }).find("cannot open") != std::string::npos);
    fs::remove(file);
}

}  // TEST_SUITE
