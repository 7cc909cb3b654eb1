#pragma once
/// @file
/// `DS_HOST_DEVICE`: marks math that both g++ and nvcc compile (DESIGN principle 3).

#if defined(__CUDACC__)
/// Expands to `__host__ __device__ inline` under nvcc and to `inline` elsewhere, so the
/// same functor runs in the CPU backend's loops and in CUDA kernels.
#define DS_HOST_DEVICE __host__ __device__ inline
#else
#define DS_HOST_DEVICE inline
#endif
