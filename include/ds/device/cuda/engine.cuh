#pragma once
/// @file
/// `ds::DeviceTraits<ds::Cuda>`: `ds::Engine<Model, Opt, Z, P, ds::Cuda, Comm>` on one GPU per
/// rank. The model runs as `cuda::DeviceSequential` on the context's compute stream, its
/// parameters, gradients and optimizer states live in device memory, and the step is the
/// CPU engine's own (clipping, loss scaling, skipping, schedule) and so are the ZeRO stages:
/// `ZeroState` over `cuda::DeviceMemory`, with `cuda::FlatOptimizer`. Every precision and
/// ZeRO stage runs, and MoE layers (`cuda::DeviceLayer<nn::BasicMoE>`, expert parallelism
/// over the communicator's groups). The communicator must take device buffers
/// (`comm::Nccl`, `comm::CudaMpi`; a `comm::Single` world becomes `comm::CudaSingle`).
///
/// ```cpp
/// #include <ds/device/cuda/engine.cuh>
/// ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<2>, ds::BF16, ds::Cuda> engine(cfg);
/// ```

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_runtime_api.h>

#include <ds/comm/cuda_single.hpp>
#include <ds/comm/distributed.hpp>
#include <ds/comm/single.hpp>
#include <ds/config/config.hpp>
#include <ds/device/cuda/convert.cuh>
#include <ds/device/cuda/device_memory.cuh>
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
#include <ds/nn/model.hpp>
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
    /// Device bytes held for every layer: the GEMM's workspace.
    std::size_t buffer_bytes() const { return gemm_.workspace_bytes(); }

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

/// Every communicator the engine's state uses orders its collectives after `stream`, the
/// compute stream its buffers are written on.
template <class Comm>
void order_after(Comm& comm, cudaStream_t stream) {
    if constexpr (requires { comm.set_producer(stream); }) comm.set_producer(stream);
    else if constexpr (requires { comm.set_stream(stream); }) comm.set_stream(stream);
    else static_assert(sizeof(Comm) == 0, "ds::Cuda: the communicator must take device buffers (comm::Nccl, comm::CudaMpi)");
}

/// A communicator bound to one GPU (`Nccl`, to the device current when it was made) must
/// be bound to the engine's: NCCL would otherwise read and write another GPU's memory.
template <class Comm>
void check_same_device(const Comm& comm, int engine_device) {
    if constexpr (requires { comm.device(); }) {
        const int bound = comm.device();
        if (bound != engine_device)
            throw std::invalid_argument("ds::Cuda: the communicator is on GPU " + std::to_string(bound) +
                                        " but this rank's engine is on GPU " + std::to_string(engine_device) +
                                        " (local_rank % device count): call cudaSetDevice(" +
                                        std::to_string(engine_device) + ") before making the communicator");
    }
}

/// Rank 0's initial parameters, broadcast through device memory (the communicator takes
/// device buffers only), as every rank's.
template <class Comm>
std::vector<float> broadcast_initial(Comm& world, std::span<const float> initial, cudaStream_t stream) {
    std::vector<float> agreed(initial.begin(), initial.end());
    DeviceBuffer<float> values(agreed.size());
    values.copy_from(agreed, stream);
    world.broadcast(values.data(), values.size(), 0);
    values.copy_to(agreed, stream);
    return agreed;
}

}  // namespace cuda

template <>
struct DeviceTraits<Cuda> {
    using Context = cuda::EngineContext;
    static constexpr bool host_buffers = false;

    /// A `comm::Single` world copies device buffers (`comm::CudaSingle`); any other
    /// communicator must take them itself (`comm::Nccl`, `comm::CudaMpi`).
    template <class Comm>
    using communicator = std::conditional_t<std::is_same_v<Comm, comm::Single>, comm::CudaSingle, Comm>;

    template <model Model, class T>
    using network = cuda::DeviceSequential<typename Model::template with_storage<T>>;
    /// The CPU engine's own ZeRO stages, over device buffers on the compute stream.
    template <zero_policy Z, precision_policy P, model Model, comm::communicator Comm>
    using state = ZeroState<Z, P, Model, Comm, cuda::DeviceMemory>;
    template <optimizer Opt>
    using optimizer = cuda::FlatOptimizer<Opt>;

    template <class Network>
    static Network make_network(std::size_t max_batch, Context& ctx) {
        return Network(max_batch, ctx.layers());
    }
    template <class State, class Comm>
    static State make_state(Context& ctx, Comm& world, Comm& experts, const Config& cfg,
                            std::span<const float> initial) {
        for (Comm* comm : {&world, &experts}) {
            cuda::check_same_device(*comm, ctx.device());
            cuda::order_after(*comm, ctx.stream());
        }
        return State(world, experts, cfg, cuda::broadcast_initial(world, initial, ctx.stream()),
                     cuda::DeviceMemory(ctx.stream()));
    }
    template <class Optimizer>
    static Optimizer make_optimizer(Context& ctx, const typename Optimizer::Hyper& hyper, std::size_t elements) {
        return Optimizer(hyper, elements, ctx.stream());
    }
    /// Waits for the compute stream (which backward's reductions are ordered before).
    static void synchronize(Context& ctx) { DS_CUDA_CHECK(cudaStreamSynchronize(ctx.stream())); }
    /// An all-to-all of host values over the expert-parallel group, whose communicator
    /// takes device buffers: staged through the device.
    static void all_to_all_from_host(comm::ExpertExchange& group, const float* in, float* out, std::size_t n,
                                     Context& ctx) {
        const std::size_t total = n * static_cast<std::size_t>(group.size());
        cuda::DeviceBuffer<float> send(total), received(total);
        send.copy_from({in, total}, ctx.stream());
        DS_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));  // the group's collectives are not ordered after it
        group.all_to_all(send.data(), received.data(), n);
        received.copy_to({out, total}, ctx.stream());
    }

    /// A batch uploaded to the device and cast to the model's T there, the logits cast to
    /// fp32 and downloaded for the host's loss, and the loss gradient uploaded and cast to T.
    /// The host side of each transfer is pinned, so the uploads return at once: only the
    /// logits, which the host's loss needs, wait for the device.
    template <class T, class In = float>
    class Io {
        static_assert(std::is_same_v<In, float>, "ds::Cuda: token-id inputs (ds::nn::Tokens) run on ds::Cpu only so far");

    public:
        Io(std::size_t inputs, std::size_t outputs, Context& ctx)
            : stream_(ctx.stream()), input_(inputs), grad_output_(outputs), host_input_(inputs),
              host_grad_output_(outputs), host_logits_(outputs) {
            if constexpr (!std::is_same_v<T, float>) staged_ = cuda::DeviceBuffer<float>(std::max(inputs, outputs));
        }
        /// The engine's last device part to be built, so the first to go: it waits for the
        /// stream, so the buffers the engine frees after it (optimizer, ZeRO state, model) are
        /// idle when they return to the caching allocator, which records no streams.
        ~Io() { (void)cudaStreamSynchronize(stream_); }
        Io(const Io&) = delete;
        Io& operator=(const Io&) = delete;
        const T* upload_inputs(std::span<const float> inputs) {
            upload(inputs.data(), inputs.size(), host_input_, input_copied_, input_.data());
            return input_.data();
        }
        std::span<const float> download_outputs(const T* outputs, std::size_t n) {
            const float* from;
            if constexpr (std::is_same_v<T, float>) {
                from = outputs;
            } else {
                cuda::convert(outputs, staged_.data(), n, stream_);
                from = staged_.data();
            }
            DS_CUDA_CHECK(
                cudaMemcpyAsync(host_logits_.data(), from, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
            DS_CUDA_CHECK(cudaStreamSynchronize(stream_));
            return {host_logits_.data(), n};
        }
        const T* upload_grad_output(const float* grad, std::size_t n) {
            upload(grad, n, host_grad_output_, grad_output_copied_, grad_output_.data());
            return grad_output_.data();
        }
        /// Device bytes (the pinned host side is not device memory).
        std::size_t buffer_bytes() const { return input_.bytes() + grad_output_.bytes() + staged_.bytes(); }

    private:
        /// fp32 host values into T on the device (through the fp32 staging buffer for 2-byte
        /// T), by way of `pinned`, which `copied` says the previous upload has left.
        void upload(const float* host, std::size_t n, cuda::PinnedBuffer<float>& pinned, cuda::Event& copied, T* to) {
            copied.synchronize();  // at once, unless that copy is still queued
            std::copy_n(host, n, pinned.data());
            float* landing;
            if constexpr (std::is_same_v<T, float>) landing = to;
            else landing = staged_.data();
            DS_CUDA_CHECK(cudaMemcpyAsync(landing, pinned.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream_));
            copied.record(stream_);
            if constexpr (!std::is_same_v<T, float>) cuda::convert(landing, to, n, stream_);
        }

        cudaStream_t stream_;
        cuda::DeviceBuffer<T> input_, grad_output_;
        cuda::DeviceBuffer<float> staged_;
        cuda::PinnedBuffer<float> host_input_, host_grad_output_, host_logits_;
        cuda::Event input_copied_, grad_output_copied_;  ///< when each pinned buffer is free again
    };
};

}  // namespace ds
