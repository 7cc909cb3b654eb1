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

/// `DS_UNROLL(n) for (...)`: unrolls the loop that follows, fully under nvcc (whose trip
/// counts here are compile-time) and up to n times under g++.
#define DS_PRAGMA(text) _Pragma(#text)
#if defined(__CUDACC__)
#define DS_UNROLL(n) DS_PRAGMA(unroll)
#else
#define DS_UNROLL(n) DS_PRAGMA(GCC unroll n)
#endif
