#pragma once
/// @file
/// `ds::Adam<>` and `ds::AdamW<>`: DeepSpeed's FusedAdam math (SPEC §2.1).

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <ds/config/config.hpp>
#include <ds/optim/optimizer.hpp>
#include <ds/util/host_device.hpp>

namespace ds {

/// Adam's hyper-parameters, with FusedAdam's defaults.
struct AdamHyper {
    double lr = 1e-3;
    std::array<double, 2> betas{0.9, 0.999};
    double eps = 1e-8;
    double weight_decay = 0.0;
    bool adam_w_mode = true;  ///< decoupled weight decay; false: L2 added to the gradient
    bool bias_correction = true;
    constexpr bool operator==(const AdamHyper&) const = default;
};

/// One Adam update for one element, precomputed for a step: a functor that CPU loops and
/// CUDA kernels both call (DESIGN principle 3). All math in fp32, as in the fused kernel.
struct AdamUpdate {
    float lr, beta1, beta2, eps, weight_decay;
    float bias_correction1, bias_correction2;  ///< 1 - beta^t, or 1 without bias correction
    bool adam_w_mode;

    /// The update of applied step `step` (1-based) with learning rate `lr`.
    static AdamUpdate at(const AdamHyper& h, double lr, std::int64_t step) {
        const double bc1 = h.bias_correction ? 1.0 - std::pow(h.betas[0], static_cast<double>(step)) : 1.0;
        const double bc2 = h.bias_correction ? 1.0 - std::pow(h.betas[1], static_cast<double>(step)) : 1.0;
        return {static_cast<float>(lr),        static_cast<float>(h.betas[0]), static_cast<float>(h.betas[1]),
                static_cast<float>(h.eps),     static_cast<float>(h.weight_decay), static_cast<float>(bc1),
                static_cast<float>(bc2),       h.adam_w_mode};
    }

    /// Element `i`: p, m = states[0], v = states[1] updated in place from the gradient. eps is
    /// added after the square root and the bias correction, as FusedAdam does.
    DS_HOST_DEVICE void operator()(std::size_t i, float* p, const float* grad, float* const* states) const {
        float& m = states[0][i];
        float& v = states[1][i];
        float g = grad[i];
        if (!adam_w_mode) g += weight_decay * p[i];
        m = beta1 * m + (1.0f - beta1) * g;
        v = beta2 * v + (1.0f - beta2) * g * g;
        const float denom = sqrtf(v / bias_correction2) + eps;
        float update = (m / bias_correction1) / denom;
        if (adam_w_mode) update += weight_decay * p[i];
        p[i] -= lr * update;
    }
};

/// Adam as DeepSpeed's `"type": "Adam"`: decoupled weight decay unless `adam_w_mode` is false.
template <AdamHyper Defaults = AdamHyper{}>
struct Adam {
    using Hyper = AdamHyper;
    using Update = AdamUpdate;
    static constexpr OptimizerType type = OptimizerType::Adam;
    static constexpr Hyper defaults = Defaults;
    static constexpr std::size_t state_buffers = 2;  // exp_avg, exp_avg_sq

    static constexpr bool accepts(OptimizerType t) { return t == OptimizerType::Adam || t == OptimizerType::AdamW; }
    static AdamUpdate update(const Hyper& h, double lr, std::int64_t step) { return Update::at(h, lr, step); }
    static constexpr Hyper hyper_from(const OptimizerParams& p) {
        return {p.lr, p.betas, p.eps, p.weight_decay, p.adam_w_mode, p.bias_correction};
    }
};

/// AdamW: always decoupled weight decay (`adam_w_mode` is ignored, as in DeepSpeed).
template <AdamHyper Defaults = AdamHyper{}>
struct AdamW {
    static_assert(Defaults.adam_w_mode, "ds::AdamW always decouples weight decay; use ds::Adam for L2");
    using Hyper = AdamHyper;
    using Update = AdamUpdate;
    static constexpr OptimizerType type = OptimizerType::AdamW;
    static constexpr Hyper defaults = Defaults;
    static constexpr std::size_t state_buffers = 2;

    static constexpr bool accepts(OptimizerType t) { return t == OptimizerType::AdamW || t == OptimizerType::Adam; }
    static AdamUpdate update(Hyper h, double lr, std::int64_t step) {
        h.adam_w_mode = true;
        return Update::at(h, lr, step);
    }
    static constexpr Hyper hyper_from(const OptimizerParams& p) {
        return {p.lr, p.betas, p.eps, p.weight_decay, true, p.bias_correction};
    }
};

static_assert(optimizer<Adam<>> && optimizer<AdamW<>>);

}  // namespace ds
