#pragma once
/// @file
/// `ds::comm::CudaSingle`: a world of one rank whose buffers are in device memory — what a
/// `ds::Engine<..., ds::Cuda>` runs over when it is given `comm::Single`.

#include <cstddef>

#include <cuda_runtime_api.h>

#include <ds/comm/single.hpp>
#include <ds/device/cuda/error.hpp>

namespace ds::comm {

/// Device-to-device copies on `stream` (the legacy default stream unless set), after the
/// work already on it.
struct DeviceCopy {
    cudaStream_t stream = nullptr;
    template <class T>
    void operator()(const T* in, T* out, std::size_t n) const {
        if (n) DS_CUDA_CHECK(cudaMemcpyAsync(out, in, n * sizeof(T), cudaMemcpyDeviceToDevice, stream));
    }
};

/// As `Single`, over device buffers: `set_stream` names the stream its copies follow.
using CudaSingle = BasicSingle<DeviceCopy>;
static_assert(communicator<CudaSingle>);

}  // namespace ds::comm
