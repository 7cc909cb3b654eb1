// Engine::save_checkpoint / load_checkpoint: a resumed engine continues bit for bit like
// the one that never stopped (every ZeRO stage on 2 ranks, mixed precision with its
// scaler, gradient accumulation, a warm-up schedule), even when it had gradients of its
// own; a checkpoint that does not fit is refused by name with the engine left as it was.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <unistd.h>
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/threads.hpp>
#include <ds/engine/engine.hpp>
#include <ds/io/model_weights.hpp>

#include "common/small_net.hpp"

namespace fs = std::filesystem;

namespace {

using small_net::Net, small_net::global_batch, small_net::input, small_net::train;
enum class Dtype { fp32, bf16, fp16 };

/// A fresh empty folder per call.
fs::path fresh_dir(const std::string& name) {
    static std::atomic<int> count{0};
    const auto dir = fs::temp_directory_path() /
                     ("dspp_checkpoint_" + name + "_" + std::to_string(::getpid()) + "_" + std::to_string(count++));
    fs::remove_all(dir);
    return dir;
}

/// Adam with a warm-up that is still climbing, clipping, 2 micro-steps per step; fp16's
/// scale doubles every 2 clean steps, so the scaler's state moves too.
ds::Config config(int stage, Dtype dtype = Dtype::fp32, std::int64_t seed = 3) {
    ds::Config c{.train_batch_size = static_cast<std::int64_t>(global_batch),
                 .gradient_accumulation_steps = 2,
                 .optimizer = {.type = ds::OptimizerType::Adam, .params = {.lr = 1e-2, .weight_decay = 0.01}},
                 .scheduler = {.type = ds::SchedulerType::WarmupLR,
                               .params = {.warmup_min_lr = 0.0, .warmup_max_lr = 1e-2, .warmup_num_steps = 20}},
                 .gradient_clipping = 0.5,
                 .seed = seed};
    c.zero_optimization.stage = stage;
    c.zero_optimization.stage3_param_persistence_threshold = 100;  // stage 3 gathers the weights, keeps biases
    c.bf16.enabled = dtype == Dtype::bf16;
    c.fp16.enabled = dtype == Dtype::fp16;
    if (dtype == Dtype::fp16) c.fp16.loss_scale_window = 2;
    return c;
}

template <int Stage, class P = ds::FP32, class Comm = ds::comm::Threads>
using AdamEngine = ds::Engine<Net, ds::Adam<>, ds::Zero<Stage>, P, ds::Cpu, Comm>;

/// Trains 3 steps, saves, trains 3 more; a second engine (other seed) loads the save and
/// trains the same 3: parameters, master weights, counters, lr and scale must be equal.
template <int Stage, class P>
void check_resume(Dtype dtype) {
    const auto data = small_net::make_batches(6, 5);
    const auto dir = fresh_dir("resume");
    ds::comm::run_ranks(2, [&](ds::comm::Threads& comm) {
        AdamEngine<Stage, P> original(config(Stage, dtype), comm);
        train(original, data, 0, 3);
        original.save_checkpoint(dir, {}, {{"epoch", 7}});
        train(original, data, 3, 3);

        AdamEngine<Stage, P> resumed(config(Stage, dtype, 99), comm);
        {  // half a cycle of its own first: the load must drop these gradients and realign the cycle
            const std::size_t at = static_cast<std::size_t>(comm.rank()) * 2;
            const auto out = resumed.forward({data.inputs.data() + at * input, 2 * input});
            resumed.backward(ds::nn::CrossEntropyLoss{4}(out, {data.labels.data() + at, 2}));
            resumed.step();
        }
        const auto loaded = resumed.load_checkpoint(dir);
        REQUIRE(loaded);
        CHECK(loaded->path == dir / "global_step3");
        CHECK(loaded->client_state.at("epoch") == 7);
        CHECK(resumed.global_steps() == 3);
        CHECK(resumed.micro_steps() == 6);
        train(resumed, data, 3, 3);

        INFO("stage " << Stage << ", rank " << comm.rank());
        CHECK(resumed.global_steps() == original.global_steps());
        CHECK(resumed.global_samples() == original.global_samples());
        CHECK(resumed.skipped_steps() == original.skipped_steps());
        CHECK(resumed.optimizer().step_count() == original.optimizer().step_count());
        CHECK(resumed.get_lr() == original.get_lr());
        CHECK(resumed.loss_scale() == original.loss_scale());
        const auto resumed_params = resumed.full_parameters();  // collective: one call at a time
        const auto original_params = original.full_parameters();
        CHECK(resumed_params == original_params);  // bit for bit
        // The compute-dtype copy the forward uses: the same logits on the same batch.
        std::vector<float> x(data.inputs.begin(), data.inputs.begin() + 2 * input);
        const auto a = original.forward(x);
        const std::vector<float> logits_a(a.begin(), a.end());
        const auto b = resumed.forward(x);
        CHECK(std::vector<float>(b.begin(), b.end()) == logits_a);
    });
    fs::remove_all(dir);
}

/// The whole model's fp32 values, to see that a refused load changed nothing.
template <class E>
std::vector<float> snapshot(E& engine) {
    return engine.full_parameters();
}

}  // namespace

TEST_SUITE("checkpoint") {
    TEST_CASE_TEMPLATE("a resumed fp32 engine continues bit for bit at every ZeRO stage on 2 ranks", S,
                       std::integral_constant<int, 0>, std::integral_constant<int, 1>,
                       std::integral_constant<int, 2>, std::integral_constant<int, 3>) {
        check_resume<S::value, ds::FP32>(Dtype::fp32);
    }

    TEST_CASE("a resumed bf16 engine (stage 2) and fp16 engine (stage 1, dynamic scale) continue bit for bit") {
        check_resume<2, ds::BF16>(Dtype::bf16);
        check_resume<1, ds::FP16<>>(Dtype::fp16);
    }

    TEST_CASE("stage 0 (every rank a replica) loads on another number of ranks, as DeepSpeed's does") {
        const auto data = small_net::make_batches(2, 5);
        const auto dir = fresh_dir("replicas");
        std::vector<float> saved_params, saved_moments;
        ds::comm::run_ranks(2, [&](ds::comm::Threads& comm) {
            AdamEngine<0> engine(config(0), comm);
            train(engine, data, 0, 2);
            engine.save_checkpoint(dir);
            const auto params = engine.full_parameters();
            if (comm.rank() == 0) {
                saved_params = params;
                saved_moments.assign(engine.optimizer().state(1).begin(), engine.optimizer().state(1).end());
            }
        });
        AdamEngine<0, ds::FP32, ds::comm::Single> one(config(0, Dtype::fp32, 99));
        REQUIRE(one.load_checkpoint(dir));
        CHECK(one.full_parameters() == saved_params);
        CHECK(std::vector<float>(one.optimizer().state(1).begin(), one.optimizer().state(1).end()) == saved_moments);
        CHECK(one.global_steps() == 2);
        CHECK(one.optimizer().step_count() == 2);

        // And back to 2 ranks: rank 1 reads rank 0's file.
        const auto dir_one = fresh_dir("replicas_one");
        one.save_checkpoint(dir_one);
        ds::comm::run_ranks(2, [&](ds::comm::Threads& comm) {
            AdamEngine<0> engine(config(0, Dtype::fp32, 7), comm);
            REQUIRE(engine.load_checkpoint(dir_one));
            const auto params = engine.full_parameters();
            CHECK(params == saved_params);
            CHECK(std::vector<float>(engine.optimizer().state(1).begin(), engine.optimizer().state(1).end()) ==
                  saved_moments);
        });
        fs::remove_all(dir);
        fs::remove_all(dir_one);
    }

    TEST_CASE("load_module_only / load_optimizer_states = false read the weights of another precision, stage and "
              "world size") {
        using ds::comm::Single;
        const auto data = small_net::make_batches(3, 5);
        const auto dir = fresh_dir("partial");
        std::vector<float> saved_params;
        std::vector<double> saved_lr;
        std::int64_t saved_samples = 0;
        ds::comm::run_ranks(2, [&](ds::comm::Threads& comm) {
            AdamEngine<2, ds::BF16> engine(config(2, Dtype::bf16), comm);
            train(engine, data, 0, 3);
            engine.save_checkpoint(dir);
            const auto params = engine.full_parameters();
            if (comm.rank() == 0) {
                saved_params = params;  // the fp32 master weights
                saved_lr = engine.get_lr();
                saved_samples = engine.global_samples();
            }
        });
        const auto zeros = [](std::span<const float> v) { return std::all_of(v.begin(), v.end(), [](float x) { return x == 0.0f; }); };

        // Everything: refused, this engine is fp32 on one rank.
        AdamEngine<0, ds::FP32, Single> module(config(0, Dtype::fp32, 99));
        const std::vector<double> initial_lr = module.get_lr();
        CHECK_THROWS_WITH_AS(module.load_checkpoint(dir), doctest::Contains("dtype"), ds::io::CheckpointError);
        // The weights alone: nothing else moves.
        REQUIRE(module.load_checkpoint(dir, {}, {.load_module_only = true}));
        CHECK(module.full_parameters() == saved_params);
        CHECK(module.global_steps() == 0);
        CHECK(module.micro_steps() == 0);
        CHECK(module.optimizer().step_count() == 0);
        CHECK(module.get_lr() == initial_lr);
        CHECK(zeros(module.optimizer().state(0)));
        train(module, data, 0, 3);  // and it trains from them (its warm-up's first two steps have lr 0)
        CHECK(module.global_steps() == 3);
        CHECK(module.full_parameters() != saved_params);

        // The weights, counters and schedule, with a fresh optimizer (fine-tuning on one rank).
        AdamEngine<1, ds::FP32, Single> fresh(config(1, Dtype::fp32, 99));
        REQUIRE(fresh.load_checkpoint(dir, {}, {.load_optimizer_states = false}));
        CHECK(fresh.full_parameters() == saved_params);
        CHECK(fresh.global_steps() == 3);
        CHECK(fresh.global_samples() == saved_samples);
        CHECK(fresh.micro_steps() == 6);
        CHECK(fresh.get_lr() == saved_lr);
        CHECK(fresh.optimizer().step_count() == 0);
        CHECK(zeros(fresh.optimizer().state(0)));
        CHECK(zeros(fresh.optimizer().state(1)));
        // ... and without the schedule's position.
        AdamEngine<1, ds::FP32, Single> unscheduled(config(1, Dtype::fp32, 99));
        REQUIRE(unscheduled.load_checkpoint(dir, {}, {.load_optimizer_states = false, .load_lr_scheduler_states = false}));
        CHECK(unscheduled.global_steps() == 3);
        CHECK(unscheduled.get_lr() == initial_lr);

        // The model itself must still fit.
        ds::Engine<cifar10::Net<1, 16, 6>, ds::Adam<>, ds::Zero<1>, ds::FP32> other(config(1));
        CHECK_THROWS_WITH_AS(other.load_checkpoint(dir, {}, {.load_module_only = true}), doctest::Contains("param_count"),
                             ds::io::CheckpointError);
        fs::remove_all(dir);
    }

    TEST_CASE("load_optimizer_states = false keeps the loader's moments, step count and loss scale; "
              "load_lr_scheduler_states = false its schedule") {
        const auto data = small_net::make_batches(3, 5);
        const auto dir = fresh_dir("keep");
        ds::comm::run_ranks(1, [&](ds::comm::Threads& comm) {
            using Engine = AdamEngine<1, ds::FP16<>>;
            const auto moments = [](Engine& e) {
                return std::vector<float>(e.optimizer().state(1).begin(), e.optimizer().state(1).end());
            };
            Engine saved(config(1, Dtype::fp16), comm);
            train(saved, data, 0, 3);
            saved.save_checkpoint(dir);

            Engine keeps(config(1, Dtype::fp16, 99), comm);  // trained a step of its own
            train(keeps, data, 0, 1);
            const auto own_moments = moments(keeps);
            const double own_scale = keeps.loss_scale();
            REQUIRE(own_moments != moments(saved));
            REQUIRE(own_scale != saved.loss_scale());
            REQUIRE(keeps.load_checkpoint(dir, {}, {.load_optimizer_states = false}));
            CHECK(keeps.full_parameters() == saved.full_parameters());
            CHECK(keeps.global_steps() == 3);
            CHECK(keeps.get_lr() == saved.get_lr());
            CHECK(moments(keeps) == own_moments);
            CHECK(keeps.optimizer().step_count() == 1);
            CHECK(keeps.loss_scale() == own_scale);

            Engine own_schedule(config(1, Dtype::fp16, 99), comm);
            train(own_schedule, data, 0, 1);
            const auto own_lr = own_schedule.get_lr();
            REQUIRE(own_lr != saved.get_lr());
            REQUIRE(own_schedule.load_checkpoint(dir, {}, {.load_lr_scheduler_states = false}));
            CHECK(own_schedule.get_lr() == own_lr);
            CHECK(own_schedule.global_steps() == 3);
            CHECK(moments(own_schedule) == moments(saved));
            CHECK(own_schedule.optimizer().step_count() == saved.optimizer().step_count());
            CHECK(own_schedule.loss_scale() == saved.loss_scale());
        });
        fs::remove_all(dir);
    }

    TEST_CASE("save_16bit_model writes the compute dtype's weights; stage 3 only when asked to gather them") {
        const auto data = small_net::make_batches(2, 5);
        const auto dir = fresh_dir("model16");
        const auto stored = [&](const std::string& file) {
            return ds::io::load_safetensors(dir / file).tensors.at("fc1.weight").stored_as;
        };
        ds::comm::run_ranks(2, [&](ds::comm::Threads& comm) {
            AdamEngine<2, ds::BF16> bf16(config(2, Dtype::bf16), comm);
            train(bf16, data, 0, 2);
            CHECK(bf16.save_16bit_model(dir, "bf16.safetensors"));
            const auto master = bf16.full_parameters();
            std::vector<float> weights(Net::param_count);
            ds::io::load_weights<Net>(dir / "bf16.safetensors", weights);  // every rank, after rank 0 wrote
            std::size_t differ = 0;  // the forward's copy: each master weight rounded to bf16
            for (std::size_t i = 0; i < weights.size(); ++i) differ += weights[i] != static_cast<float>(ds::bf16(master[i]));
            CHECK(differ == 0);
            CHECK(weights != master);
            CHECK(stored("bf16.safetensors") == ds::io::StoredAs::BF16);

            AdamEngine<1, ds::FP16<>> fp16(config(1, Dtype::fp16), comm);
            CHECK(fp16.save_16bit_model(dir, "fp16.safetensors"));
            CHECK(stored("fp16.safetensors") == ds::io::StoredAs::F16);

            ds::Config c = config(3);
            AdamEngine<3> not_gathered(c, comm);
            CHECK_FALSE(not_gathered.save_16bit_model(dir, "stage3.safetensors"));  // DeepSpeed's default
            CHECK_FALSE(fs::exists(dir / "stage3.safetensors"));
            c.zero_optimization.stage3_gather_16bit_weights_on_model_save = true;
            AdamEngine<3> gathered(c, comm);
            CHECK(gathered.save_16bit_model(dir, "stage3.safetensors"));
            const auto full = gathered.full_parameters();
            std::vector<float> fp32(Net::param_count);
            ds::io::load_weights<Net>(dir / "stage3.safetensors", fp32);
            CHECK(fp32 == full);  // fp32 engine: fp32 weights
            CHECK(stored("stage3.safetensors") == ds::io::StoredAs::F32);
        });
        fs::remove_all(dir);
    }

    TEST_CASE("DeepSpeed's layout: latest names global_step<N>; the model file opens as a PyTorch state_dict") {
        const auto data = small_net::make_batches(2, 5);
        const auto dir = fresh_dir("layout");
        AdamEngine<0, ds::FP32, ds::comm::Single> engine(config(0));
        train(engine, data, 0, 2);
        engine.save_checkpoint(dir);
        std::ifstream latest(dir / "latest");
        std::string tag;
        std::getline(latest, tag);
        CHECK(tag == "global_step2");
        CHECK(fs::exists(dir / tag / "zero_pp_rank_0_mp_rank_00_optim_states.safetensors"));
        const auto model_file = dir / tag / "mp_rank_00_model_states.safetensors";
        std::vector<float> weights(Net::param_count);
        ds::io::load_weights<Net>(model_file, weights);  // PyTorch names and shapes, nothing else
        CHECK(weights == engine.full_parameters());
        CHECK(ds::io::load_safetensors(model_file).metadata.at("format") == "pt");

        engine.save_checkpoint(dir, "mine", {}, false);  // save_latest = false keeps the old tag
        std::ifstream again(dir / "latest");
        std::getline(again, tag);
        CHECK(tag == "global_step2");
        fs::remove_all(dir);
    }

    TEST_CASE("a checkpoint that does not fit is refused by name, and the engine is unchanged") {
        using ds::comm::Single;
        const auto data = small_net::make_batches(2, 5);
        const auto dir = fresh_dir("refuse");
        {
            AdamEngine<1, ds::FP32, Single> saved(config(1));
            train(saved, data, 0, 1);
            saved.save_checkpoint(dir, "stage1");
        }
        const auto expect_refused = [&](auto& engine, const std::string& tag, const std::string& words) {
            const auto before = snapshot(engine);
            const auto steps = engine.global_steps();
            std::string message;
            try {
                engine.load_checkpoint(dir, tag);
            } catch (const std::exception& e) {
                message = e.what();
            }
            INFO(message);
            CHECK(message.find(words) != std::string::npos);
            CHECK(snapshot(engine) == before);
            CHECK(engine.global_steps() == steps);
        };
        SUBCASE("another ZeRO stage") {
            AdamEngine<2, ds::FP32, Single> engine(config(2));
            expect_refused(engine, "stage1", "zero_stage = 1, this engine has 2");
        }
        SUBCASE("another precision") {
            AdamEngine<1, ds::BF16, Single> engine(config(1, Dtype::bf16));
            expect_refused(engine, "stage1", "dtype = \"fp32\", this engine has \"bf16\"");
        }
        SUBCASE("another model") {
            ds::Config c = config(1);
            ds::Engine<cifar10::Net<1, 16, 6>, ds::Adam<>, ds::Zero<1>, ds::FP32> engine(c);
            expect_refused(engine, "stage1", "param_count");
        }
        SUBCASE("another world size") {
            ds::comm::run_ranks(2, [&](ds::comm::Threads& comm) {
                AdamEngine<1> engine(config(1), comm);
                expect_refused(engine, "stage1", "world_size = 1, this engine has 2");
            });
        }
        SUBCASE("a truncated optimizer file") {
            const auto file = dir / "stage1" / "zero_pp_rank_0_mp_rank_00_optim_states.safetensors";
            fs::resize_file(file, fs::file_size(file) / 2);
            AdamEngine<1, ds::FP32, Single> engine(config(1));
            expect_refused(engine, "stage1", "zero_pp_rank_0_mp_rank_00_optim_states.safetensors");
        }
        SUBCASE("files of two saves under one tag (a save that failed part-way)") {
            const auto optim = dir / "stage1" / "zero_pp_rank_0_mp_rank_00_optim_states.safetensors";
            fs::copy_file(optim, dir / "older");
            {
                AdamEngine<1, ds::FP32, Single> again(config(1));
                train(again, data, 0, 2);
                again.save_checkpoint(dir, "stage1");
            }
            fs::copy_file(dir / "older", optim, fs::copy_options::overwrite_existing);
            AdamEngine<1, ds::FP32, Single> engine(config(1));
            expect_refused(engine, "stage1", "from another save than");
        }
        SUBCASE("a tag that was never saved") {
            AdamEngine<1, ds::FP32, Single> engine(config(1));
            expect_refused(engine, "global_step9", "global_step9/mp_rank_00_model_states.safetensors: cannot open");
        }
        SUBCASE("no latest file: nothing is loaded, as DeepSpeed") {
            AdamEngine<1, ds::FP32, Single> engine(config(1));
            const auto before = snapshot(engine);
            CHECK_FALSE(engine.load_checkpoint(fresh_dir("empty")));
            CHECK(snapshot(engine) == before);
        }
        fs::remove_all(dir);
    }

    TEST_CASE("one rank's missing file fails every rank's load, none waits; mid-cycle saves are refused") {
        const auto data = small_net::make_batches(2, 5);
        const auto dir = fresh_dir("ranks");
        ds::comm::run_ranks(2, [&](ds::comm::Threads& comm) {
            AdamEngine<2> engine(config(2), comm);
            train(engine, data, 0, 1);
            engine.save_checkpoint(dir, "both");
            comm.barrier();
            if (comm.rank() == 1) fs::remove(dir / "both" / "zero_pp_rank_1_mp_rank_00_optim_states.safetensors");
            comm.barrier();
            std::string message;
            try {
                engine.load_checkpoint(dir, "both");
            } catch (const std::exception& e) {
                message = e.what();
            }
            INFO("rank " << comm.rank() << ": " << message);
            CHECK(message.find(comm.rank() == 1 ? "zero_pp_rank_1_mp_rank_00_optim_states.safetensors: cannot open"
                                                : "another rank failed") != std::string::npos);

            // One micro-step of two: the partial gradients would be lost.
            const auto out = engine.forward({data.inputs.data(), 2 * input});
            engine.backward(ds::nn::CrossEntropyLoss{4}(out, {data.labels.data(), 2}));
            engine.step();
            CHECK_THROWS_WITH_AS(engine.save_checkpoint(dir), doctest::Contains("inside a gradient accumulation cycle"),
                                 std::logic_error);
        });
        fs::remove_all(dir);
    }
}
