#pragma once
/// @file
/// `ds::Engine`: DeepSpeed's training engine with every runtime switch a policy.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <ds/comm/communicator.hpp>
#include <ds/comm/distributed.hpp>
#include <ds/comm/expert_parallel.hpp>
#include <ds/comm/single.hpp>
#include <ds/config/check.hpp>
#include <ds/config/config.hpp>
#include <ds/config/json.hpp>
#include <ds/device/cpu/convert.hpp>
#include <ds/device/cpu/simd.hpp>
#include <ds/engine/device_traits.hpp>
#include <ds/engine/flat_optimizer.hpp>
#include <ds/engine/wall_clock.hpp>
#include <ds/engine/zero_state.hpp>
#include <ds/io/checkpoint.hpp>
#include <ds/io/model_weights.hpp>
#include <ds/nn/cross_entropy.hpp>
#include <ds/nn/model.hpp>
#include <ds/optim/adam.hpp>
#include <ds/optim/optimizer.hpp>
#include <ds/policy/device.hpp>
#include <ds/policy/policies_for.hpp>
#include <ds/policy/precision.hpp>
#include <ds/policy/zero.hpp>
#include <ds/sched/lr_scheduler.hpp>
#include <ds/util/log.hpp>
#include <ds/util/rng.hpp>

namespace ds {

/// Bytes an engine holds per rank, by category (DESIGN: the ZeRO table's terms), in the
/// memory its states live in: host memory on `Cpu`, device memory on `Cuda`.
struct MemoryReport {
    std::size_t parameters = 0;        ///< model parameters in the compute dtype
    std::size_t gradients = 0;         ///< gradient buffer
    std::size_t master_weights = 0;    ///< fp32 copies of the parameters (mixed precision)
    std::size_t optimizer_states = 0;  ///< e.g. Adam's m and v
    std::size_t buffers = 0;           ///< activations and work buffers
    std::size_t total() const { return parameters + gradients + master_weights + optimizer_states + buffers; }
};

/// The training engine: `forward`, `backward`, `step`, as `deepspeed.initialize` returns it.
///
/// The policies are types, so the step is one straight-line instantiation (DESIGN
/// principle 1); the numbers (learning rate, batch sizes, clipping, schedule) come from a
/// `ds::Config` at run time and must agree with the policies (`ds::check_agrees`).
///
/// Parameters, gradients and optimizer states live in flat buffers laid out as
/// `Model::parameters` says; each layer reads its tensors at constexpr offsets. `P` sets
/// their dtypes: `FP32` keeps everything in fp32; `BF16` and `FP16<Scaler>` store parameters,
/// activations and gradients in 2 bytes (BF16 accumulates gradients in fp32 at stage 0, as
/// DeepSpeed does) and update an fp32 master copy; FP16 multiplies the loss by the
/// scaler's scale and skips the steps whose gradients overflow.
///
/// Ranks talk through `Comm` (`comm::Single` by default; `comm::Mpi` under mpirun,
/// `comm::Threads` for in-process tests); `ZeroState` keeps what stage Z partitions.
///
/// The device policy `D` picks, through `DeviceTraits<D>`, where the model runs and where
/// its states live: `Cpu`, or `Cuda` with `ds/device/cuda/engine.cuh` included (every ZeRO
/// stage, precision and MoE layer; the communicator must take device buffers:
/// `comm::Single`, which runs as `comm::CudaSingle`, `comm::Nccl`, `comm::CudaMpi`).
///
/// `Model` is a `ds::model` (ds/nn/model.hpp): a `ds::nn::Sequential` of `ds::layer`s,
/// the library's or the user's own; a type that is not names the requirement it misses.
template <class Model, optimizer Opt = Adam<>, zero_policy Z = Zero<0>, precision_policy P = FP32,
          device_policy D = Cpu, comm::communicator Comm = comm::Single>
    requires(explain_model<Model>())
class Engine {
    static_assert(requires { typename DeviceTraits<D>::Context; },
                  "ds::Engine: no DeviceTraits for this device policy (for ds::Cuda include <ds/device/cuda/engine.cuh>)");
    using traits = DeviceTraits<D>;
    static_assert(!(Z::partitions_parameters && requires { requires Model::contains_moe; }),
                  "ds::Engine: Mixture of Experts is not supported with ZeRO stage 3 (DeepSpeed: \"MoE not "
                  "supported with Stage 3\"); use ds::Zero<0>, <1> or <2>");

public:
    using model_type = Model;
    using compute_type = typename P::compute_type;  ///< parameters and activations
    using grad_type = grad_accumulation_t<P, Z>;     ///< gradients as accumulated across micro-steps
    using scaler_type = typename loss_scaler_of<P>::type;
    /// The model with its values stored in the compute dtype, on the device.
    using network_type = typename traits::template network<Model, compute_type>;
    using policies = Policies<Opt, Z, P, D>;
    using optimizer_type = typename traits::template optimizer<Opt>;
    /// The ranks' communicator: `Comm`, or the device's stand-in for it (on `Cuda`, a
    /// `comm::Single` world becomes `comm::CudaSingle`, which copies device buffers).
    using communicator_type = typename traits::template communicator<Comm>;
    /// The model with every expert, as one rank without expert parallelism holds it: the
    /// layout of `full_parameters()` (the model itself when it has no experts split).
    using full_model_type = typename Model::template with_expert_parallel<1>;
    /// Ranks each MoE layer's experts are split over (DeepSpeed's ep_size; 1 without MoE).
    static constexpr std::size_t expert_parallel_size = Model::expert_parallel_size;
    /// Ψ on this rank: the dense values and this rank's experts.
    static constexpr std::size_t param_count = Model::param_count;
    static constexpr std::size_t input_size = Model::input_shape::size;
    /// What `forward` takes: float (cast to the compute dtype), or `int32` token ids
    /// (`nn::Tokens<T>`), passed on as they are.
    using input_type = nn::shape_value_t<typename Model::input_shape>;
    static constexpr std::size_t output_size = Model::output_shape::size;

    /// Validates `cfg` for this world size and these policies, then builds the model with
    /// PyTorch's initialisation seeded by `cfg.seed`, broadcast from rank 0 (DeepSpeed).
    /// @throws ConfigError naming the broken rule or the policy the config contradicts
    ///
    /// A model whose experts are split over ep ranks (`expert_parallel_size` > 1) also gets
    /// DeepSpeed's expert groups here, collectively: blocked expert-parallel groups of ep
    /// ranks, over which its MoE layers exchange tokens, and the strided expert-data-parallel
    /// groups its experts' gradients are reduced over.
    /// @throws std::invalid_argument when ep does not divide the world size
    explicit Engine(const Config& cfg, communicator_type comm = communicator_type{})
        : comm_(std::move(comm)),
          cfg_(validated(cfg, comm_.size())),
          batch_(batch_sizes(cfg_, comm_.size())),
          expert_parallel_(make_expert_parallel_group(comm_)),
          expert_data_parallel_(make_expert_data_parallel_group(comm_)),
          model_(traits::template make_network<network_type>(micro_batch(), device_)),
          zero_(traits::template make_state<state_type>(device_, comm_,
                                                        expert_data_parallel_ ? *expert_data_parallel_ : comm_, cfg_,
                                                        initial_parameters(comm_, cfg_))),
          scaler_(make_scaler(cfg_)),
          optimizer_(traits::template make_optimizer<optimizer_type>(
              device_,
              cfg_.optimizer.type == OptimizerType::none ? Opt::defaults
                                                         : Opt::hyper_from(effective_params(cfg_.optimizer)),
              zero_.optimizer_elements())),
          scheduler_(cfg_.scheduler, optimizer_.hyper().lr, beta1_of(optimizer_.hyper())),
          io_(micro_batch() * input_size, micro_batch() * output_size, device_),
          scaled_grad_output_(micro_batch() * output_size) {
        if constexpr (Z::partitions_optimizer_states) {
            std::size_t at = 0;  // a group's partition is one tensor (SPEC §2.2)
            for (const auto& part : zero_.shard_parts()) tensors_.push_back({at, part.count}), at += part.count;
        } else {
            for (const auto& p : Model::parameters) tensors_.push_back({p.offset, p.numel()});
        }
        if constexpr (Model::contains_moe) model_.set_expert_parallel_group(expert_parallel_.get());
    }

    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // --- the training step -------------------------------------------------------------

    /// Runs the model on a batch of up to `train_micro_batch_size_per_gpu` samples, cast to
    /// the compute dtype first (the example's `inputs.to(target_dtype)`) unless they are ids.
    /// @returns the outputs (logits) as fp32 for the loss, valid until the next forward
    std::span<const float> forward(std::span<const input_type> inputs) {
        if (inputs.empty() || inputs.size() % input_size != 0)
            throw std::invalid_argument("Engine::forward: " + std::to_string(inputs.size()) +
                                        " values are not a whole number of samples of " + std::to_string(input_size));
        const std::size_t batch = inputs.size() / input_size;
        if (batch > model_.max_batch())
            throw std::invalid_argument("Engine::forward: batch of " + std::to_string(batch) +
                                        " exceeds train_micro_batch_size_per_gpu " + std::to_string(model_.max_batch()));
        batch_in_flight_ = 0;  // until this forward has run: no backward of a failed one
        const auto start = phase_start();
        const auto* uploaded = io_.upload_inputs(inputs);
        // A bad batch (a token id outside the vocabulary) fails here, before any collective.
        if constexpr (requires { model_.check_inputs(uploaded, batch); }) model_.check_inputs(uploaded, batch);
        zero_.begin_pass(Pass::forward);
        const compute_type* out = model_.forward(uploaded, batch, zero_);
        batch_in_flight_ = batch;
        const auto outputs = io_.download_outputs(out, batch * output_size);
        phase_end(TimedPhase::fwd, start);
        return outputs;
    }

    /// Backward from `loss` (whose gradient is with respect to the last forward's outputs),
    /// adding this micro-batch's gradients, divided by the accumulation steps (and, in
    /// fp16, multiplied by the loss scale), to the gradient buffer.
    /// @returns the loss as DeepSpeed's backward does: value / GAS
    float backward(const nn::Loss& loss) {
        if (loss.grad_output.size() != batch_in_flight_ * output_size)
            throw std::invalid_argument("Engine::backward: the loss is not of the last forward's outputs");
        const auto gas = static_cast<float>(batch_.gradient_accumulation_steps);
        const auto factor = static_cast<float>(scaler_.scale()) / gas;
        const std::size_t n = loss.grad_output.size();
        const float* scaled = loss.grad_output.data();
        if (factor != 1.0f) {
            for (std::size_t i = 0; i < n; ++i) scaled_grad_output_[i] = loss.grad_output[i] * factor;
            scaled = scaled_grad_output_.data();
        }
        const auto start = phase_start();
        zero_.begin_pass(Pass::backward);
        model_.backward(io_.upload_grad_output(scaled, n), zero_);
        phase_end(TimedPhase::bwd_inner, start);
        const auto reductions = phase_start();
        zero_.backward_finished();
        phase_end(TimedPhase::bwd_allreduce, reductions);
        phase_end(TimedPhase::bwd, start);
        return loss.value / gas;
    }

    /// Ends a micro-step; at an accumulation boundary, clips, updates the parameters,
    /// clears the gradients and advances the schedule (SPEC §7).
    void step() {
        const auto start = phase_start();
        const bool boundary = is_gradient_accumulation_boundary();
        if (boundary) take_model_step();
        ++micro_steps_;
        phase_end(TimedPhase::step, start);
        if (cfg_.wall_clock_breakdown) report_wall_clock(boundary);
    }

    /// Whether the next `step()` ends a gradient accumulation cycle.
    bool is_gradient_accumulation_boundary() const {
        return (micro_steps_ + 1) % batch_.gradient_accumulation_steps == 0;
    }

    // --- mode and state ----------------------------------------------------------------

    void train(bool mode = true) {
        training_ = mode;
        model_.set_training(mode);
    }
    void eval() { train(false); }
    bool training() const { return training_; }

    std::int64_t global_steps() const { return global_steps_; }
    std::int64_t global_samples() const { return global_samples_; }
    std::int64_t skipped_steps() const { return skipped_steps_; }
    std::int64_t micro_steps() const { return micro_steps_; }
    bool was_step_applied() const { return step_applied_; }
    /// The unclipped, unscaled global L2 norm of the last applied step's gradient (0 before
    /// the first): a skipped step (inf or NaN) leaves it, as DeepSpeed's optimizers return
    /// before storing the norm of an overflowing step.
    double get_global_grad_norm() const { return global_grad_norm_; }
    /// The scale the next backward multiplies the loss by (1 unless fp16).
    double loss_scale() const { return scaler_.scale(); }
    const scaler_type& loss_scaler() const { return scaler_; }
    /// One learning rate per parameter group, like DeepSpeed (dspp has one group).
    std::vector<double> get_lr() const { return {scheduler_.get_lr()}; }
    /// The betas per group, as the progress log prints them.
    std::vector<std::vector<double>> get_mom() const {
        if constexpr (requires { optimizer_.hyper().betas; }) {
            const auto beta2 = scheduler_.beta2_override().value_or(optimizer_.hyper().betas[1]);
            return {{scheduler_.get_beta1(), beta2}};
        } else {
            return {{beta1_of(optimizer_.hyper())}};
        }
    }

    int local_rank() const { return local_rank_; }
    int global_rank() const { return comm_.rank(); }
    std::int64_t world_size() const { return comm_.size(); }
    communicator_type& communicator() { return comm_; }
    /// Ψ as the collectives move it (padded as this stage partitions).
    std::size_t padded_params() const { return zero_.padded_params(); }
    static constexpr bool fp16_enabled() { return P::scales_loss; }
    static constexpr bool bfloat16_enabled() { return std::is_same_v<P, BF16>; }
    static constexpr int zero_optimization_stage() { return Z::stage; }
    std::int64_t train_batch_size() const { return batch_.train_batch_size; }
    std::int64_t train_micro_batch_size_per_gpu() const { return batch_.train_micro_batch_size_per_gpu; }
    std::int64_t gradient_accumulation_steps() const { return batch_.gradient_accumulation_steps; }
    const Config& config() const { return cfg_; }

    /// The whole model's parameters in fp32 (the master weights in mixed precision), laid
    /// out as `full_model_type::parameters` — with every expert, gathered from the ranks
    /// that hold them — so every rank must call it at stages 1-3 in mixed precision, at
    /// stage 3, and with expert parallelism.
    std::vector<float> full_parameters() {
        std::vector<float> mine = zero_.full_parameters();
        if constexpr (expert_parallel_size == 1) {
            return mine;
        } else {  // every EP rank's experts, to their places among all the experts (an all-gather, as an
                  // all-to-all of the same block to every rank: it shows in expert_parallel_counters())
            constexpr std::size_t ep = expert_parallel_size, dense = Model::dense_param_count,
                                  n = Model::expert_param_count;
            std::vector<float> send(ep * n), received(ep * n);
            for (std::size_t rho = 0; rho < ep; ++rho) std::copy_n(mine.begin() + dense, n, send.begin() + rho * n);
            traits::all_to_all_from_host(*expert_parallel_, send.data(), received.data(), n, device_);
            std::vector<float> all(full_model_type::param_count);
            std::copy_n(mine.begin(), dense, all.begin());
            for (std::size_t rho = 0; rho < ep; ++rho)
                for (std::size_t i = 0; i < n; ++i) all[Model::global_offset(dense + i, rho)] = received[rho * n + i];
            return all;
        }
    }
    /// Replaces the whole model's parameters, laid out as `full_model_type::parameters`;
    /// every rank passes the same values and keeps the experts it holds.
    void set_full_parameters(std::span<const float> values) {
        if (values.size() != full_model_type::param_count)
            throw std::invalid_argument("Engine::set_full_parameters: " + std::to_string(values.size()) +
                                        " values for " + std::to_string(full_model_type::param_count) + " parameters");
        if constexpr (expert_parallel_size == 1) {
            zero_.set_full_parameters(values);
        } else {
            const auto ep_rank = static_cast<std::size_t>(expert_parallel_->rank());
            std::vector<float> mine(param_count);
            for (std::size_t i = 0; i < param_count; ++i) mine[i] = values[Model::global_offset(i, ep_rank)];
            zero_.set_full_parameters(mine);
        }
    }
    /// This rank's gradient as accumulated since the last boundary: the full buffer at
    /// stages 0-1 (each parameter group padded at stage 1), this rank's averaged partition
    /// at stages 2-3 (the dense group's, then the experts'). Host memory only: on a device
    /// whose buffers the host cannot read (`ds::Cuda`) it is not there.
    std::span<grad_type> gradients()
        requires traits::host_buffers
    {
        if constexpr (Z::partitions_gradients) return zero_.shard_grads();
        else return zero_.accumulated_gradients();
    }
    /// Configures every MoE layer of the model with `settings` (`nn::MoESettings`); every
    /// rank passes the same.
    /// @throws std::invalid_argument when the settings are out of range
    template <class Settings>
        requires Model::contains_moe
    void configure_moe(const Settings& settings) {
        model_.configure_moe(settings);
    }
    /// What the MoE layers' all-to-alls have moved (none without expert parallelism).
    comm::CommCounters expert_parallel_counters() const {
        return expert_parallel_ ? expert_parallel_->counters() : comm::CommCounters{};
    }
    /// What the expert gradients' reductions and gathers have moved over the
    /// expert-data-parallel group (with ep = 1 they go over `communicator()`).
    comm::CommCounters expert_data_parallel_counters() const {
        return expert_data_parallel_ ? expert_data_parallel_->counters() : comm::CommCounters{};
    }

    optimizer_type& optimizer() { return optimizer_; }
    sched::LRScheduler& lr_scheduler() { return scheduler_; }
    network_type& module() { return model_; }

    MemoryReport memory_report() const {
        MemoryReport r;
        r.parameters = zero_.parameter_bytes();
        r.gradients = zero_.gradient_bytes();
        r.master_weights = zero_.master_bytes();
        r.optimizer_states = optimizer_.state_bytes();
        r.buffers = model_.buffer_bytes() + zero_.buffer_bytes() + io_.buffer_bytes() + device_.buffer_bytes();
        if constexpr (traits::host_buffers) r.buffers += scaled_grad_output_.size() * sizeof(float);
        return r;
    }

    // --- checkpoints ---------------------------------------------------------------------

    /// Saves the training state as DeepSpeed does (`ds/io/checkpoint.hpp` has the layout):
    /// rank 0 writes the whole model's fp32 parameters (the master weights in mixed
    /// precision) with PyTorch names, and as metadata the step counters, the schedule's
    /// position, the loss scaler's state and `client_state`; every rank writes its own
    /// optimizer states; then rank 0 names `tag` in `<dir>/latest` (with `save_latest`).
    /// Collective; call it at a gradient accumulation boundary (after `step()`). Each file
    /// is written whole then renamed, and all carry one save id, so files of a save that
    /// failed part-way are never loaded together with an older save's.
    /// @param dir  the checkpoint folder (made if missing)
    /// @param tag  default `global_step<N>`, as DeepSpeed names it
    /// @param client_state  anything the program wants back from `load_checkpoint`
    /// @param save_latest  whether `<dir>/latest` names this tag
    /// @throws io::CheckpointError on every rank when any rank cannot write
    /// @throws std::logic_error in the middle of an accumulation cycle (the partial
    ///   gradients are not saved)
    void save_checkpoint(const std::filesystem::path& dir, std::string tag = {},
                         const nlohmann::json& client_state = nlohmann::json::object(), bool save_latest = true);

    /// Saves the model's weights in its compute dtype, for inference (DeepSpeed's
    /// `save_16bit_model`): bf16 or fp16 under mixed precision — the rounding of the master
    /// weights that the forward uses — and fp32 otherwise, with PyTorch names, written by
    /// rank 0 to `<dir>/<file>` (safetensors: HF's `model.safetensors` by default).
    /// Collective. At ZeRO stage 3 the weights are gathered only when
    /// `zero_optimization.stage3_gather_16bit_weights_on_model_save` is set; otherwise, as
    /// in DeepSpeed, nothing is saved: a warning, and false.
    /// @returns whether the model was saved
    /// @throws on every rank when rank 0 cannot write (its own error there)
    bool save_16bit_model(const std::filesystem::path& dir, const std::string& file = "model.safetensors");

    /// Where a checkpoint was loaded from, and the `client_state` it was saved with.
    struct LoadedCheckpoint {
        std::filesystem::path path;
        nlohmann::json client_state;
    };

    /// Restores a state `save_checkpoint` wrote: parameters (and master weights), optimizer
    /// states and step count, the step counters, the schedule's position and the loss
    /// scaler, and clears the gradients; `options` restores less (DeepSpeed's
    /// `load_optimizer_states`, `load_lr_scheduler_states`, `load_module_only`, which
    /// changes the weights alone). Every file
    /// read is checked against this engine before anything changes — the model always; for
    /// the optimizer's states also the precision, ZeRO stage, optimizer, world size (unless
    /// stage 0) and expert parallelism, and that both files are of one save — so a
    /// checkpoint that does not fit leaves the engine as it was, on every rank. Collective.
    /// Not restored, as in DeepSpeed: random streams (MoE gating noise continues from the
    /// loading engine's), and hyper-parameters changed through `optimizer().hyper()`.
    /// @param dir  the folder `save_checkpoint` wrote
    /// @param tag  default: the one `<dir>/latest` names
    /// @param options  what to restore (default: everything)
    /// @returns nothing when `tag` is empty and there is no `<dir>/latest` (DeepSpeed warns
    ///   and loads nothing); else the folder and the client state
    /// @throws io::CheckpointError, io::SafetensorsError naming the file and what does not fit
    std::optional<LoadedCheckpoint> load_checkpoint(const std::filesystem::path& dir, std::string tag = {},
                                                    io::LoadOptions options = {});

private:
    /// Whether every rank holds the whole optimizer state (stage 0 without experts split):
    /// then a checkpoint loads on any number of ranks, each from rank 0's file, as DeepSpeed
    /// loads stage 0 on another world size.
    static constexpr bool replicated_optimizer = !Z::partitions_optimizer_states && expert_parallel_size == 1;

    /// What a checkpoint must match to be loaded here: the same model, precision, ZeRO
    /// stage, optimizer and ranks (each rank's optimizer states are its partition, and its
    /// experts' with expert parallelism; the ranks need not match when they are replicas).
    nlohmann::json checkpoint_identity() const;

    /// One id for the files of one save, the same on every rank: the step and random bits
    /// every rank agrees on (the sum of each rank's 32-bit draw, exact in a double).
    std::string agreed_save_id();

    /// The engine state in a checkpoint file's metadata, checked against this engine: its
    /// model, and with `whole` the rest of `checkpoint_identity` (what the optimizer's
    /// partitioned states depend on).
    nlohmann::json checked_state(const io::SafetensorsFile& file, const std::filesystem::path& path, bool whole) const;

    /// Runs `body` on every rank and lets every rank learn whether any failed, so that no
    /// rank waits in a collective for one that threw: the failing rank rethrows its error,
    /// the others throw one that points to it. (On a GPU the agreement itself goes through
    /// the device: after a sticky CUDA error there, that rank cannot take part.)
    template <class Body>
    void agree_on(Body&& body);

    static Config validated(const Config& cfg, std::int64_t world_size) {
        if (auto rule = check(cfg, world_size); !rule) throw ConfigError({std::string(rule.what())});
        if (auto rule = check_agrees<policies>(cfg); !rule) throw ConfigError({std::string(rule.what())});
        return cfg;
    }
    template <class Hyper>
    static double beta1_of(const Hyper& h) {
        if constexpr (requires { h.betas; }) return h.betas[0];
        else if constexpr (requires { h.momentum; }) return h.momentum;
        else return 0.0;
    }

    static scaler_type make_scaler(const Config& cfg) {
        if constexpr (std::is_same_v<scaler_type, DynamicLossScaler>)
            return DynamicLossScaler(dynamic_loss_scale_args(cfg.fp16));
        else if constexpr (P::scales_loss) return scaler_type(cfg.fp16.loss_scale);
        else return scaler_type(1.0);
    }

    using state_type = typename traits::template state<Z, P, Model, communicator_type>;

    std::size_t micro_batch() const { return static_cast<std::size_t>(batch_.train_micro_batch_size_per_gpu); }

    static std::unique_ptr<comm::ExpertExchange> make_expert_parallel_group(communicator_type& world) {
        if constexpr (expert_parallel_size > 1)
            return std::make_unique<comm::ExpertParallelGroup<communicator_type>>(world, static_cast<int>(expert_parallel_size));
        else return nullptr;
    }
    static std::optional<communicator_type> make_expert_data_parallel_group(communicator_type& world) {
        if constexpr (expert_parallel_size > 1)
            return comm::expert_data_parallel_group(world, static_cast<int>(expert_parallel_size));
        else return std::nullopt;
    }

    /// Every rank draws the same initial weights from the seed; rank 0's are broadcast anyway,
    /// as DeepSpeed does, so ranks can never start apart (every expert starts as the same
    /// copy, so the experts of every EP rank are these too). Where the communicator takes
    /// device buffers the state broadcasts its copy on the device instead.
    static std::vector<float> initial_parameters(communicator_type& comm, const Config& cfg) {
        std::vector<float> initial(param_count);
        Rng rng(static_cast<std::uint64_t>(cfg.seed));
        Model::init(initial.data(), rng);
        if constexpr (traits::host_buffers) comm.broadcast(initial.data(), initial.size(), 0);
        return initial;
    }

    void take_model_step() {
        zero_.reduce_gradients();
        const double scale = scaler_.scale();
        const double norm = std::sqrt(zero_.gradient_square_norm()) / scale;
        step_applied_ = std::isfinite(norm);
        if (step_applied_) global_grad_norm_ = norm;
        if (step_applied_) {
            consecutive_skips_ = 0;
            std::optional<double> beta1, beta2 = scheduler_.beta2_override();
            if (beta2) beta1 = scheduler_.get_beta1();
            const auto parts = zero_.shard_parts();
            optimizer_.step(std::span<const ShardPart<grad_type>>(parts), unscale_and_clip(scale), scheduler_.get_lr(),
                            beta1, beta2, tensors_);
            zero_.publish_parameters();
            scheduler_.step();
            if constexpr (P::scales_loss) scaler_.update(false);
        } else if constexpr (P::scales_loss) {
            skip_overflowing_step();
        } else {
            skip_non_finite_step();
        }
        zero_.zero_gradients();
        report_progress();
        ++global_steps_;
        global_samples_ += batch_.train_batch_size;
    }

    /// The one multiply that turns the accumulated gradient into the optimizer's (SPEC §5.1):
    /// 1/S · min(1, c / (N + 1e-6)), written as DeepSpeed writes each path.
    float unscale_and_clip(double scale) const {
        const double c = cfg_.gradient_clipping, norm = global_grad_norm_;
        if constexpr (P::scales_loss) {  // fp16 wrappers: 1 / (S · max(1, (N + 1e-6) / c))
            const double clip = c > 0.0 ? (norm + 1e-6) / c : 1.0;
            return static_cast<float>(1.0 / (clip > 1.0 ? clip * scale : scale));
        } else {  // coef = c / (N + 1e-6), applied when below 1
            const double coef = c > 0.0 ? c / (norm + 1e-6) : 1.0;
            return coef < 1.0 ? static_cast<float>(coef) : 1.0f;
        }
    }

    /// fp16: an overflow skips the step and the scaler lowers the scale, or throws at the
    /// minimum (SPEC §4.1, §4.3); rank 0 logs it as DeepSpeed does.
    void skip_overflowing_step() {
        ++skipped_steps_;
        const double attempted = scaler_.scale();
        int hysteresis = 0;
        if constexpr (requires { scaler_.hysteresis(); }) hysteresis = scaler_.hysteresis();
        scaler_.update(true);
        if (comm_.rank() != 0) return;
        std::ostringstream line;
        line << "[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: " << attempted;
        if (scaler_.scale() == attempted && hysteresis > 1)
            line << ", but hysteresis is " << hysteresis << ". Reducing hysteresis to " << hysteresis - 1;
        else line << ", reducing to " << scaler_.scale();
        log_line(LogLevel::info, line.str());
    }

    /// The decisions table: a non-finite gradient skips the step with a warning, and too
    /// many in a row (fp16.loss_scale_window, default 1000) is an error.
    void skip_non_finite_step() {
        ++skipped_steps_;
        ++consecutive_skips_;
        log_line(LogLevel::warning, "step " + std::to_string(global_steps_ + 1) +
                                        ": non-finite gradient norm; skipping the step (skipped=" +
                                        std::to_string(skipped_steps_) + ")");
        const int limit = cfg_.fp16.loss_scale_window.value_or(1000);
        if (consecutive_skips_ >= limit)
            throw std::runtime_error("training diverged: " + std::to_string(consecutive_skips_) +
                                     " consecutive steps had non-finite gradients");
    }

    /// `wall_clock_breakdown`: a phase starts once the device has finished what came before
    /// (as DeepSpeed's synchronized timers do), so each phase's time is its own work.
    std::optional<WallClockBreakdown::clock::time_point> phase_start() {
        if (!cfg_.wall_clock_breakdown) return std::nullopt;
        traits::synchronize(device_);
        return WallClockBreakdown::clock::now();
    }
    void phase_end(TimedPhase phase, const std::optional<WallClockBreakdown::clock::time_point>& start) {
        if (!start) return;
        traits::synchronize(device_);
        wall_clock_.add(phase, *start);
    }
    /// After every step() the micro-step's times, at a boundary also the cycle's (rank 0).
    void report_wall_clock(bool boundary) {
        const std::string micro = wall_clock_.micro_step_line();
        if (comm_.rank() == 0) log_line(LogLevel::info, "[Rank 0] " + micro);  // DeepSpeed's log_dist prefix
        if (!boundary) return;
        const std::string cycle = wall_clock_.cycle_line();
        if (comm_.rank() == 0) log_line(LogLevel::info, "[Rank 0] " + cycle);
    }

    void report_progress() const {
        if (comm_.rank() != 0 || !cfg_.steps_per_print || (global_steps_ + 1) % cfg_.steps_per_print.value != 0) return;
        std::ostringstream line;
        line << "[Rank 0] step=" << global_steps_ + 1 << ", skipped=" << skipped_steps_ << ", lr=[" << get_lr()[0]
             << "], mom=[[";
        const auto mom = get_mom()[0];
        for (std::size_t i = 0; i < mom.size(); ++i) line << (i ? ", " : "") << mom[i];
        line << "]]";
        if constexpr (P::scales_loss) line << ", loss_scale=" << scaler_.scale();
        log_line(LogLevel::info, line.str());
    }

    [[no_unique_address]] typename traits::Context device_;  ///< first: the others run on it
    communicator_type comm_;
    Config cfg_;
    BatchSizes batch_;
    std::unique_ptr<comm::ExpertExchange> expert_parallel_;  ///< experts split over ep > 1 ranks: the blocked group
    std::optional<communicator_type> expert_data_parallel_;              ///< ... and the strided one (else the world)
    network_type model_;
    state_type zero_;
    scaler_type scaler_;
    optimizer_type optimizer_;
    sched::LRScheduler scheduler_;
    std::vector<Segment> tensors_;
    typename traits::template Io<compute_type, input_type> io_;  ///< batches in, outputs out
    std::vector<float> scaled_grad_output_;          ///< the loss gradient × scale / GAS, fp32
    std::size_t batch_in_flight_ = 0;
    std::int64_t global_steps_ = 0, global_samples_ = 0, skipped_steps_ = 0, micro_steps_ = 0;
    int consecutive_skips_ = 0;
    double global_grad_norm_ = 0.0;
    WallClockBreakdown wall_clock_;
    int local_rank_ = comm::init_distributed().local_rank;
    bool step_applied_ = false, training_ = true;
};

}  // namespace ds

#include <ds/engine/engine_checkpoints.hpp>  // the checkpoint members' definitions
