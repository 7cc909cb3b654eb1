#pragma once
/// @file
/// `ds::DeviceTraits<ds::Cuda>`: `ds::Engine<Model, Opt, Z, P, ds::Cuda, Comm>` on one GPU per
/// rank. The model runs as `cuda::DeviceSequential` on the context's compute stream, its
/// parameters, gradients and optimizer states live in device memory, and the step is the
/// CPU engine's own (clipping, skipping, schedule), over `cuda::DeviceZeroState` and
/// `cuda::FlatOptimizer`. So far: fp32 at ZeRO stage 0 (DeepSpeed's data parallelism); the
/// communicator must take device buffers (`comm::Single`, `comm::Nccl`, `comm::CudaMpi`).
///
/// ```cpp
/// #include <ds/device/cuda/engine.cuh>
/// ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, ds::FP32, ds::Cuda> engine(cfg);
/// ```

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include <cuda_runtime_api.h>

#include <ds/comm/distributed.hpp>
#include <ds/config/config.hpp>
#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/flat_optimizer.cuh>
#include <ds/device/cuda/gemm.hpp>
#include <ds/device/cuda/layer_kernels.cuh>
#include <ds/device/cuda/memory.hpp>
#include <ds/device/cuda/reduce.cuh>
#include <ds/device/cuda/sequential.cuh>
#include <ds/device/cuda/stream.hpp>
#include <ds/engine/device_traits.hpp>
#include <ds/engine/flat_optimizer.hpp>
#include <ds/engine/zero_state.hpp>
#include <ds/policy/precision.hpp>
#include <ds/policy/zero.hpp>

namespace ds {

namespace cuda {

/// The engine's GPU: this rank's device (`local_rank % device count`, as DeepSpeed picks
/// it), its compute stream and the GEMM bound to that stream.
class EngineContext {
public:
    EngineContext() : device_(select_device()) {}
    cudaStream_t stream() const { return stream_; }
    LayerContext layers() { return {stream_.get(), &gemm_}; }
    int device() const { return device_; }

private:
    static int select_device() {
        int count = 0;
        DS_CUDA_CHECK(cudaGetDeviceCount(&count));
        const int device = comm::init_distributed().local_rank % count;
        DS_CUDA_CHECK(cudaSetDevice(device));
        return device;
    }
    int device_;
    Stream stream_;
    Gemm gemm_;
};

/// ZeRO stage 0 in fp32 on the device: parameters and gradients in full, the gradients
/// averaged over the ranks by one all-reduce per `reduce_bucket_size` at the boundary
/// (SPEC §5.3), the same contract as `ds::ZeroState` for the engine.
template <zero_policy Z, precision_policy P, class Model, comm::communicator Comm>
class DeviceZeroState {
    static_assert(!Z::partitions_optimizer_states, "ds::Cuda: ZeRO stages 1-3 on the GPU are not built yet");
    static_assert(std::is_same_v<P, FP32>, "ds::Cuda: bf16 and fp16 on the GPU are not built yet");
    static_assert(Model::expert_param_count == 0, "ds::Cuda: MoE layers on the GPU are not built yet");

public:
    static constexpr std::size_t psi = Model::param_count;
    using Range = typename Model::LayerRange;
    using compute_type = float;
    using grad_type = float;
    using Part = ShardPart<grad_type>;

    /// Uploads `initial` and broadcasts rank 0's copy on the device (the host copy was not).
    DeviceZeroState(Comm& world, Comm& /*experts*/, const Config& cfg, std::span<const float> initial,
                    EngineContext& ctx)
        : comm_(world), cfg_(cfg), stream_(ctx.stream()), ranks_(static_cast<std::size_t>(world.size())),
          params_(psi), grads_(psi) {
        if constexpr (requires { world.set_producer(stream_); }) world.set_producer(stream_);
        set_full_parameters(initial);
        comm_.broadcast(params_.data(), psi, 0);
        zero_gradients();
    }

    std::size_t padded_params() const { return psi; }
    std::size_t optimizer_elements() const { return psi; }

    void begin_pass(Pass) {}
    const float* parameters(Range r) { return params_.data() + r.offset; }
    void forward_done(Range) {}
    float* gradients(Range r) { return grads_.data() + r.offset; }
    void backward_done(Range) {}
    void backward_finished() {}

    /// The averaging all-reduce over the world, in `reduce_bucket_size` pieces: ÷ predivide
    /// factor, SUM, × factor / dp, or ÷ dp then SUM with `prescale_gradients`.
    void reduce_gradients() {
        const auto bucket = static_cast<std::size_t>(cfg_.zero_optimization.reduce_bucket_size);
        const double f = cfg_.gradient_predivide_factor, dp = static_cast<double>(ranks_);
        for (std::size_t first = 0; first < psi; first += bucket) {
            float* values = grads_.data() + first;
            const std::size_t n = std::min(bucket, psi - first);
            if (cfg_.prescale_gradients) scale(values, n, static_cast<float>(1.0 / dp), stream_);
            else if (f != 1.0) scale(values, n, static_cast<float>(1.0 / f), stream_);
            synchronize();  // the backward's and the scaling's kernels are done before a communicator reads
            comm_.all_reduce(values, n, comm::ReduceOp::sum);
            if (!cfg_.prescale_gradients && f != dp) scale(values, n, static_cast<float>(f / dp), stream_);
        }
    }
    /// Σ g² in float64 on the device (the same on every rank after the all-reduce).
    double gradient_square_norm() { return square_sum(grads_.data(), psi, stream_); }

    std::array<Part, 1> shard_parts() { return {Part{params_.data(), grads_.data(), psi}}; }
    std::span<float> shard_grads() { return {grads_.data(), psi}; }
    /// The gradient buffer (device memory).
    std::span<float> accumulated_gradients() { return {grads_.data(), psi}; }
    void publish_parameters() {}  // fp32: the optimizer updated the parameters themselves
    void zero_gradients() { DS_CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), stream_)); }

    std::vector<float> full_parameters() {
        std::vector<float> host(psi);
        synchronize();
        params_.copy_to(host);
        return host;
    }
    void set_full_parameters(std::span<const float> values) {
        params_.copy_from(values, stream_);
        synchronize();  // `values` may go away when we return
    }

    std::size_t parameter_bytes() const { return params_.bytes(); }
    std::size_t master_bytes() const { return 0; }
    std::size_t gradient_bytes() const { return grads_.bytes(); }
    std::size_t buffer_bytes() const { return 0; }

private:
    void synchronize() const { DS_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

    Comm& comm_;
    const Config& cfg_;
    cudaStream_t stream_;
    std::size_t ranks_;
    DeviceBuffer<float> params_, grads_;
};

}  // namespace cuda

template <>
struct DeviceTraits<Cuda> {
    using Context = cuda::EngineContext;
    static constexpr bool host_buffers = false;

    template <class Model, class T>
    using network = cuda::DeviceSequential<Model>;
    template <zero_policy Z, precision_policy P, class Model, comm::communicator Comm>
    using state = cuda::DeviceZeroState<Z, P, Model, Comm>;
    template <optimizer Opt>
    using optimizer = cuda::FlatOptimizer<Opt>;

    template <class Network>
    static Network make_network(std::size_t max_batch, Context& ctx) {
        return Network(max_batch, ctx.layers());
    }
    template <class State, class Comm>
    static State make_state(Context& ctx, Comm& world, Comm& experts, const Config& cfg,
                            std::span<const float> initial) {
        return State(world, experts, cfg, initial, ctx);
    }
    template <class Optimizer>
    static Optimizer make_optimizer(Context& ctx, const typename Optimizer::Hyper& hyper, std::size_t elements) {
        return Optimizer(hyper, elements, ctx.stream());
    }

    /// A batch uploaded to the device, the logits downloaded for the host's loss, and the
    /// loss gradient uploaded again (fp32; the copies wait for / are waited on by the stream).
    template <class T>
    class Io {
        static_assert(std::is_same_v<T, float>, "ds::Cuda: only fp32 so far");

    public:
        Io(std::size_t inputs, std::size_t outputs, Context& ctx)
            : stream_(ctx.stream()), input_(inputs), grad_output_(outputs), logits_(outputs) {}
        const float* upload_inputs(std::span<const float> inputs) {
            DS_CUDA_CHECK(cudaMemcpyAsync(input_.data(), inputs.data(), inputs.size_bytes(), cudaMemcpyHostToDevice,
                                          stream_));
            return input_.data();
        }
        std::span<const float> download_outputs(const float* outputs, std::size_t n) {
            DS_CUDA_CHECK(cudaMemcpyAsync(logits_.data(), outputs, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
            DS_CUDA_CHECK(cudaStreamSynchronize(stream_));
            return {logits_.data(), n};
        }
        const float* upload_grad_output(const float* grad, std::size_t n) {
            DS_CUDA_CHECK(cudaMemcpyAsync(grad_output_.data(), grad, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
            DS_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host buffer may change after we return
            return grad_output_.data();
        }
        std::size_t buffer_bytes() const { return input_.bytes() + grad_output_.bytes() + logits_.size() * sizeof(float); }

    private:
        cudaStream_t stream_;
        cuda::DeviceBuffer<float> input_, grad_output_;
        std::vector<float> logits_;
    };
};

}  // namespace ds
