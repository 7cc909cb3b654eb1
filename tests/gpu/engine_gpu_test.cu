// ds::Engine<..., ds::Cuda>: 50 training steps of the CIFAR Net on the GPU (fp32, ZeRO stage
// 0, Adam, clipping) against the same 50 steps on the CPU engine, from the same seed and
// batches: every step's loss and the final parameters. Then the engine's contract on the
// device: the global norm, the step count, the parameters' round trip, and a memory report
// that accounts for every byte of device memory the engine holds.
// ZeRO stages 1-3 on one GPU (a comm::Single world, which the engine runs as CudaSingle)
// against stage 0 on the GPU, with buckets and gathers small enough to take many pieces.
// bf16 and fp16 (loss scaling) on the GPU against the CPU engine in the same precision, and
// bf16 at stage 2 (bf16 gradients) against bf16 at stage 0 (fp32 accumulation) on the GPU.
// Checkpoints saved on the GPU resume on the GPU and on the CPU, and the CPU's on the GPU.
// Without a CUDA device it prints "skipped: no CUDA device" and exits 77 (CTest: skipped).
#define DOCTEST_CONFIG_IMPLEMENT
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <type_traits>
#include <unistd.h>
#include <vector>

#include <doctest/doctest.h>

#include "device_or_skip.hpp"

#include <ds/device/cuda/engine.cuh>
#include <ds/device/cuda/memory.hpp>
#include <ds/engine/engine.hpp>

#include "cifar10/net.hpp"
#include "gpu/engine_reference.hpp"

namespace {

using GpuEngine = ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, ds::FP32, ds::Cuda>;

/// The bytes asked of the caching allocator and not yet given back (not its blocks' sizes:
/// those round up, and a cached block may be up to twice the request).
std::size_t device_bytes_requested() { return ds::cuda::CachingAllocator::current().requested_bytes(); }

/// The engine's memory report against the device memory it holds: what it asked the
/// allocator for since `before` (taken before it was built) and still holds. Every buffer
/// counted, none twice, so the two are equal.
void check_report_is_device_memory(const ds::MemoryReport& report, std::size_t before) {
    const std::size_t now = device_bytes_requested();
    INFO("report " << report.total() << " bytes (buffers " << report.buffers << "), allocator "
                   << static_cast<long long>(now) - static_cast<long long>(before));
    CHECK(report.total() == now - before);
}

}  // namespace

TEST_SUITE("gpu") {

TEST_CASE("the CIFAR Net trains on the GPU engine as on the CPU engine: 50 steps, losses and parameters") {
    constexpr int steps = 50;
    const TrainingRun cpu = train_on_cpu(steps);

    const std::size_t before = device_bytes_requested();
    GpuEngine engine(engine_test_config());
    CHECK(engine.world_size() == 1);
    const TrainingRun gpu = train_steps(engine, steps);
    const std::vector<double>& losses = gpu.losses;
    CHECK(std::isfinite(engine.get_global_grad_norm()));
    CHECK(engine.global_steps() == steps);
    CHECK(engine.optimizer().step_count() == steps);
    // fp32 on both; the GPU sums in other orders (cuBLASLt, im2col GEMMs), so the runs part
    // by rounding only: every loss within 1e-3, the parameters within 1 % of how far they moved.
    REQUIRE(gpu.initial == cpu.initial);
    double worst = 0;
    for (int s = 0; s < steps; ++s) worst = std::max(worst, relative(losses[s], cpu.losses[s], 1e-3));
    CHECK(worst < 1e-3);
    CHECK(losses.back() < losses.front());  // it learns (the synthetic classes are separable)
    REQUIRE(gpu.params.size() == cpu.params.size());
    CHECK(drift(gpu, cpu) < 1e-2);
    CHECK(share_within(gpu, cpu, 2e-3) > 0.999);  // and all but a few parameters closely

    const auto memory = engine.memory_report();
    CHECK(memory.parameters == 4 * cifar10::CifarNet::param_count);
    CHECK(memory.optimizer_states == 8 * cifar10::CifarNet::param_count);  // Adam's m and v
    check_report_is_device_memory(memory, before);
    engine.set_full_parameters(cpu.params);
    CHECK(engine.full_parameters() == cpu.params);
}

TEST_CASE("PR-MoE on the GPU engine (ZeRO stage 2) trains as on the CPU engine: 20 steps") {
    constexpr int steps = 20;
    const TrainingRun cpu = train_moe_on_cpu(steps);
    ds::Config cfg = engine_test_config();
    cfg.zero_optimization.stage = 2;  // the experts' gradients reduced as their own group
    const std::size_t before = device_bytes_requested();
    ds::Engine<cifar10::MoENet<3, 32, ds::nn::MoEMlp::residual, 2, 4>, ds::Adam<>, ds::Zero<2>, ds::FP32, ds::Cuda>
        engine(cfg);
    engine.configure_moe(moe_test_settings());
    const TrainingRun gpu = train_steps(engine, steps);
    REQUIRE(gpu.initial == cpu.initial);
    // The router is the CPU's, fed the GPU's logits: the same tokens go to the same experts
    // (a tie within rounding would part the runs, and these checks would say so).
    double worst = 0;
    for (int s = 0; s < steps; ++s) worst = std::max(worst, relative(gpu.losses[s], cpu.losses[s], 1e-3));
    CHECK(worst < 1e-3);
    CHECK(drift(gpu, cpu) < 1e-2);
    CHECK(share_within(gpu, cpu, 2e-3) > 0.99);
    int moe_layers = 0;  // the Net's one MoE layer, found by what only it reports
    engine.module().for_each_layer([&](const auto& layer) {
        if constexpr (requires { layer.aux_losses(); }) {
            const auto aux = layer.aux_losses();
            CHECK((aux[0] > 0 && aux[1] > 0));
            ++moe_layers;
        }
    });
    CHECK(moe_layers == 1);
    check_report_is_device_memory(engine.memory_report(), before);
}

TEST_CASE_TEMPLATE("ZeRO stages 1-3 on one GPU train as stage 0: 50 steps", Z, ds::Zero<1>, ds::Zero<2>, ds::Zero<3>) {
    constexpr int steps = 50;
    GpuEngine reference(engine_test_config());
    const TrainingRun stage0 = train_steps(reference, steps);

    ds::Config cfg = engine_test_config();
    cfg.zero_optimization.stage = Z::stage;
    cfg.zero_optimization.reduce_bucket_size = 4096;                 // stage 2: fc1 alone, the rest in pieces
    cfg.zero_optimization.overlap_comm = true;                       // stage 2: two buckets in flight; 3: prefetch
    cfg.zero_optimization.stage3_param_persistence_threshold = 1000;  // stage 3: gather every tensor above 1000
    const std::size_t before = device_bytes_requested();
    ds::Engine<cifar10::CifarNet, ds::Adam<>, Z, ds::FP32, ds::Cuda> engine(cfg);
    static_assert(std::is_same_v<typename decltype(engine)::communicator_type, ds::comm::CudaSingle>);
    const TrainingRun run = train_steps(engine, steps);
    // One rank: the stages move the same values through other buffers. Their alignments
    // differ (a layer's gathered or bucketed tensors start on 256 bytes), and cuBLASLt may
    // pick another kernel for another alignment: ulp-level differences, which Adam can turn
    // into ±lr for a parameter whose gradient is zero up to rounding (see `drift`).
    double worst = 0;
    for (int s = 0; s < steps; ++s) worst = std::max(worst, relative(run.losses[s], stage0.losses[s], 1e-3));
    CHECK(worst < 1e-4);
    REQUIRE(run.params.size() == stage0.params.size());
    CHECK(drift(run, stage0) < 1e-4);
    CHECK(share_within(run, stage0, 1e-5) > 0.999);
    CHECK(engine.get_global_grad_norm() == doctest::Approx(reference.get_global_grad_norm()).epsilon(1e-5));
    const auto memory = engine.memory_report();
    CHECK(memory.optimizer_states == 8 * engine.padded_params());  // the (padded) shard is the whole model
    check_report_is_device_memory(memory, before);
    engine.set_full_parameters(stage0.params);
    CHECK(engine.full_parameters() == stage0.params);
}

TEST_CASE_TEMPLATE("bf16 and fp16 on the GPU engine train as on the CPU engine: 50 steps", P, ds::BF16, ds::FP16<>) {
    constexpr int steps = 50;
    const Dtype dtype = std::is_same_v<P, ds::BF16> ? Dtype::bf16 : Dtype::fp16;
    const TrainingRun cpu = train_on_cpu(steps, dtype);
    const std::size_t before = device_bytes_requested();
    ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, P, ds::Cuda> engine(engine_test_config(1, dtype));
    const TrainingRun gpu = train_steps(engine, steps);
    REQUIRE(gpu.initial == cpu.initial);  // the same fp32 master start
    // 2-byte activations round where the sums differ, so the runs part by a few 2-byte ulps:
    // every loss within 3 %, and the trajectories within a tenth of how far they moved.
    double worst = 0;
    for (int s = 0; s < steps; ++s) worst = std::max(worst, relative(gpu.losses[s], cpu.losses[s], 1e-2));
    CHECK(worst < 3e-2);
    CHECK(drift(gpu, cpu) < 0.1);
    CHECK(gpu.skipped == cpu.skipped);  // fp16: the same overflowing steps skipped (none for bf16)
    CHECK(gpu.losses.back() < gpu.losses.front());
    const auto memory = engine.memory_report();
    CHECK(memory.parameters == 2 * cifar10::CifarNet::param_count);  // 2-byte parameters
    CHECK(memory.master_weights == 4 * cifar10::CifarNet::param_count);
    // Stage 0: bf16 accumulates in fp32 (DeepSpeed's BF16 optimizer), fp16 in fp16.
    CHECK(memory.gradients == (std::is_same_v<P, ds::BF16> ? 4 : 2) * cifar10::CifarNet::param_count);
    check_report_is_device_memory(memory, before);
}

TEST_CASE("bf16 at ZeRO stage 2 on the GPU (bf16 gradients) trains as bf16 at stage 0 (fp32 accumulation)") {
    constexpr int steps = 50;
    ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, ds::BF16, ds::Cuda> reference(
        engine_test_config(1, Dtype::bf16));
    const TrainingRun stage0 = train_steps(reference, steps);
    ds::Config cfg = engine_test_config(1, Dtype::bf16);
    cfg.zero_optimization.stage = 2;
    cfg.zero_optimization.reduce_bucket_size = 4096;
    ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<2>, ds::BF16, ds::Cuda> engine(cfg);
    const TrainingRun run = train_steps(engine, steps);
    // One micro-step per step: each gradient is one bf16 product, held exactly by both.
    double worst = 0;
    for (int s = 0; s < steps; ++s) worst = std::max(worst, relative(run.losses[s], stage0.losses[s], 1e-3));
    CHECK(worst < 1e-5);
    CHECK(drift(run, stage0) < 1e-4);
    CHECK(engine.memory_report().gradients == 2 * engine.padded_params());
}

TEST_CASE("checkpoints move between the GPU and CPU engines, and a resumed GPU engine continues as before") {
    namespace fs = std::filesystem;
    const fs::path root = fs::temp_directory_path() / ("dspp_gpu_checkpoint_" + std::to_string(::getpid()));
    fs::remove_all(root);
    constexpr int first = 5, more = 5;

    // GPU -> GPU: the resumed engine starts where the saved one was and steps as it does.
    GpuEngine saved(engine_test_config());
    const TrainingRun before = train_steps(saved, first);
    saved.save_checkpoint(root / "gpu");
    const TrainingRun uninterrupted = train_steps(saved, more, first);
    GpuEngine resumed(engine_test_config());
    const auto loaded = resumed.load_checkpoint(root / "gpu");
    REQUIRE(loaded);
    CHECK(loaded->path == root / "gpu" / ("global_step" + std::to_string(first)));
    CHECK(resumed.global_steps() == first);
    CHECK(resumed.optimizer().step_count() == first);
    const TrainingRun after = train_steps(resumed, more, first);
    CHECK(after.initial == before.params);  // the fp32 values, exactly
    // The same kernels on the same values: equal up to any reordering cuBLASLt may choose.
    double worst = 0;
    for (int s = 0; s < more; ++s) worst = std::max(worst, relative(after.losses[s], uninterrupted.losses[s], 1e-3));
    CHECK(worst < 1e-6);
    worst = 0;
    for (std::size_t i = 0; i < after.params.size(); ++i)
        worst = std::max(worst, relative(after.params[i], uninterrupted.params[i], 1e-2));
    CHECK(worst < 1e-6);

    // GPU -> CPU: the CPU engine reads the GPU's checkpoint and continues within the rounding
    // that parts the two backends (the 50-step test's bounds).
    REQUIRE(uninterrupted.initial == before.params);
    const TrainingRun on_cpu = resume_on_cpu(root / "gpu", first, more);
    CHECK(on_cpu.initial == before.params);
    worst = 0;
    for (int s = 0; s < more; ++s) worst = std::max(worst, relative(on_cpu.losses[s], uninterrupted.losses[s], 1e-3));
    CHECK(worst < 1e-3);
    CHECK(drift(on_cpu, uninterrupted) < 1e-2);

    // CPU -> GPU: the parameters and Adam's moments land on the device bit for bit.
    const SavedOnCpu cpu = train_and_save_on_cpu(first, root / "cpu");
    GpuEngine from_cpu(engine_test_config());
    REQUIRE(from_cpu.load_checkpoint(root / "cpu"));
    CHECK(from_cpu.full_parameters() == cpu.params);
    CHECK(from_cpu.optimizer().state(0) == cpu.optimizer_states[0]);
    CHECK(from_cpu.optimizer().state(1) == cpu.optimizer_states[1]);
    CHECK(from_cpu.optimizer().step_count() == first);

    // Mixed precision at stage 2: the master weights and the partitioned moments come back.
    ds::Config cfg = engine_test_config(1, Dtype::bf16);
    cfg.zero_optimization.stage = 2;
    using Bf16Engine = ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<2>, ds::BF16, ds::Cuda>;
    Bf16Engine bf16_saved(cfg);
    train_steps(bf16_saved, first);
    bf16_saved.save_checkpoint(root / "bf16");
    Bf16Engine bf16_resumed(cfg);
    REQUIRE(bf16_resumed.load_checkpoint(root / "bf16"));
    CHECK(bf16_resumed.full_parameters() == bf16_saved.full_parameters());
    CHECK(bf16_resumed.optimizer().state(0) == bf16_saved.optimizer().state(0));
    CHECK(bf16_resumed.optimizer().state(1) == bf16_saved.optimizer().state(1));
    CHECK(bf16_resumed.optimizer().step_count() == first);
    // ... and the bf16 copy the forward reads is the master's rounding: the next step agrees.
    const TrainingRun bf16_next = train_steps(bf16_saved, 1, first);
    const TrainingRun bf16_resumed_next = train_steps(bf16_resumed, 1, first);
    CHECK(relative(bf16_resumed_next.losses[0], bf16_next.losses[0], 1e-3) < 1e-6);
    CHECK(drift(bf16_resumed_next, bf16_next) < 1e-5);
    // ... and a checkpoint of another precision is refused by name, the engine unchanged.
    const auto kept = bf16_resumed.full_parameters();
    CHECK_THROWS_WITH_AS(bf16_resumed.load_checkpoint(root / "gpu"), doctest::Contains("dtype"), ds::io::CheckpointError);
    CHECK(bf16_resumed.full_parameters() == kept);
    fs::remove_all(root);
}

}  // TEST_SUITE

int main(int argc, char** argv) {
    if (const int code = device_or_skip()) return code;
    doctest::Context context(argc, argv);
    return context.run();
}
