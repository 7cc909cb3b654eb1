#pragma once
/// @file
/// The whole public API of dspp. Parts that need MPI, OpenBLAS or zlib are included
/// when their headers are on the include path. The CUDA backend (ds/device/cuda/,
/// ds/comm/nccl.hpp, ds/comm/cuda_*.hpp) is included by name: its headers bring
/// CUDA's global `half`.

#include <ds/comm/communicator.hpp>
#include <ds/comm/distributed.hpp>
#include <ds/comm/expert_parallel.hpp>
#if __has_include(<mpi.h>)
#include <ds/comm/mpi.hpp>
#endif
#include <ds/comm/single.hpp>
#include <ds/comm/threads.hpp>
#include <ds/comm/worker.hpp>
#include <ds/config/check.hpp>
#include <ds/config/check_result.hpp>
#include <ds/config/config.hpp>
#include <ds/config/enums.hpp>
#include <ds/config/json.hpp>
#include <ds/config/maybe.hpp>
#include <ds/config/print.hpp>
#include <ds/config/reflect.hpp>
#include <ds/data/cifar10.hpp>
#include <ds/data/data_loader.hpp>
#include <ds/data/dataset.hpp>
#include <ds/data/distributed_sampler.hpp>
#if __has_include(<zlib.h>)
#include <ds/data/idx.hpp>
#endif
#include <ds/data/synthetic.hpp>
#include <ds/device/cpu/conv_kernels.hpp>
#include <ds/device/cpu/convert.hpp>
#if __has_include(<cblas.h>)
#include <ds/device/cpu/gemm.hpp>
#endif
#include <ds/device/cpu/host_memory.hpp>
#include <ds/device/cpu/simd.hpp>
#include <ds/device/cpu/threads.hpp>
#include <ds/engine/device_traits.hpp>
#include <ds/engine/engine.hpp>
#include <ds/engine/engine_checkpoints.hpp>
#include <ds/engine/flat_buffers.hpp>
#include <ds/engine/flat_optimizer.hpp>
#include <ds/engine/initialize.hpp>
#include <ds/engine/partition.hpp>
#include <ds/engine/wall_clock.hpp>
#include <ds/engine/zero_state.hpp>
#include <ds/io/checkpoint.hpp>
#include <ds/io/model_weights.hpp>
#include <ds/io/safetensors.hpp>
#include <ds/nn/conv2d.hpp>
#include <ds/nn/cross_entropy.hpp>
#include <ds/nn/embedding.hpp>
#include <ds/nn/flatten.hpp>
#include <ds/nn/gating.hpp>
#include <ds/nn/layer.hpp>
#if __has_include(<cblas.h>)
#include <ds/nn/linear.hpp>
#endif
#include <ds/nn/math/im2col.hpp>
#include <ds/nn/math/max_pool.hpp>
#include <ds/nn/math/moe.hpp>
#include <ds/nn/math/relu.hpp>
#include <ds/nn/math/softmax_cross_entropy.hpp>
#include <ds/nn/max_pool2d.hpp>
#include <ds/nn/model.hpp>
#include <ds/nn/moe.hpp>
#include <ds/nn/parameter.hpp>
#include <ds/nn/relu.hpp>
#include <ds/nn/residual.hpp>
#include <ds/nn/sequential.hpp>
#include <ds/nn/shape.hpp>
#include <ds/nn/tied.hpp>
#include <ds/numeric/bf16.hpp>
#include <ds/numeric/bit_cast.hpp>
#include <ds/numeric/half.hpp>
#include <ds/numeric/storage.hpp>
#include <ds/optim/adam.hpp>
#include <ds/optim/lamb.hpp>
#include <ds/optim/lion.hpp>
#include <ds/optim/loss_scaler.hpp>
#include <ds/optim/optimizer.hpp>
#include <ds/optim/sgd.hpp>
#include <ds/optim/strided_update.hpp>
#include <ds/policy/device.hpp>
#include <ds/policy/policies_for.hpp>
#include <ds/policy/precision.hpp>
#include <ds/policy/zero.hpp>
#include <ds/sched/lr_range_test.hpp>
#include <ds/sched/lr_scheduler.hpp>
#include <ds/sched/one_cycle.hpp>
#include <ds/sched/warmup.hpp>
#include <ds/sched/warmup_cosine.hpp>
#include <ds/util/host_device.hpp>
#include <ds/util/log.hpp>
#include <ds/util/rng.hpp>
