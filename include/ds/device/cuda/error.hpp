#pragma once
/// @file
/// `ds::CudaError` and the checks around every CUDA runtime, cuBLASLt and NCCL call: a
/// failure throws with the file, the line, the call and the library's own message (never
/// `exit()`), so the caller can report it, free what it holds and go on.

#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

namespace ds {

/// A failed CUDA, cuBLASLt or NCCL call.
class CudaError : public std::runtime_error {
public:
    CudaError(const char* library, const char* call, const std::string& message, const char* file, int line)
        : std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + library + ": " + call + ": " +
                             message),
          library_(library) {}
    /// "CUDA", "cuBLASLt" or "NCCL".
    const std::string& library() const { return library_; }

private:
    std::string library_;
};

namespace cuda::detail {

inline void check(cudaError_t status, const char* call, const char* file, int line) {
    if (status != cudaSuccess)
        throw CudaError("CUDA", call, std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")",
                        file, line);
}

}  // namespace cuda::detail
}  // namespace ds

/// Throws `ds::CudaError` unless the CUDA runtime call succeeds.
#define DS_CUDA_CHECK(call) ::ds::cuda::detail::check((call), #call, __FILE__, __LINE__)
/// After a kernel launch: its configuration error, if any, as `ds::CudaError`.
#define DS_CUDA_CHECK_LAUNCH() ::ds::cuda::detail::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
