#pragma once
/// @file
/// PR-MoE's residual mix of one token, shared by the CPU MoE layer and the CUDA kernels
/// (DESIGN principle 3): out = moe·c₀ + mlp·c₁ with c = softmax(z), and its backward.

#include <cstddef>

#include <ds/util/host_device.hpp>

#if defined(__CUDACC__)
#define DS_MATH_EXPF ::expf
#else
#include <cmath>
#define DS_MATH_EXPF std::exp
#endif

namespace ds::nn::math {

/// The two mixing coefficients of one token from its coefficient logits (bias added).
DS_HOST_DEVICE void residual_coefficients(float z0, float z1, float* c) {
    const float top = z0 > z1 ? z0 : z1, e0 = DS_MATH_EXPF(z0 - top), e1 = DS_MATH_EXPF(z1 - top);
    c[0] = e0 / (e0 + e1);
    c[1] = e1 / (e0 + e1);
}

/// The backward of one token's out = moe·c₀ + mlp·c₁ over m values: d_moe = dy·c₀,
/// d_mlp = dy·c₁, and through the softmax dz_k = c_k (dc_k − c·dc), dc = (dy·moe, dy·mlp).
DS_HOST_DEVICE void residual_backward(const float* dy, const float* c, const float* moe, const float* mlp,
                                      std::size_t m, float* d_moe, float* d_mlp, float* dz) {
    double dc0 = 0.0, dc1 = 0.0;
    for (std::size_t i = 0; i < m; ++i) {
        const float g = dy[i];
        d_moe[i] = g * c[0];
        d_mlp[i] = g * c[1];
        dc0 += double(g) * moe[i];
        dc1 += double(g) * mlp[i];
    }
    const double dot = c[0] * dc0 + c[1] * dc1;
    dz[0] = static_cast<float>(c[0] * (dc0 - dot));
    dz[1] = static_cast<float>(c[1] * (dc1 - dot));
}

}  // namespace ds::nn::math

#undef DS_MATH_EXPF
