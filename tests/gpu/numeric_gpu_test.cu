// ds::half and ds::bf16 in CUDA kernels: the same functions give the same bits on the device
// as on the host, for every 16-bit pattern and for a million float inputs, and they agree
// with the hardware conversions (__float2half_rn, __float2bfloat16_rn), a NaN for a NaN.
#include <cstdint>
#include <cstdio>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <ds/numeric/bf16.hpp>
#include <ds/numeric/half.hpp>

#include "device_or_skip.hpp"

namespace {

struct Results {
    std::uint16_t ours_half, ours_bf16, hardware_half, hardware_bf16;
    std::uint32_t widened_half, widened_bf16;
};

__global__ void convert(const std::uint32_t* inputs, Results* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float f = __uint_as_float(inputs[i]);
    const __half h = __float2half_rn(f);
    const __nv_bfloat16 b = __float2bfloat16_rn(f);
    out[i] = {ds::half(f).bits, ds::bf16(f).bits, __half_as_ushort(h), __bfloat16_as_ushort(b),
              __float_as_uint(static_cast<float>(ds::half::from_bits(static_cast<std::uint16_t>(i & 0xffff)))),
              __float_as_uint(static_cast<float>(ds::bf16::from_bits(static_cast<std::uint16_t>(i & 0xffff))))};
}

// Ours gives every NaN as 0x7fff; the hardware's may carry another payload or sign, which
// is still a NaN (only the bits' value, not the payload, matters to training).
bool is_nan_half(std::uint16_t bits) { return (bits & 0x7c00u) == 0x7c00u && (bits & 0x03ffu) != 0; }
bool is_nan_bf16(std::uint16_t bits) { return (bits & 0x7f80u) == 0x7f80u && (bits & 0x007fu) != 0; }
bool same_half(std::uint16_t ours, std::uint16_t hardware) {
    return ours == hardware || (is_nan_half(ours) && is_nan_half(hardware));
}
bool same_bf16(std::uint16_t ours, std::uint16_t hardware) {
    return ours == hardware || (is_nan_bf16(ours) && is_nan_bf16(hardware));
}

bool check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) std::printf("FAILED: %s: %s\n", what, cudaGetErrorString(e));
    return e == cudaSuccess;
}

}  // namespace

int main() {
    if (const int code = device_or_skip()) return code;
    std::vector<std::uint32_t> inputs;
    for (std::uint64_t u = 0; u < (1ull << 32); u += 4093) inputs.push_back(static_cast<std::uint32_t>(u));
    for (std::uint32_t p = 0; p < 65536; ++p) {  // every half and bf16 value, widened
        inputs.push_back(ds::bit_cast<std::uint32_t>(static_cast<float>(ds::half::from_bits(static_cast<std::uint16_t>(p)))));
        inputs.push_back(static_cast<std::uint32_t>(p) << 16);
    }
    const int n = static_cast<int>(inputs.size());
    std::uint32_t* d_in = nullptr;
    Results* d_out = nullptr;
    if (!check(cudaMalloc(&d_in, n * sizeof(std::uint32_t)), "cudaMalloc") ||
        !check(cudaMalloc(&d_out, n * sizeof(Results)), "cudaMalloc") ||
        !check(cudaMemcpy(d_in, inputs.data(), n * sizeof(std::uint32_t), cudaMemcpyHostToDevice), "copy"))
        return 1;
    convert<<<(n + 255) / 256, 256>>>(d_in, d_out, n);
    std::vector<Results> out(n);
    if (!check(cudaGetLastError(), "launch") ||
        !check(cudaMemcpy(out.data(), d_out, n * sizeof(Results), cudaMemcpyDeviceToHost), "copy back"))
        return 1;
    long mismatches = 0;
    for (int i = 0; i < n; ++i) {
        const float f = ds::bit_cast<float>(inputs[i]);
        const auto pattern = static_cast<std::uint16_t>(i & 0xffff);
        const bool ok = out[i].ours_half == ds::half(f).bits && out[i].ours_bf16 == ds::bf16(f).bits &&
                        same_half(out[i].ours_half, out[i].hardware_half) && same_bf16(out[i].ours_bf16, out[i].hardware_bf16) &&
                        out[i].widened_half == ds::bit_cast<std::uint32_t>(static_cast<float>(ds::half::from_bits(pattern))) &&
                        out[i].widened_bf16 == ds::bit_cast<std::uint32_t>(static_cast<float>(ds::bf16::from_bits(pattern)));
        if (!ok && mismatches++ < 5)
            std::printf("mismatch for float bits %08x: device half %04x hw %04x host %04x; bf16 %04x hw %04x host %04x\n",
                        inputs[i], out[i].ours_half, out[i].hardware_half, ds::half(f).bits, out[i].ours_bf16,
                        out[i].hardware_bf16, ds::bf16(f).bits);
    }
    cudaFree(d_in);
    cudaFree(d_out);
    std::printf("%d inputs, %ld mismatches\n", n, mismatches);
    return mismatches == 0 ? 0 : 1;
}
