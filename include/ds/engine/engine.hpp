#pragma once
/// @file
/// `ds::Engine`: DeepSpeed's training engine with every runtime switch a policy.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <ds/comm/communicator.hpp>
#include <ds/comm/distributed.hpp>
#include <ds/comm/single.hpp>
#include <ds/config/check.hpp>
#include <ds/config/config.hpp>
#include <ds/config/json.hpp>
#include <ds/device/cpu/simd.hpp>
#include <ds/engine/flat_optimizer.hpp>
#include <ds/engine/zero_state.hpp>
#include <ds/nn/cross_entropy.hpp>
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

/// Bytes an engine holds per rank, by category (DESIGN: the ZeRO table's terms).
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
/// Parameters, gradients and optimizer states live in flat fp32 buffers laid out as
/// `Model::parameters` says; each layer reads its tensors at constexpr offsets.
///
/// Ranks talk through `Comm` (`comm::Single` by default; `comm::Mpi` under mpirun,
/// `comm::Threads` for in-process tests); `ZeroState` keeps what stage Z partitions.
///
/// So far: `FP32` on `Cpu`, every ZeRO stage. The other combinations are refused at
/// compile time until their issues land, never run as something else.
template <class Model, optimizer Opt = Adam<>, zero_policy Z = Zero<0>, precision_policy P = FP32,
          device_policy D = Cpu, comm::communicator Comm = comm::Single>
class Engine {
    static_assert(std::is_same_v<P, FP32>, "ds::Engine: only ds::FP32 is built so far (BF16/FP16 come next)");
    static_assert(std::is_same_v<D, Cpu>, "ds::Engine: only ds::Cpu is built so far");

public:
    using model_type = Model;
    using policies = Policies<Opt, Z, P, D>;
    using optimizer_type = FlatOptimizer<Opt>;
    using communicator_type = Comm;
    static constexpr std::size_t param_count = Model::param_count;
    static constexpr std::size_t input_size = Model::input_shape::size;
    static constexpr std::size_t output_size = Model::output_shape::size;

    /// Validates `cfg` for this world size and these policies, then builds the model with
    /// PyTorch's initialisation seeded by `cfg.seed`, broadcast from rank 0 (DeepSpeed).
    /// @throws ConfigError naming the broken rule or the policy the config contradicts
    explicit Engine(const Config& cfg, Comm comm = Comm{})
        : comm_(std::move(comm)),
          cfg_(validated(cfg, comm_.size())),
          batch_(batch_sizes(cfg_, comm_.size())),
          model_(static_cast<std::size_t>(batch_.train_micro_batch_size_per_gpu)),
          zero_(comm_, cfg_, initial_parameters(comm_, cfg_)),
          optimizer_(cfg_.optimizer.type == OptimizerType::none ? Opt::defaults : Opt::hyper_from(cfg_.optimizer.params),
                     zero_.shard_params().size()),
          scheduler_(cfg_.scheduler, optimizer_.hyper().lr, beta1_of(optimizer_.hyper())),
          input_(static_cast<std::size_t>(batch_.train_micro_batch_size_per_gpu) * input_size) {
        if constexpr (Z::partitions_optimizer_states) {
            tensors_.push_back({0, zero_.shard_params().size()});  // a partition is one tensor (SPEC §2.2)
        } else {
            for (const auto& p : Model::parameters) tensors_.push_back({p.offset, p.numel()});
        }
    }

    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // --- the training step -------------------------------------------------------------

    /// Runs the model on a batch of up to `train_micro_batch_size_per_gpu` samples.
    /// @returns the outputs (logits), valid until the next forward
    std::span<const float> forward(std::span<const float> inputs) {
        if (inputs.empty() || inputs.size() % input_size != 0)
            throw std::invalid_argument("Engine::forward: " + std::to_string(inputs.size()) +
                                        " values are not a whole number of samples of " + std::to_string(input_size));
        const std::size_t batch = inputs.size() / input_size;
        if (batch > model_.max_batch())
            throw std::invalid_argument("Engine::forward: batch of " + std::to_string(batch) +
                                        " exceeds train_micro_batch_size_per_gpu " + std::to_string(model_.max_batch()));
        std::copy(inputs.begin(), inputs.end(), input_.begin());
        batch_in_flight_ = batch;
        return {model_.forward(input_.data(), batch, zero_), batch * output_size};
    }

    /// Backward from `loss` (whose gradient is with respect to the last forward's outputs),
    /// adding this micro-batch's gradients, divided by the accumulation steps, to the
    /// gradient buffer. @returns the loss as DeepSpeed's backward does: value / GAS
    float backward(const nn::Loss& loss) {
        if (loss.batch != batch_in_flight_ || loss.grad_output.size() != batch_in_flight_ * output_size)
            throw std::invalid_argument("Engine::backward: the loss is not of the last forward's outputs");
        const auto gas = static_cast<float>(batch_.gradient_accumulation_steps);
        const float* grad_output = loss.grad_output.data();
        if (gas != 1.0f) {
            scaled_grad_output_.assign(loss.grad_output.begin(), loss.grad_output.end());
            for (float& g : scaled_grad_output_) g /= gas;
            grad_output = scaled_grad_output_.data();
        }
        model_.backward(grad_output, zero_);
        zero_.backward_finished();
        return loss.value / gas;
    }

    /// Ends a micro-step; at an accumulation boundary, clips, updates the parameters,
    /// clears the gradients and advances the schedule (SPEC §7).
    void step() {
        if (is_gradient_accumulation_boundary()) take_model_step();
        ++micro_steps_;
    }

    /// Whether the next `step()` ends a gradient accumulation cycle.
    bool is_gradient_accumulation_boundary() const {
        return (micro_steps_ + 1) % batch_.gradient_accumulation_steps == 0;
    }

    // --- mode and state ----------------------------------------------------------------

    void train(bool mode = true) { training_ = mode; }
    void eval() { training_ = false; }
    bool training() const { return training_; }

    std::int64_t global_steps() const { return global_steps_; }
    std::int64_t global_samples() const { return global_samples_; }
    std::int64_t skipped_steps() const { return skipped_steps_; }
    std::int64_t micro_steps() const { return micro_steps_; }
    bool was_step_applied() const { return step_applied_; }
    /// The unclipped global L2 norm of the last boundary's gradient (NaN/inf if it overflowed).
    double get_global_grad_norm() const { return global_grad_norm_; }
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
    Comm& communicator() { return comm_; }
    /// Ψ as the collectives move it (padded as this stage partitions).
    std::size_t padded_params() const { return zero_.padded_params(); }
    static constexpr bool fp16_enabled() { return P::scales_loss; }
    static constexpr bool bfloat16_enabled() { return std::is_same_v<P, BF16>; }
    static constexpr int zero_optimization_stage() { return Z::stage; }
    std::int64_t train_batch_size() const { return batch_.train_batch_size; }
    std::int64_t train_micro_batch_size_per_gpu() const { return batch_.train_micro_batch_size_per_gpu; }
    std::int64_t gradient_accumulation_steps() const { return batch_.gradient_accumulation_steps; }
    const Config& config() const { return cfg_; }

    /// The whole model's parameters (Ψ values, laid out as `Model::parameters`); gathered
    /// from all ranks at stage 3, so every rank must call it then.
    std::vector<float> full_parameters() { return zero_.full_parameters(); }
    /// Replaces the whole model's parameters; every rank passes the same values.
    void set_full_parameters(std::span<const float> values) {
        if (values.size() != param_count)
            throw std::invalid_argument("Engine::set_full_parameters: " + std::to_string(values.size()) +
                                        " values for " + std::to_string(param_count) + " parameters");
        zero_.set_full_parameters(values);
    }
    /// This rank's gradient as accumulated since the last boundary: the full buffer at
    /// stages 0-1, this rank's averaged partition at stages 2-3.
    std::span<float> gradients() {
        if constexpr (Z::partitions_gradients) return zero_.shard_grads();
        else return zero_.accumulated_gradients();
    }
    optimizer_type& optimizer() { return optimizer_; }
    sched::LRScheduler& lr_scheduler() { return scheduler_; }
    Model& module() { return model_; }

    MemoryReport memory_report() const {
        MemoryReport r;
        r.parameters = zero_.parameter_bytes();
        r.gradients = zero_.gradient_bytes();
        r.optimizer_states = optimizer_.state_bytes();
        r.buffers = model_.buffer_bytes() + zero_.buffer_bytes() + input_.size() * sizeof(float);
        return r;
    }

private:
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

    /// Every rank draws the same initial weights from the seed; rank 0's are broadcast anyway,
    /// as DeepSpeed does, so ranks can never start apart.
    static std::vector<float> initial_parameters(Comm& comm, const Config& cfg) {
        std::vector<float> initial(param_count);
        Rng rng(static_cast<std::uint64_t>(cfg.seed));
        Model::init(initial.data(), rng);
        comm.broadcast(initial.data(), initial.size(), 0);
        return initial;
    }

    void take_model_step() {
        zero_.reduce_gradients();
        global_grad_norm_ = std::sqrt(zero_.gradient_square_norm());
        step_applied_ = std::isfinite(global_grad_norm_);
        if (step_applied_) {
            consecutive_skips_ = 0;
            if (cfg_.gradient_clipping > 0.0) {  // SPEC §5.1, fp32 path: coef = min(1, c / (norm + 1e-6))
                const double coef = cfg_.gradient_clipping / (global_grad_norm_ + 1e-6);
                if (coef < 1.0)
                    for (float& g : zero_.shard_grads()) g *= static_cast<float>(coef);
            }
            std::optional<double> beta1, beta2 = scheduler_.beta2_override();
            if (beta2) beta1 = scheduler_.get_beta1();
            optimizer_.step(zero_.shard_params().data(), zero_.shard_grads().data(), scheduler_.get_lr(), beta1, beta2,
                            tensors_);
            zero_.publish_parameters();
            scheduler_.step();
        } else {
            skip_non_finite_step();
        }
        zero_.zero_gradients();
        report_progress();
        ++global_steps_;
        global_samples_ += batch_.train_batch_size;
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

    void report_progress() const {
        if (comm_.rank() != 0 || !cfg_.steps_per_print || (global_steps_ + 1) % cfg_.steps_per_print.value != 0) return;
        std::ostringstream line;
        line << "[Rank 0] step=" << global_steps_ + 1 << ", skipped=" << skipped_steps_ << ", lr=[" << get_lr()[0]
             << "], mom=[[";
        const auto mom = get_mom()[0];
        for (std::size_t i = 0; i < mom.size(); ++i) line << (i ? ", " : "") << mom[i];
        line << "]]";
        log_line(LogLevel::info, line.str());
    }

    Comm comm_;
    Config cfg_;
    BatchSizes batch_;
    Model model_;
    ZeroState<Z, Model, Comm> zero_;
    optimizer_type optimizer_;
    sched::LRScheduler scheduler_;
    std::vector<Segment> tensors_;
    std::vector<float> input_, scaled_grad_output_;
    std::size_t batch_in_flight_ = 0;
    std::int64_t global_steps_ = 0, global_samples_ = 0, skipped_steps_ = 0, micro_steps_ = 0;
    int consecutive_skips_ = 0;
    double global_grad_norm_ = 0.0;
    int local_rank_ = comm::init_distributed().local_rank;
    bool step_applied_ = false, training_ = true;
};

}  // namespace ds
