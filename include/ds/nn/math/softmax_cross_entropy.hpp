#pragma once
/// @file
/// Softmax cross-entropy of one sample, shared by `ds::nn::CrossEntropyLoss` and the CUDA
/// kernel: computed in double as logsumexp(z) − z[label]; the gradient is
/// (softmax(z) − onehot(label)) / batch, the mean reduction's.

#include <cstddef>
#include <cstdint>

#include <ds/util/host_device.hpp>

#if defined(__CUDACC__)
#define DS_MATH_EXP ::exp
#define DS_MATH_LOG ::log
#else
#include <cmath>
#define DS_MATH_EXP std::exp
#define DS_MATH_LOG std::log
#endif

namespace ds::nn::math {

/// The loss of `classes` logits `z` with class `label`; writes d loss_mean / d z to `grad`.
DS_HOST_DEVICE double softmax_cross_entropy(const float* z, std::size_t classes, std::int32_t label, std::size_t batch,
                                            float* grad) {
    double max = z[0];
    for (std::size_t c = 1; c < classes; ++c) max = z[c] > max ? z[c] : max;
    double sum = 0.0;
    for (std::size_t c = 0; c < classes; ++c) sum += DS_MATH_EXP(z[c] - max);
    for (std::size_t c = 0; c < classes; ++c)
        grad[c] = static_cast<float>((DS_MATH_EXP(z[c] - max) / sum - (c == static_cast<std::size_t>(label) ? 1.0 : 0.0)) /
                                     static_cast<double>(batch));
    return max + DS_MATH_LOG(sum) - z[label];
}

}  // namespace ds::nn::math

#undef DS_MATH_EXP
#undef DS_MATH_LOG
