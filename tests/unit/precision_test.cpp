// Mixed precision: bulk conversions bit-exact with ds::bf16 / ds::half, and the engine's
// BF16 and FP16 policies (2-byte storage, fp32 master, loss scaling, skipped overflows).
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <doctest/doctest.h>

#include <ds/data/synthetic.hpp>
#include <ds/device/cpu/convert.hpp>
#include <ds/engine/engine.hpp>

#include "cifar10/net.hpp"

namespace {

/// Floats that exercise every rounding path: random bit patterns (NaNs with payloads,
/// infinities, subnormals), exact ties of both types and values near their overflow.
std::vector<float> awkward_floats() {
    std::vector<float> v;
    std::mt19937 rng(7);
    for (int i = 0; i < 1 << 20; ++i) v.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(rng())));
    for (std::uint32_t h = 0; h < 0x10000; ++h) {
        const std::uint32_t u = h << 16;
        v.push_back(std::bit_cast<float>(u | 0x8000u));  // a bf16 tie
        v.push_back(std::bit_cast<float>(u | 0x8001u));
        v.push_back(std::bit_cast<float>((h << 13) | 0x1000u));  // a half tie (for normal halves)
    }
    for (float f : {65504.0f, 65519.0f, 65520.0f, 3.4e38f, 1e-8f, 6e-8f, 3e-8f, -0.0f}) v.push_back(f);
    v.push_back(std::numeric_limits<float>::infinity());
    v.push_back(std::numeric_limits<float>::quiet_NaN());
    v.push_back(std::numeric_limits<float>::signaling_NaN());
    return v;
}

template <class T>
void check_conversions() {
    // Widening: all 65,536 patterns, bit for bit (NaN payloads included).
    std::vector<T> all(0x10000);
    for (std::uint32_t i = 0; i < 0x10000; ++i) all[i] = T::from_bits(static_cast<std::uint16_t>(i));
    std::vector<float> wide(all.size());
    ds::cpu::convert(all.data(), wide.data(), all.size());
    for (std::uint32_t i = 0; i < 0x10000; ++i)
        REQUIRE(std::bit_cast<std::uint32_t>(wide[i]) == std::bit_cast<std::uint32_t>(static_cast<float>(all[i])));
    // Narrowing: over a million awkward floats, at every alignment of the vector tail.
    const auto floats = awkward_floats();
    for (std::size_t offset : {0, 1, 7}) {
        const std::size_t n = floats.size() - offset;
        std::vector<T> narrow(n);
        ds::cpu::convert(floats.data() + offset, narrow.data(), n);
        for (std::size_t i = 0; i < n; ++i) {
            INFO("float bits " << std::hex << std::bit_cast<std::uint32_t>(floats[offset + i]));
            REQUIRE(narrow[i].bits == T(floats[offset + i]).bits);
        }
    }
}

using Net = cifar10::Net<1, 16, 4>;
constexpr std::size_t input = 256;

struct Data {
    std::vector<float> inputs;
    std::vector<std::int32_t> labels;
};
Data make_data(std::size_t n, std::uint64_t seed) {
    const auto d = ds::data::make_synthetic(n, 1, 16, 16, 4, seed);
    Data out{std::vector<float>(n * input), std::vector<std::int32_t>(n)};
    for (std::size_t i = 0; i < n; ++i) out.labels[i] = d.get(i, out.inputs.data() + i * input);
    return out;
}
template <class E>
float micro_step(E& engine, const Data& data) {
    const std::size_t n = data.labels.size();
    const auto out = engine.forward({data.inputs.data(), n * input});
    return engine.backward(ds::nn::CrossEntropyLoss{4}(out, data.labels));
}

template <class P>
ds::Config config(double lr = 1e-2) {
    ds::Config c{.train_batch_size = 8,
                 .optimizer = {.type = ds::OptimizerType::Adam, .params = {.lr = lr}},
                 .seed = 5};
    if constexpr (std::is_same_v<P, ds::BF16>) c.bf16.enabled = true;
    if constexpr (P::scales_loss) {
        c.fp16.enabled = true;
        c.fp16.initial_scale_power = 8;  // without dynamic keys the scale starts at 2^32 and skips its way down
    }
    return c;
}

template <class E>
std::vector<float> state(E& engine, std::size_t k) {
    const auto s = engine.optimizer().state(k);
    return {s.begin(), s.end()};
}

}  // namespace

TEST_SUITE("precision") {

TEST_CASE_TEMPLATE("bulk conversions are bit-identical to the scalar types", T, ds::bf16, ds::half) {
    check_conversions<T>();
}

TEST_CASE("a float gradient is rounded to the compute dtype, then added in the accumulation dtype") {
    const std::vector<float> g{1.0f + 1.0f / 512, 3.0f, -1e-3f};
    std::vector<float> acc{1.0f, 0.0f, 0.0f};
    ds::cpu::accumulate_rounded<ds::bf16>(g.data(), acc.data(), 3);
    CHECK(acc[0] == 2.0f);  // 1 + 2^-9 rounds to 1 in bf16 before the fp32 addition
    CHECK(acc[1] == 3.0f);
    CHECK(acc[2] == static_cast<float>(ds::bf16(-1e-3f)));
    std::vector<ds::half> h{ds::half(2048.0f)};
    const float one = 1.0f;
    ds::cpu::accumulate_rounded<ds::half>(&one, h.data(), 1);
    CHECK(static_cast<float>(h[0]) == 2048.0f);  // 2049 is a tie in fp16: rounds to even
}

TEST_CASE_TEMPLATE("BF16 and FP16 store 2-byte parameters and gradients beside fp32 master and states", P, ds::BF16,
                   ds::FP16<>) {
    using E = ds::Engine<Net, ds::Adam<>, ds::Zero<0>, P>;
    E engine(config<P>());
    const auto m = engine.memory_report();
    const std::size_t psi = Net::param_count;
    static_assert(sizeof(typename E::compute_type) == 2);
    CHECK(m.parameters == 2 * psi);
    CHECK(m.master_weights == 4 * psi);
    CHECK(m.optimizer_states == 8 * psi);
    // DeepSpeed accumulates bf16 gradients in fp32 without ZeRO (BF16_Optimizer), fp16 in fp16.
    CHECK(m.gradients == (std::is_same_v<P, ds::BF16> ? 4 : 2) * psi);
    using Stage1 = ds::Engine<Net, ds::Adam<>, ds::Zero<1>, P>;
    ds::Config c1 = config<P>();
    c1.zero_optimization.stage = 1;
    CHECK(Stage1(c1).memory_report().gradients == 2 * ds::FlatPartition(psi, 1).padded);
}

TEST_CASE_TEMPLATE("the model computes with the master weights rounded to the compute dtype", P, ds::BF16, ds::FP16<>) {
    using T = typename P::compute_type;
    const Data data = make_data(8, 1);
    ds::Engine<Net, ds::Adam<>, ds::Zero<0>, P> mixed(config<P>());
    ds::Engine<Net, ds::Adam<>> fp32(config<ds::FP32>());
    // Inputs and weights given as values the 2-byte type holds exactly: the fp32 model on
    // them differs from the mixed one only by the rounding of activations.
    auto weights = fp32.full_parameters();
    for (float& w : weights) w = static_cast<float>(T(w));
    mixed.set_full_parameters(weights);
    fp32.set_full_parameters(weights);
    Data rounded = data;
    for (float& x : rounded.inputs) x = static_cast<float>(T(x));
    for (int step = 0; step < 5; ++step) {
        const float a = micro_step(mixed, rounded), b = micro_step(fp32, rounded);
        INFO("step " << step);
        CHECK(a == doctest::Approx(b).epsilon(std::is_same_v<P, ds::BF16> ? 2e-2 : 2e-3));
        mixed.step();
        fp32.step();
    }
    // After steps the model's parameters are the master weights rounded to T.
    const auto master = mixed.full_parameters();
    auto loss_of = [&](auto& engine, std::span<const float> w) {
        engine.set_full_parameters(w);
        const auto out = engine.forward({rounded.inputs.data(), 8 * input});
        return ds::nn::CrossEntropyLoss{4}(out, rounded.labels).value;
    };
    std::vector<float> rounded_master(master.size());
    for (std::size_t i = 0; i < master.size(); ++i) rounded_master[i] = static_cast<float>(T(master[i]));
    const auto out = mixed.forward({rounded.inputs.data(), 8 * input});
    const float published = ds::nn::CrossEntropyLoss{4}(out, rounded.labels).value;
    CHECK(published == loss_of(mixed, rounded_master));
}

TEST_CASE("FP16: the loss is scaled before backward and the gradients unscaled in the step") {
    const Data data = make_data(8, 2);
    ds::Config cfg = config<ds::FP16<>>();
    cfg.fp16.initial_scale_power = 10;
    ds::Engine<Net, ds::SGD<>, ds::Zero<0>, ds::FP16<>> scaled([&] {
        ds::Config c = cfg;
        c.optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 1.0}};
        return c;
    }());
    CHECK(scaled.loss_scale() == 1024.0);
    ds::Engine<Net, ds::SGD<>> fp32([&] {
        ds::Config c = config<ds::FP32>();
        c.optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 1.0}};
        return c;
    }());
    auto weights = fp32.full_parameters();
    for (float& w : weights) w = static_cast<float>(ds::half(w));
    scaled.set_full_parameters(weights);
    fp32.set_full_parameters(weights);
    micro_step(scaled, data);
    micro_step(fp32, data);
    // The fp16 buffer holds S·g: compare with the fp32 gradient after unscaling.
    double dot = 0, norm_sq = 0;
    const auto g16 = scaled.gradients();
    const auto g32 = fp32.gradients();
    for (std::size_t i = 0; i < g32.size(); ++i) {
        const double a = static_cast<float>(g16[i]) / 1024.0, b = g32[i];
        dot += (a - b) * (a - b);
        norm_sq += b * b;
    }
    CHECK(std::sqrt(dot / norm_sq) < 5e-3);
    scaled.step();
    fp32.step();
    CHECK(scaled.get_global_grad_norm() == doctest::Approx(fp32.get_global_grad_norm()).epsilon(5e-3));
    // SGD with lr 1: Δw = −g, unscaled.
    const auto w16 = scaled.full_parameters(), w32 = fp32.full_parameters();
    double diff = 0, step_sq = 0;
    for (std::size_t i = 0; i < w32.size(); ++i) {
        diff += (w16[i] - w32[i]) * (w16[i] - w32[i]);
        step_sq += (w32[i] - weights[i]) * (w32[i] - weights[i]);
    }
    CHECK(std::sqrt(diff / step_sq) < 5e-3);
}

TEST_CASE("FP16: the engine's loss scale follows SPEC §12's golden ZeRO sequence") {
    ds::Config cfg = config<ds::FP16<>>();
    cfg.fp16.initial_scale_power = 15;
    cfg.fp16.loss_scale_window = 2;
    cfg.fp16.hysteresis = 2;
    ds::Engine<Net, ds::Adam<>, ds::Zero<0>, ds::FP16<>> engine(cfg);
    const Data data = make_data(8, 3);
    const bool overflow[] = {true, true, true, false, false, false, false, false, false};
    const double expected[] = {32768, 16384, 8192, 8192, 16384, 16384, 32768, 32768, 65536};
    int applied = 0;
    for (int i = 0; i < 9; ++i) {
        micro_step(engine, data);
        if (overflow[i]) engine.gradients()[77] = ds::half(std::numeric_limits<float>::infinity());
        const double norm_before = engine.get_global_grad_norm();
        engine.step();
        applied += !overflow[i];
        INFO("boundary step " << i + 1);
        CHECK(engine.was_step_applied() == !overflow[i]);
        // a skipped step keeps the last applied step's norm (0 before the first), as in DeepSpeed
        if (overflow[i]) CHECK(engine.get_global_grad_norm() == norm_before);
        else CHECK((std::isfinite(engine.get_global_grad_norm()) && engine.get_global_grad_norm() > 0));
        CHECK(engine.loss_scale() == expected[i]);
        CHECK(engine.optimizer().step_count() == applied);
    }
    CHECK(engine.skipped_steps() == 3);
    CHECK(engine.global_steps() == 9);
    const double last_norm = engine.get_global_grad_norm();  // an overflow after applied steps keeps it
    micro_step(engine, data);
    engine.gradients()[77] = ds::half(std::numeric_limits<float>::infinity());
    engine.step();
    CHECK_FALSE(engine.was_step_applied());
    CHECK(engine.get_global_grad_norm() == last_norm);
}

TEST_CASE("FP16: an overflow at the minimum scale is an error, as in DeepSpeed") {
    ds::Config cfg = config<ds::FP16<>>();
    cfg.fp16.initial_scale_power = 1;
    cfg.fp16.min_loss_scale = 1;
    cfg.fp16.hysteresis = 1;
    ds::Engine<Net, ds::Adam<>, ds::Zero<0>, ds::FP16<>> engine(cfg);
    const Data data = make_data(8, 3);
    auto overflowing_step = [&] {
        micro_step(engine, data);
        engine.gradients()[0] = ds::half(std::numeric_limits<float>::quiet_NaN());
        engine.step();
    };
    overflowing_step();  // 2 -> 1
    CHECK(engine.loss_scale() == 1.0);
    CHECK_THROWS_WITH(overflowing_step(), doctest::Contains("loss scale already at minimum"));
}

TEST_CASE_TEMPLATE("an injected inf skips exactly that step: weights and optimizer state bit-identical", P, ds::BF16,
                   ds::FP16<>) {
    ds::Config cfg = config<P>();
    cfg.gradient_clipping = 1.0;
    ds::Engine<Net, ds::Adam<>, ds::Zero<0>, P> engine(cfg);
    const Data data = make_data(8, 4);
    for (int i = 0; i < 3; ++i) {
        micro_step(engine, data);
        engine.step();
    }
    REQUIRE(engine.skipped_steps() == 0);
    const auto params = engine.full_parameters();
    const auto m = state(engine, 0), v = state(engine, 1);
    const double scale = engine.loss_scale();
    micro_step(engine, data);
    using G = typename decltype(engine.gradients())::value_type;
    engine.gradients()[4321] = G(std::numeric_limits<float>::infinity());
    engine.step();
    CHECK_FALSE(engine.was_step_applied());
    CHECK(engine.skipped_steps() == 1);
    CHECK(engine.global_steps() == 4);
    CHECK(engine.optimizer().step_count() == 3);
    CHECK(std::memcmp(params.data(), engine.full_parameters().data(), params.size() * sizeof(float)) == 0);
    CHECK(state(engine, 0) == m);
    CHECK(state(engine, 1) == v);
    if constexpr (P::scales_loss) {  // hysteresis 2 (the default once a dynamic key is given) absorbs it
        CHECK(engine.loss_scale() == scale);
        CHECK(engine.loss_scaler().hysteresis() == 1);
    }
    for (auto g : engine.gradients()) REQUIRE(static_cast<float>(g) == 0.0f);
    micro_step(engine, data);
    engine.step();
    CHECK(engine.was_step_applied());
}

}  // TEST_SUITE
