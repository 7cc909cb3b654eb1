#pragma once
/// @file
/// Device tags: where the engine's buffers live and its kernels run.

#include <concepts>
#include <string_view>

namespace ds {

/// Host memory, OpenBLAS GEMMs and vectorised loops; ranks talk over MPI.
struct Cpu {
    static constexpr std::string_view name = "cpu";
};

/// NVIDIA GPUs: device memory, cuBLASLt GEMMs and CUDA kernels; ranks talk over NCCL.
struct Cuda {
    static constexpr std::string_view name = "cuda";
};

/// A device policy: a tag with a printable name.
template <class D>
concept device_policy = std::is_empty_v<D> && requires {
    { D::name } -> std::convertible_to<std::string_view>;
};

static_assert(device_policy<Cpu> && device_policy<Cuda>);

}  // namespace ds
