#pragma once
// The GPU tests' start: without a usable CUDA device they print "skipped: no CUDA device"
// and exit 77 (CTest: skipped) — unless DSPP_REQUIRE_GPU is set, as scripts/gpu-check sets
// it, where a missing device or a broken driver is a failure.
#include <cstdio>
#include <cstdlib>

#include <cuda_runtime_api.h>

/// 0 when a device is there; else the exit code the test should return.
inline int device_or_skip() {
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status == cudaSuccess && devices > 0) return 0;
    const char* why = status == cudaSuccess ? "no device" : cudaGetErrorString(status);
    if (std::getenv("DSPP_REQUIRE_GPU")) {
        std::printf("FAILED: no usable CUDA device (%s) and DSPP_REQUIRE_GPU is set\n", why);
        return 1;
    }
    std::printf("skipped: no CUDA device (%s)\n", why);
    return 77;
}
