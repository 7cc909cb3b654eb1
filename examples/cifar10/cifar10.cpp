// cifar10: the port of DeepSpeedExamples' training/cifar/cifar10_deepspeed.py.
//
// Trains the tutorial's LeNet-style Net with Adam, WarmupLR and gradient clipping, then
// reports test accuracy overall and per class. One binary per policy combination:
// cifar10_<dtype>_zero<stage> and cifar10_moe_<dtype>_zero<stage> (CMake builds them;
// run_ds.sh picks one from --dtype/--stage), and cifar10[_moe]_<dtype>_zero<stage>_cuda on the GPU.
// Each binary is a one-line main (cifar10_main.cpp) into a translation unit that holds
// several configurations: this file compiled once for the dense Net's twelve, once per
// dtype for the --moe Net's three stages (CIFAR10_MOE, CIFAR10_UNIT_DTYPE), and by nvcc for
// the GPU's (cifar10_cuda.cu: the dense twelve in one unit, the --moe Net's per dtype). Shared code is then compiled once per unit rather
// than once per binary: the build's largest saving.
//
//   build/bin/cifar10_fp32_zero0 --dataset fashion-mnist --epochs 2
//   build/bin/cifar10_fp32_zero2_cuda --dataset fashion-mnist --epochs 2
//
// Data: CIFAR-10's binary batches in --data-dir if present, else Fashion-MNIST from
// Debian's dataset-fashion-mnist (the Net adapts to 1×28×28 at compile time).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>

#ifndef CIFAR10_CUDA
#define CIFAR10_CUDA 0
#endif
#if !CIFAR10_CUDA
#include <cblas.h>
#endif
#include <nlohmann/json.hpp>

#include <ds/comm/distributed.hpp>
#include <ds/comm/single.hpp>
#include <ds/config/json.hpp>
#include <ds/data/cifar10.hpp>
#include <ds/data/idx.hpp>
#include <ds/data/synthetic.hpp>
#include <ds/device/cpu/threads.hpp>
#include <ds/engine/initialize.hpp>
#include <ds/io/model_weights.hpp>
#include <ds/nn/cross_entropy.hpp>

#include "cifar10/args.hpp"
#include "cifar10/ds_config.hpp"
#include "cifar10/net.hpp"

#if DSPP_HAVE_MPI
#include <ds/comm/mpi.hpp>
using World = ds::comm::Mpi;  // ranks launched with mpirun (run_ds.sh -n N)
#else
using World = ds::comm::Single;
#endif

// The engine's communicator: the world itself on the CPU; on the GPU one over device
// buffers — NCCL between the GPUs, else MPI staged through the host (which also lets
// several ranks share one GPU), else a world of one.
#if CIFAR10_CUDA
#include <ds/device/cuda/engine.cuh>
using Device = ds::Cuda;
#if DSPP_HAVE_MPI && DSPP_HAVE_NCCL
#include <ds/comm/nccl.hpp>
using Comm = ds::comm::Nccl;
Comm engine_communicator(World& world) {
    int devices = 0;
    DS_CUDA_CHECK(cudaGetDeviceCount(&devices));
    DS_CUDA_CHECK(cudaSetDevice(ds::comm::init_distributed().local_rank % devices));  // NCCL binds this device
    return ds::comm::Nccl::over(world);
}
#elif DSPP_HAVE_MPI
#include <ds/comm/cuda_mpi.hpp>
using Comm = ds::comm::CudaMpi;
Comm engine_communicator(World& world) { return Comm(world.split(0, world.rank())); }
#else
using Comm = ds::comm::CudaSingle;
Comm engine_communicator(World&) { return {}; }
#endif
#else
using Device = ds::Cpu;
using Comm = World;
Comm engine_communicator(World& world) { return std::move(world); }
#endif

namespace {

/// Whether this process prints: rank 0 only, as the Python example's `local_rank == 0`.
bool leader = true;

enum class Dtype { fp32, bf16, fp16 };
constexpr std::string_view dtype_names[] = {"fp32", "bf16", "fp16"};

/// What one binary is: its precision, ZeRO stage and Net (dense or --moe), and so the
/// example's ds_config with that precision and stage, and the policies it asks for.
template <Dtype D, int Stage, bool Moe>
struct Binary {
    static constexpr std::string_view dtype = dtype_names[static_cast<int>(D)];
    static constexpr int stage = Stage;
    static constexpr bool moe = Moe;
    static constexpr ds::Config config = [] {
        ds::Config c = cifar10::ds_config;
        c.zero_optimization.stage = Stage;
        c.bf16.enabled = D == Dtype::bf16;
        c.fp16.enabled = D == Dtype::fp16;
        return c;
    }();
    static_assert(ds::static_check<config, 1>());
    using policies = ds::PoliciesFor<config>;
};

std::string binary_name(std::string_view dtype, int stage, bool moe) {
    return std::string(moe ? "cifar10_moe_" : "cifar10_") + std::string(dtype) + "_zero" + std::to_string(stage) +
           (CIFAR10_CUDA ? "_cuda" : "");
}

/// The config this run uses: the binary's own, or --deepspeed_config's numbers when they
/// ask for the same policies (otherwise the error names the binary that matches).
template <class B>
ds::Config resolve_config(const cifar10::Args& args) {
    using Policies = typename B::policies;
    const auto binary_dtype = B::dtype;
    const int binary_stage = B::stage;
    const bool binary_moe = B::moe;
    const std::string self = binary_name(binary_dtype, binary_stage, binary_moe);
    const std::string other = binary_name(args.dtype.empty() ? binary_dtype : args.dtype,
                                          args.stage.value_or(binary_stage), !binary_moe);
    if (args.moe && !binary_moe && args.stage.value_or(binary_stage) == 3)  // no cifar10_moe_*_zero3 to name
        throw std::invalid_argument("--moe: MoE does not run with ZeRO stage 3 (DeepSpeed: \"MoE not supported with "
                                    "Stage 3\"); the --moe binaries are cifar10_moe_" +
                                    std::string(args.dtype.empty() ? binary_dtype : args.dtype) +
                                    "_zero{0,1,2} (examples/cifar10/run_ds_moe.sh)");
    if (args.moe && !binary_moe)
        throw std::invalid_argument("--moe: this binary is " + self + " (the dense Net); run " + other +
                                    " (examples/cifar10/run_ds_moe.sh)");
    if (!args.moe && binary_moe)
        throw std::invalid_argument("this binary is " + self + " (the --moe Net): pass --moe, or run " + other +
                                    " for the dense Net");
    if (!args.dtype.empty() && args.dtype != binary_dtype)
        throw std::invalid_argument("--dtype " + args.dtype + ": this binary is " + self + "; run " +
                                    binary_name(args.dtype, args.stage.value_or(binary_stage), binary_moe) +
                                    " (examples/cifar10/run_ds.sh picks it)");
    if (args.stage && *args.stage != binary_stage)
        throw std::invalid_argument("--stage " + std::to_string(*args.stage) + ": this binary is " + self + "; run " +
                                    binary_name(args.dtype.empty() ? binary_dtype : args.dtype, *args.stage,
                                                binary_moe));
    ds::Config cfg = B::config;
    if (!args.deepspeed_config.empty()) {
        const auto loaded = ds::load_config(args.deepspeed_config, 1);
        for (const auto& w : loaded.warnings) std::cerr << "warning: " << w << "\n";
        cfg = loaded.config;
        if (auto rule = ds::check_agrees<Policies>(cfg); !rule) {
            const std::string wanted =
                binary_name(ds::detail::config_dtype(cfg), cfg.zero_optimization.stage, binary_moe);
            throw std::invalid_argument(args.deepspeed_config + ": " + std::string(rule.what()) + ". This binary is " +
                                        self + (wanted != self ? "; run " + wanted + " for this config" : ""));
        }
    }
    if (args.seed) cfg.seed = *args.seed;
    return cfg;
}

struct Splits {
    ds::data::ImageDataset train, test;
};

Splits load_data(const cifar10::Args& args) {
    std::string which = args.dataset;
    if (which.empty()) {
        which = ds::data::has_cifar10(args.data_dir) ? "cifar10" : "fashion-mnist";
        if (which == "fashion-mnist")
            if (leader) std::cout << "CIFAR-10 not found in " << args.data_dir << "; using Fashion-MNIST from "
                      << ds::data::debian_fashion_mnist_dir.string() << "\n";
    }
    if (which == "cifar10") return {ds::data::load_cifar10(args.data_dir, true), ds::data::load_cifar10(args.data_dir, false)};
    if (which == "fashion-mnist") {
        const auto dir = args.data_dir_given ? std::filesystem::path(args.data_dir) : ds::data::debian_fashion_mnist_dir;
        return {ds::data::load_fashion_mnist(dir, true), ds::data::load_fashion_mnist(dir, false)};
    }
    return {ds::data::make_synthetic(50000, 3, 32, 32, 10, 1), ds::data::make_synthetic(10000, 3, 32, 32, 10, 2)};
}

/// `[epoch, step] loss: x.xxx`, formatted as the Python example's f-string prints it.
void print_loss(int epoch, std::size_t step, double mean) {
    if (!leader) return;
    std::printf("[%2d, %5zu] loss: % .3f\n", epoch, step, mean);
    std::fflush(stdout);
}

template <class B, class Net>
int train_and_test(const cifar10::Args& args, const ds::Config& cfg, const Splits& data, Comm comm) {
    using Policies = typename B::policies;
    using Engine = ds::Engine<Net, typename Policies::optimizer_policy, typename Policies::zero_policy,
                              typename Policies::precision_policy, Device, Comm>;
    constexpr std::size_t classes = Net::output_shape::size;
    auto [engine, optimizer, trainloader, scheduler] =
        ds::initialize<Engine>(cfg, data.train, {.shuffle = !args.no_shuffle}, std::move(comm));
    if constexpr (Net::contains_moe) {
        // DeepSpeed's MoE defaults (capacity factor 1, eval 1, tokens dropped, random token
        // selection) with the example's flags.
        const ds::nn::NoisyGate noise = args.noisy_gate_policy == "Jitter"    ? ds::nn::NoisyGate::jitter
                                        : args.noisy_gate_policy == "RSample" ? ds::nn::NoisyGate::rsample
                                                                              : ds::nn::NoisyGate::none;
        engine->configure_moe(ds::nn::MoESettings{.k = args.top_k,
                                                  .min_capacity = args.min_capacity,
                                                  .noisy_gate_policy = noise,
                                                  .seed = static_cast<std::uint64_t>(cfg.seed)});
    }
    if (!args.init_weights.empty()) {
        std::vector<float> weights(Engine::full_model_type::param_count);  // with every expert
        ds::io::load_weights<typename Engine::full_model_type>(args.init_weights, weights);
        engine->set_full_parameters(weights);
    }
    if (leader)
        std::cout << "dspp engine: " << ds::name_of(Policies::optimizer_policy::type) << ", ZeRO stage "
                  << Engine::zero_optimization_stage() << ", " << Policies::precision_policy::name << ", "
                  << Device::name << ", " << engine->world_size() << " rank(s); "
                  << Engine::full_model_type::param_count << " parameters";
    if (leader && Engine::expert_parallel_size > 1)
        std::cout << " (" << Net::param_count << " per rank: the experts split over " << Engine::expert_parallel_size
                  << " ranks)";
    if (leader)
        std::cout << "; micro batch " << engine->train_micro_batch_size_per_gpu()
                  << ", gradient accumulation " << engine->gradient_accumulation_steps() << "; "
                  << data.train.size() << " training images\n";
    const ds::comm::CommCounters counters_before = engine->communicator().counters();
    const ds::comm::CommCounters experts_before = engine->expert_parallel_counters();
    const ds::comm::CommCounters holders_before = engine->expert_data_parallel_counters();

    const ds::nn::CrossEntropyLoss criterion{classes};
    double running_loss = 0.0, final_loss = 0.0, unreported_loss = 0.0;
    std::size_t unreported = 0, images = 0;
    const auto start = std::chrono::steady_clock::now();
    bool done = false;
    for (int epoch = 0; epoch < args.epochs && !done; ++epoch) {
        trainloader->start_epoch(static_cast<std::uint64_t>(epoch));
        running_loss = 0.0;  // per epoch, as the Python example
        std::size_t i = 0;
        while (auto batch = trainloader->next()) {
            const auto outputs = engine->forward(batch->inputs);
            const auto loss = criterion(outputs, batch->labels);
            engine->backward(loss);
            engine->step();
            images += batch->size;
            running_loss += loss.value;
            unreported_loss += loss.value;
            ++unreported;
            if (i % args.log_interval == static_cast<std::size_t>(args.log_interval - 1)) {
                final_loss = running_loss / args.log_interval;
                print_loss(epoch + 1, i + 1, final_loss);
                running_loss = unreported_loss = 0.0;
                unreported = 0;
            }
            ++i;
            if (args.max_steps && engine->global_steps() >= *args.max_steps) {
                done = true;
                break;
            }
        }
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const ds::comm::CommCounters counters_after = engine->communicator().counters();
    const ds::comm::CommCounters experts_after = engine->expert_parallel_counters();
    const ds::comm::CommCounters holders_after = engine->expert_data_parallel_counters();
    ds::nn::MoETimings moe_time{};
    if constexpr (Net::contains_moe) moe_time = ds::nn::moe_timings(engine->module());
    if (leader && Net::contains_moe && cfg.wall_clock_breakdown)
        std::printf("moe time (s, training, rank 0): gate %.3f | first all-to-all %.3f | second all-to-all %.3f\n",
                    moe_time.gate, moe_time.first_all_to_all, moe_time.second_all_to_all);
    if (unreported > 0 && final_loss == 0.0) final_loss = unreported_loss / static_cast<double>(unreported);
    const double images_per_sec = static_cast<double>(images) * static_cast<double>(engine->world_size()) / seconds;
    if (leader) {
        std::cout << "Finished Training\n";
        std::printf("trained %zu images on %lld rank(s) in %.2f s: %.0f images/s\n",
                    images * static_cast<std::size_t>(engine->world_size()),
                    static_cast<long long>(engine->world_size()), seconds, images_per_sec);
    }
    const auto weights = engine->full_parameters();  // collective at stage 3 and with expert parallelism
    if (!args.save_weights.empty() && leader)
        ds::io::save_weights<typename Engine::full_model_type>(args.save_weights, weights);

    // Test: every test image, in batches of 4 as the Python example's testloader (fewer if the
    // micro batch is smaller). The batch matters for MoE: it sets the experts' capacity.
    engine->eval();
    std::vector<std::size_t> correct(classes), total(classes);
    const std::size_t batch = std::min<std::size_t>(4, static_cast<std::size_t>(engine->train_micro_batch_size_per_gpu()));
    std::vector<float> inputs(batch * Net::input_shape::size);
    for (std::size_t first = 0; first < data.test.size(); first += batch) {
        const std::size_t n = std::min(batch, data.test.size() - first);
        std::vector<std::int32_t> labels(n);
        for (std::size_t j = 0; j < n; ++j)
            labels[j] = data.test.get(first + j, inputs.data() + j * Net::input_shape::size);
        const auto outputs = engine->forward({inputs.data(), n * Net::input_shape::size});
        for (std::size_t j = 0; j < n; ++j) {
            const float* row = outputs.data() + j * classes;
            const auto predicted = static_cast<std::int32_t>(std::max_element(row, row + classes) - row);
            ++total[labels[j]];
            if (predicted == labels[j]) ++correct[labels[j]];
        }
    }
    std::size_t all_correct = 0;
    for (auto c : correct) all_correct += c;
    const double accuracy = 100.0 * all_correct / data.test.size();
    if (leader)
        std::printf("Accuracy of the network on the %zu test images: %d %%\n", data.test.size(),
                    static_cast<int>(100 * all_correct / data.test.size()));
    nlohmann::ordered_json class_accuracy = nlohmann::ordered_json::object();
    for (std::size_t c = 0; c < classes; ++c) {
        const double pct = total[c] ? 100.0 * correct[c] / total[c] : 0.0;
        if (leader) std::printf("Accuracy of %5s : %2d %%\n", data.test.class_names[c].c_str(), static_cast<int>(pct));
        class_accuracy[data.test.class_names[c]] = pct;
    }

    if (!args.metrics_json.empty() && leader) {
        const auto memory = engine->memory_report();
        nlohmann::ordered_json comm_per_step = nlohmann::ordered_json::object();
        const double steps = std::max<double>(1.0, static_cast<double>(engine->global_steps()));
        for (std::size_t op = 0; op < ds::comm::op_names.size(); ++op)
            comm_per_step[std::string(ds::comm::op_names[op])] =
                static_cast<double>(counters_after.elements[op] - counters_before.elements[op] +
                                    experts_after.elements[op] - experts_before.elements[op] +
                                    holders_after.elements[op] - holders_before.elements[op]) /
                steps;
        nlohmann::ordered_json metrics{
            {"final_loss", final_loss},
            {"test_accuracy", accuracy},
            {"class_accuracy", class_accuracy},
            {"steps", engine->global_steps()},
            {"skipped_steps", engine->skipped_steps()},
            {"loss_scale", engine->loss_scale()},
            {"images_per_sec", images_per_sec},
            {"params", Engine::full_model_type::param_count},
            {"world_size", engine->world_size()},
            {"dtype", std::string(B::dtype)},
            {"zero_stage", B::stage},
            {"dataset", data.train.name},
            {"train_seconds", seconds},
            {"micro_batch", engine->train_micro_batch_size_per_gpu()},
            {"padded_params", engine->padded_params()},
            {"memory_bytes",
             {{"parameters", memory.parameters},
              {"gradients", memory.gradients},
              {"master_weights", memory.master_weights},
              {"optimizer_states", memory.optimizer_states},
              {"buffers", memory.buffers}}},
            {"comm_elements_per_step", comm_per_step},
        };
        if constexpr (Net::contains_moe)
            metrics["moe_seconds"] = {{"gate", moe_time.gate},
                                      {"first_all_to_all", moe_time.first_all_to_all},
                                      {"second_all_to_all", moe_time.second_all_to_all}};
        std::ofstream(args.metrics_json) << metrics.dump(2) << "\n";
    }
    return 0;
}

/// The Net for C × Side × Side images: the dense one, or in a MoE binary the MoE Net that
/// `--num-experts` and `--mlp-type` name (each is its own type: the experts are parameters).
template <class B, std::size_t C, std::size_t Side>
int train(const cifar10::Args& args, const ds::Config& cfg, const Splits& data, Comm comm) {
    if constexpr (!B::moe) {
        return train_and_test<B, cifar10::Net<C, Side>>(args, cfg, data, std::move(comm));
    } else {
        using ds::nn::MoEMlp;
        const bool residual = args.mlp_type == "residual";
        // --ep-world-size sets how many experts each rank holds: a type, like the expert list.
        const auto with_ep = [&]<class Net>() {
            if (args.ep_world_size == 1) return train_and_test<B, Net>(args, cfg, data, std::move(comm));
            if (args.ep_world_size == 2)
                return train_and_test<B, typename Net::template with_expert_parallel<2>>(args, cfg, data,
                                                                                         std::move(comm));
            throw std::invalid_argument("--ep-world-size " + std::to_string(args.ep_world_size) +
                                        ": this binary is built for 1 and 2 (run_ds_moe.sh uses 2); other sizes are "
                                        "instantiated in examples/cifar10/cifar10.cpp's train()");
        };
        if (args.num_experts == std::vector<int>{2} && !residual)
            return with_ep.template operator()<cifar10::MoENet<C, Side, MoEMlp::standard, 2>>();
        if (args.num_experts == std::vector<int>{2, 4} && residual)
            return with_ep.template operator()<cifar10::MoENet<C, Side, MoEMlp::residual, 2, 4>>();
        std::ostringstream message;
        message << "--num-experts";
        for (int n : args.num_experts) message << ' ' << n;
        message << " --mlp-type " << args.mlp_type
                << ": this binary is built for --num-experts 2 (standard, run_ds_moe.sh) and --num-experts 2 4 "
                   "--mlp-type residual (run_ds_prmoe.sh); other lists are instantiated in "
                   "examples/cifar10/cifar10.cpp's train()";
        throw std::invalid_argument(message.str());
    }
}

/// The program, as binary B.
template <class B>
int run(int argc, char** argv) {
#if DSPP_HAVE_MPI
    ds::comm::MpiSession session(&argc, &argv);
#endif
    World world;
    leader = world.rank() == 0;
    try {
        const auto args = cifar10::parse_args(argc, argv);
        if (args.help) {
            if (leader) std::cout << "usage: " << binary_name(B::dtype, B::stage, B::moe) << " [flags]\n" << cifar10::usage_text;
            return 0;
        }
        const ds::Config cfg = resolve_config<B>(args);
#if !CIFAR10_CUDA
        // Convolutions split images over OpenMP threads; the small fully connected GEMMs use
        // one BLAS thread (OpenBLAS's own threads would spin against OpenMP's).
        openblas_set_num_threads(1);
        // Without --threads or OMP_NUM_THREADS, the ranks on this machine share its cores.
        if (args.threads) ds::cpu::set_threads(*args.threads);
        else if (!std::getenv("OMP_NUM_THREADS"))
            ds::cpu::set_threads(ds::cpu::cores_per_rank(ds::comm::init_distributed().local_world_size));
#endif
        Splits data;
        ds::comm::rank_zero_first(world, [&] { data = load_data(args); });  // rank 0 reads (and reports) first
        if (leader)
            std::cout << "dataset: " << data.train.name << " (" << data.train.channels << "x" << data.train.height
                      << "x" << data.train.width << ", " << data.train.size() << " train, " << data.test.size()
                      << " test)\n";
        if (data.train.channels == 3 && data.train.height == 32)
            return train<B, 3, 32>(args, cfg, data, engine_communicator(world));
        if (data.train.channels == 1 && data.train.height == 28)
            return train<B, 1, 28>(args, cfg, data, engine_communicator(world));
        throw std::invalid_argument("no Net is built for " + std::to_string(data.train.channels) + "x" +
                                    std::to_string(data.train.height) + "x" + std::to_string(data.train.width) + " images");
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
#if DSPP_HAVE_MPI
        if (world.size() > 1) MPI_Abort(MPI_COMM_WORLD, 2);  // the other ranks may wait in a collective
#endif
        return 2;
    }
}

}  // namespace

#ifndef CIFAR10_MOE
#define CIFAR10_MOE 0
#endif

namespace {

/// Whether this unit holds binaries of dtype `d`: CIFAR10_UNIT_DTYPE's only, or every dtype.
constexpr bool unit_holds(Dtype d) {
#ifdef CIFAR10_UNIT_DTYPE
    return dtype_names[static_cast<int>(d)] == std::string_view(CIFAR10_UNIT_DTYPE);
#else
    (void)d;
    return true;
#endif
}

template <Dtype D>
int run_stage(int stage, int argc, char** argv) {
    constexpr bool moe = CIFAR10_MOE;
    switch (stage) {
        case 0: return run<Binary<D, 0, moe>>(argc, argv);
        case 1: return run<Binary<D, 1, moe>>(argc, argv);
        case 2: return run<Binary<D, 2, moe>>(argc, argv);
        case 3:
            if constexpr (!moe) return run<Binary<D, 3, moe>>(argc, argv);  // MoE with ZeRO-3 does not compile
    }
    std::cerr << "error: " << binary_name(dtype_names[static_cast<int>(D)], stage, moe) << " is not built\n";
    return 2;
}

}  // namespace

/// The entry of every binary this unit holds: each one's main names its dtype and stage.
int cifar10_main(std::string_view dtype, int stage, int argc, char** argv) {
    if constexpr (unit_holds(Dtype::fp32))
        if (dtype == "fp32") return run_stage<Dtype::fp32>(stage, argc, argv);
    if constexpr (unit_holds(Dtype::bf16))
        if (dtype == "bf16") return run_stage<Dtype::bf16>(stage, argc, argv);
    if constexpr (unit_holds(Dtype::fp16))
        if (dtype == "fp16") return run_stage<Dtype::fp16>(stage, argc, argv);
    std::cerr << "error: " << binary_name(dtype, stage, CIFAR10_MOE) << " is not built\n";
    return 2;
}
