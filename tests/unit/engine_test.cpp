// The single-rank engine: accumulation, clipping, skipping, scheduling and bookkeeping,
// each checked against an independent computation.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include <doctest/doctest.h>

#include <ds/data/synthetic.hpp>
#include <ds/comm/threads.hpp>
#include <ds/engine/flat_buffers.hpp>
#include <ds/engine/initialize.hpp>
#include <ds/optim/sgd.hpp>

#include "cifar10/net.hpp"
#include "common/heap_meter.hpp"

namespace {

using SmallNet = cifar10::Net<1, 16, 4>;
using AdamEngine = ds::Engine<SmallNet, ds::Adam<>>;
using SgdEngine = ds::Engine<SmallNet, ds::SGD<>>;

ds::Config adam_config(std::int64_t micro, std::int64_t gas) {
    return {.train_batch_size = micro * gas,
            .train_micro_batch_size_per_gpu = micro,
            .optimizer = {.type = ds::OptimizerType::Adam, .params = {.lr = 1e-2}},
            .seed = 5};
}

struct Data {
    std::vector<float> inputs;
    std::vector<std::int32_t> labels;
};

Data make_data(std::size_t n, std::uint64_t seed) {
    const auto d = ds::data::make_synthetic(n, 1, 16, 16, 4, seed);
    Data out{std::vector<float>(n * d.sample_size()), std::vector<std::int32_t>(n)};
    for (std::size_t i = 0; i < n; ++i) out.labels[i] = d.get(i, out.inputs.data() + i * d.sample_size());
    return out;
}

/// forward + loss + backward on samples [first, first + n) of `data`.
template <class E>
float micro_step(E& engine, const Data& data, std::size_t first, std::size_t n) {
    constexpr std::size_t in = E::input_size;
    const auto out = engine.forward({data.inputs.data() + first * in, n * in});
    const auto loss = ds::nn::CrossEntropyLoss{E::output_size}(out, {data.labels.data() + first, n});
    return engine.backward(loss);
}

std::vector<float> copy(std::span<const float> s) { return {s.begin(), s.end()}; }

/// What the process writes to its standard output (descriptor 1) while this lives.
class StdoutCapture {
public:
    StdoutCapture() : file_(std::tmpfile()), saved_(dup(1)) {
        if (!file_ || saved_ < 0) throw std::runtime_error("StdoutCapture: no temporary file or descriptor");
        std::fflush(stdout);
        dup2(fileno(file_), 1);
    }
    StdoutCapture(const StdoutCapture&) = delete;
    StdoutCapture& operator=(const StdoutCapture&) = delete;
    ~StdoutCapture() {
        restore();
        std::fclose(file_);
    }
    /// The lines written so far; stdout is restored.
    std::vector<std::string> lines() {
        restore();
        std::string text;
        std::rewind(file_);
        for (int c; (c = std::fgetc(file_)) != EOF;) text += static_cast<char>(c);
        std::vector<std::string> out;
        std::istringstream in(text);
        for (std::string line; std::getline(in, line);) out.push_back(line);
        return out;
    }

private:
    void restore() {
        if (saved_ < 0) return;
        std::fflush(stdout);
        dup2(saved_, 1);
        close(saved_);
        saved_ = -1;
    }
    std::FILE* file_;
    int saved_;
};

/// The number after " | name: " in a wall-clock line (NaN if the field is missing).
double field(const std::string& line, const std::string& name) {
    const auto at = line.find(" | " + name + ": ");
    return at == std::string::npos ? std::nan("") : std::stod(line.substr(at + name.size() + 5));
}

}  // namespace

TEST_SUITE("engine") {

TEST_CASE("gradient accumulation: 2 micro-batches of 4 equal one batch of 8") {
    const Data data = make_data(8, 1);
    AdamEngine whole(adam_config(8, 1));
    AdamEngine accumulated(adam_config(4, 2));
    REQUIRE(whole.full_parameters() == accumulated.full_parameters());  // same seed, same init

    micro_step(whole, data, 0, 8);
    whole.step();

    CHECK_FALSE(accumulated.is_gradient_accumulation_boundary());
    const float scaled = micro_step(accumulated, data, 0, 4);
    accumulated.step();
    CHECK(accumulated.global_steps() == 0);
    CHECK(accumulated.micro_steps() == 1);
    CHECK(accumulated.is_gradient_accumulation_boundary());
    micro_step(accumulated, data, 4, 4);
    accumulated.step();
    CHECK(accumulated.global_steps() == 1);
    CHECK(accumulated.micro_steps() == 2);
    CHECK(scaled > 0);

    const auto a = whole.full_parameters(), b = accumulated.full_parameters();
    for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(a[i] == doctest::Approx(b[i]).epsilon(1e-4).scale(1e-6));
    CHECK(whole.get_global_grad_norm() == doctest::Approx(accumulated.get_global_grad_norm()).epsilon(1e-4));
}

TEST_CASE("backward returns loss / GAS, and gradients are cleared at the boundary") {
    const Data data = make_data(4, 2);
    AdamEngine engine(adam_config(2, 2));
    const auto out = engine.forward({data.inputs.data(), 2 * AdamEngine::input_size});
    const auto loss = ds::nn::CrossEntropyLoss{4}(out, {data.labels.data(), 2});
    CHECK(engine.backward(loss) == doctest::Approx(loss.value / 2));
    engine.step();
    micro_step(engine, data, 2, 2);
    engine.step();
    for (float g : engine.gradients()) REQUIRE(g == 0.0f);
}

TEST_CASE("gradient clipping scales the whole gradient to the configured norm (SPEC §5.1)") {
    const Data data = make_data(8, 3);
    ds::Config cfg = adam_config(8, 1);
    cfg.optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 1.0}};  // Δp = −g exactly
    cfg.gradient_clipping = 1e-3;
    SgdEngine engine(cfg);
    const auto before = engine.full_parameters();
    micro_step(engine, data, 0, 8);
    const auto grads = copy(engine.gradients());
    engine.step();
    const double norm = engine.get_global_grad_norm();
    REQUIRE(norm > 1e-3);
    double expected_norm_sq = 0, grad_norm_sq = 0;
    const auto after = engine.full_parameters();
    const double coef = 1e-3 / (norm + 1e-6);
    for (std::size_t i = 0; i < before.size(); ++i) {
        grad_norm_sq += static_cast<double>(grads[i]) * grads[i];
        CHECK(after[i] == doctest::Approx(before[i] - grads[i] * coef).epsilon(1e-5).scale(1e-7));
        expected_norm_sq += (after[i] - before[i]) * static_cast<double>(after[i] - before[i]);
    }
    CHECK(norm == doctest::Approx(std::sqrt(grad_norm_sq)));
    CHECK(std::sqrt(expected_norm_sq) == doctest::Approx(1e-3).epsilon(1e-3));
}

TEST_CASE("a non-finite gradient skips exactly that step and changes nothing") {
    const Data data = make_data(8, 4);
    ds::Config cfg = adam_config(8, 1);
    cfg.scheduler = {.type = ds::SchedulerType::WarmupLR, .params = {.warmup_num_steps = 10}};
    AdamEngine engine(cfg);
    for (int i = 0; i < 3; ++i) {
        micro_step(engine, data, 0, 8);
        engine.step();
    }
    const auto params = engine.full_parameters();
    const auto m = copy(engine.optimizer().state(0)), v = copy(engine.optimizer().state(1));
    const double lr = engine.get_lr()[0];
    micro_step(engine, data, 0, 8);
    engine.gradients()[123] = std::numeric_limits<float>::infinity();
    engine.step();
    CHECK_FALSE(engine.was_step_applied());
    CHECK(engine.skipped_steps() == 1);
    CHECK(engine.global_steps() == 4);
    CHECK(engine.optimizer().step_count() == 3);  // Adam's count = applied steps
    CHECK(std::memcmp(params.data(), engine.full_parameters().data(), params.size() * 4) == 0);
    CHECK(copy(engine.optimizer().state(0)) == m);
    CHECK(copy(engine.optimizer().state(1)) == v);
    CHECK(engine.get_lr()[0] == lr);  // the schedule did not advance
    for (float g : engine.gradients()) REQUIRE(g == 0.0f);
    micro_step(engine, data, 0, 8);
    engine.step();
    CHECK(engine.was_step_applied());
    CHECK(engine.optimizer().step_count() == 4);
}

TEST_CASE("an Adam engine given \"AdamW\" decouples weight decay even with adam_w_mode false") {
    // DeepSpeed's effective mode is (type == "adamw") or adam_w_mode (test_adamw.py's table).
    const Data data = make_data(8, 11);
    auto trained = [&](ds::OptimizerType type, bool adam_w_mode) {
        ds::Config cfg = adam_config(8, 1);
        cfg.optimizer = {.type = type, .params = {.lr = 1e-2, .weight_decay = 0.5, .adam_w_mode = adam_w_mode}};
        AdamEngine engine(cfg);
        for (int i = 0; i < 3; ++i) {
            micro_step(engine, data, 0, 8);
            engine.step();
        }
        return engine.full_parameters();
    };
    const auto adamw_l2_asked = trained(ds::OptimizerType::AdamW, false);
    CHECK(adamw_l2_asked == trained(ds::OptimizerType::AdamW, true));
    CHECK(adamw_l2_asked == trained(ds::OptimizerType::Adam, true));
    CHECK(adamw_l2_asked != trained(ds::OptimizerType::Adam, false));  // the one L2 case
}

TEST_CASE("WallClockBreakdown: DeepSpeed's fields in ms, micro-steps summed into the cycle") {
    using clock = ds::WallClockBreakdown::clock;
    ds::WallClockBreakdown w;
    w.add(ds::TimedPhase::fwd, clock::now() - std::chrono::milliseconds(3));
    w.add(ds::TimedPhase::step, clock::now() - std::chrono::microseconds(500));
    const std::string first = w.micro_step_line();
    CHECK(first.starts_with("time (ms) | fwd_microstep: "));
    CHECK(field(first, "fwd_microstep") >= 3.0);
    CHECK(field(first, "fwd_microstep") < 1000.0);
    CHECK(field(first, "bwd_microstep") == 0.0);
    CHECK(field(first, "step_microstep") >= 0.5);
    w.add(ds::TimedPhase::fwd, clock::now() - std::chrono::milliseconds(2));
    const std::string second = w.micro_step_line();
    CHECK(field(second, "fwd_microstep") >= 2.0);
    CHECK(field(second, "fwd_microstep") < field(first, "fwd_microstep") + 1000.0);
    const std::string cycle = w.cycle_line();
    CHECK(cycle.find("_microstep") == std::string::npos);
    CHECK(field(cycle, "fwd") == doctest::Approx(field(first, "fwd_microstep") + field(second, "fwd_microstep")).epsilon(0.01));
    for (const char* name : {"bwd", "bwd_inner", "bwd_allreduce"}) CHECK(field(cycle, name) == 0.0);
    CHECK(field(w.cycle_line(), "fwd") == 0.0);  // a new cycle
}

TEST_CASE("wall_clock_breakdown: rank 0 logs each micro-step after step() and each cycle at its boundary") {
    const Data data = make_data(16, 9);
    for (const bool enabled : {false, true}) {
        CAPTURE(enabled);
        ds::Config cfg = adam_config(4, 2);
        cfg.wall_clock_breakdown = enabled;
        AdamEngine engine(cfg);
        StdoutCapture capture;
        for (std::size_t i = 0; i < 4; ++i) {
            micro_step(engine, data, 4 * i, 4);
            engine.step();
        }
        std::vector<std::string> micro, cycles;
        for (const auto& line : capture.lines()) {
            if (line.find("time (ms) | fwd_microstep: ") != std::string::npos) micro.push_back(line);
            if (line.find("time (ms) | fwd: ") != std::string::npos) cycles.push_back(line);
        }
        REQUIRE(micro.size() == (enabled ? 4u : 0u));
        REQUIRE(cycles.size() == (enabled ? 2u : 0u));
        // Times print to 0.01 ms, so a phase of a few µs may read 0.00: only the whole
        // backward is sure to show, and sums hold to the rounding.
        double backward = 0.0;
        for (const auto& line : micro) {
            CAPTURE(line);
            for (const char* name : {"fwd_microstep", "bwd_microstep", "bwd_inner_microstep",
                                     "bwd_allreduce_microstep", "step_microstep"})
                CHECK(field(line, name) >= 0.0);  // present (NaN if not) and not negative
            CHECK(field(line, "bwd_microstep") >= field(line, "bwd_inner_microstep") - 0.01);
            backward += field(line, "bwd_microstep");
        }
        if (enabled) CHECK(backward > 0.0);
        for (std::size_t c = 0; c < cycles.size(); ++c)  // each cycle is its two micro-steps
            for (const std::string name : {"fwd", "bwd", "bwd_inner", "bwd_allreduce", "step"}) {
                CAPTURE(name);
                const double sum = field(micro[2 * c], name + "_microstep") + field(micro[2 * c + 1], name + "_microstep");
                CHECK(std::abs(field(cycles[c], name) - sum) <= 0.02);
            }
    }
}

TEST_CASE("WarmupLR: the first two applied steps use lr 0 and leave the weights unchanged") {
    const Data data = make_data(8, 5);
    ds::Config cfg = adam_config(8, 1);
    cfg.optimizer.params.weight_decay = 0.1;
    cfg.scheduler = {.type = ds::SchedulerType::WarmupLR, .params = {.warmup_num_steps = 1000}};
    AdamEngine engine(cfg);
    const auto initial = engine.full_parameters();
    for (int i = 0; i < 2; ++i) {
        CHECK(engine.get_lr()[0] == 0.0);
        micro_step(engine, data, 0, 8);
        engine.step();
    }
    CHECK(engine.full_parameters() == initial);
    CHECK(engine.get_lr()[0] == doctest::Approx(1e-3 * std::log(2.0) / std::log(1000.0)));
    micro_step(engine, data, 0, 8);
    engine.step();
    CHECK(engine.full_parameters() != initial);
}

TEST_CASE("the engine refuses configs that break rules or contradict its policies") {
    ds::Config cfg = adam_config(8, 1);
    cfg.bf16.enabled = true;
    CHECK_THROWS_WITH_AS(AdamEngine{cfg}, "the config selects bf16 but the engine is built for fp32", ds::ConfigError);
    using ThreeRanks = ds::Engine<SmallNet, ds::Adam<>, ds::Zero<0>, ds::FP32, ds::Cpu, ds::comm::Threads>;
    CHECK_THROWS_WITH_AS(ThreeRanks(adam_config(8, 1), ds::comm::Threads::world(3)[0]),
                         "Gradient accumulation steps: 0 has to be greater than 0", ds::ConfigError);
    ds::Config lion = adam_config(8, 1);
    lion.optimizer.type = ds::OptimizerType::Lion;
    CHECK_THROWS_WITH_AS(AdamEngine{lion}, "optimizer.type is Lion but the engine is built for Adam", ds::ConfigError);
    AdamEngine engine(adam_config(4, 1));
    std::vector<float> too_many(5 * AdamEngine::input_size);
    CHECK_THROWS_AS(engine.forward(too_many), std::invalid_argument);
}

TEST_CASE("EngineFor, initialize, memory report and the API DeepSpeed users expect") {
    static constexpr ds::Config cfg{.train_batch_size = 16,
                                    .optimizer = {.type = ds::OptimizerType::AdamW, .params = {.lr = 3e-3}},
                                    .seed = 9};
    using E = ds::EngineFor<SmallNet, cfg>;
    static_assert(E::zero_optimization_stage() == 0 && !E::fp16_enabled() && !E::bfloat16_enabled());
    const auto data = ds::data::make_synthetic(64, 1, 16, 16, 4, 7);
    auto [engine, optimizer, loader, scheduler] = ds::initialize<E>(cfg, data);
    CHECK(loader->batch_size() == 16);
    CHECK(loader->size() == 4);
    CHECK(optimizer->hyper().lr == 3e-3);
    CHECK(scheduler->get_lr() == 3e-3);
    CHECK(engine->get_mom() == std::vector<std::vector<double>>{{0.9, 0.999}});
    const auto memory = engine->memory_report();
    CHECK(memory.parameters == 4 * SmallNet::param_count);
    CHECK(memory.gradients == 4 * SmallNet::param_count);
    CHECK(memory.optimizer_states == 8 * SmallNet::param_count);
    CHECK(memory.master_weights == 0);
    CHECK(engine->world_size() == 1);
    CHECK(engine->global_rank() == 0);
}

/// Builds an engine of type E, trains it two steps and checks its memory report against the
/// heap it holds then (what the replaced `operator new` counts; see common/heap_meter.hpp).
/// What the report leaves out: the 16 KiB that staggers each of Adam's state buffers in
/// their arena (`FlatBuffers`), and the engine's bookkeeping — its config, tensor tables,
/// scheduler, each block's malloc rounding: a few KiB, where any activation or work buffer
/// of this Net it forgot would be more.
template <class E>
void check_report_is_heap(const ds::Config& cfg) {
    const Data data = make_data(16, 3);
    const auto train = [&](E& engine) {
        for (int step = 0; step < 2; ++step) {
            micro_step(engine, data, 0, 8);
            engine.step();
        }
    };
    {
        E warm(cfg);  // the first engine also starts the thread pool and the process's statics
        train(warm);
    }
    const std::size_t before = heap_bytes_in_use();
    E engine(cfg);
    train(engine);
    const std::size_t held = heap_bytes_in_use() - before;
    const ds::MemoryReport report = engine.memory_report();
    INFO("report " << report.total() << " bytes (buffers " << report.buffers << "), heap held " << held);
    CHECK(report.total() <= held);
    const std::size_t stagger = 2 * ds::FlatBuffers::stagger_bytes;  // Adam's m and v
    CHECK(held - report.total() < stagger + 6 * 1024);
    CHECK(report.buffers > report.parameters);  // the activations and the convolutions' scratch
}

TEST_CASE("the memory report accounts for the heap the engine holds: fp32, and bf16 at ZeRO stage 1") {
    const ds::Config fp32 = adam_config(8, 1);
    check_report_is_heap<AdamEngine>(fp32);
    ds::Config bf16 = fp32;
    bf16.bf16.enabled = true;
    bf16.zero_optimization.stage = 1;
    check_report_is_heap<ds::Engine<SmallNet, ds::Adam<>, ds::Zero<1>, ds::BF16>>(bf16);
}

TEST_CASE("training on learnable synthetic data lowers the loss") {
    static constexpr ds::Config cfg{.train_batch_size = 16,
                                    .optimizer = {.type = ds::OptimizerType::Adam, .params = {.lr = 3e-3}},
                                    .seed = 1};
    using E = ds::EngineFor<SmallNet, cfg>;
    const auto data = ds::data::make_synthetic(512, 1, 16, 16, 4, 11);
    auto [engine, optimizer, loader, scheduler] = ds::initialize<E>(cfg, data);
    double first_epoch = 0, last_epoch = 0;
    for (std::uint64_t epoch = 0; epoch < 5; ++epoch) {
        double total = 0;
        loader->start_epoch(epoch);
        while (auto batch = loader->next()) {
            const auto out = engine->forward(batch->inputs);
            const auto loss = ds::nn::CrossEntropyLoss{4}(out, batch->labels);
            engine->backward(loss);
            engine->step();
            total += loss.value;
        }
        (epoch == 0 ? first_epoch : last_epoch) = total / loader->size();
    }
    CHECK(engine->global_steps() == 5 * 32);
    CHECK(engine->global_samples() == 5 * 32 * 16);
    CHECK(last_epoch < 0.5 * first_epoch);
}

}  // TEST_SUITE
