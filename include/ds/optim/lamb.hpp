#pragma once
/// @file
/// `ds::Lamb<>`: DeepSpeed's FusedLamb math (SPEC §2.2), a per-tensor trust ratio on Adam's direction.

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <ds/config/config.hpp>
#include <ds/optim/optimizer.hpp>
#include <ds/util/host_device.hpp>

namespace ds {

/// Lamb's hyper-parameters, with FusedLamb's defaults.
struct LambHyper {
    double lr = 1e-3;
    std::array<double, 2> betas{0.9, 0.999};
    double eps = 1e-8;
    double weight_decay = 0.0;
    bool bias_correction = true;
    double max_coeff = 10.0;
    double min_coeff = 0.01;
    bool eps_inside_sqrt = false;
    constexpr bool operator==(const LambHyper&) const = default;
};

/// Lamb's step over one tensor (one flat partition under ZeRO), in three passes: the
/// direction u per element, the norms of p and u, then p -= step_size · trust · u.
struct LambUpdate {
    float beta1, beta2, eps, weight_decay, step_size, max_coeff, min_coeff;
    bool eps_inside_sqrt;

    static LambUpdate at(const LambHyper& h, double lr, std::int64_t step) {
        const double t = static_cast<double>(step);
        const double step_size = h.bias_correction
                                     ? lr * std::sqrt(1.0 - std::pow(h.betas[1], t)) / (1.0 - std::pow(h.betas[0], t))
                                     : lr;
        return {static_cast<float>(h.betas[0]), static_cast<float>(h.betas[1]), static_cast<float>(h.eps),
                static_cast<float>(h.weight_decay), static_cast<float>(step_size), static_cast<float>(h.max_coeff),
                static_cast<float>(h.min_coeff), h.eps_inside_sqrt};
    }

    /// Pass 1, element `i`: updates m = states[0], v = states[1] and returns the direction
    /// u = m / (sqrt(v) + eps) + wd · p (moments not bias-corrected, as in FusedLamb).
    DS_HOST_DEVICE float direction(std::size_t i, const float* p, const float* grad, float* const* states) const {
        float& m = states[0][i];
        float& v = states[1][i];
        const float g = grad[i];
        m = beta1 * m + (1.0f - beta1) * g;
        v = beta2 * v + (1.0f - beta2) * g * g;
        const float denom = eps_inside_sqrt ? sqrtf(v + eps) : sqrtf(v) + eps;
        return m / denom + weight_decay * p[i];
    }
    /// Pass 2: ‖p‖ / ‖u‖ clamped to [min_coeff, max_coeff]; 1 when either norm is 0.
    DS_HOST_DEVICE float trust_ratio(float p_norm, float u_norm) const {
        if (p_norm == 0.0f || u_norm == 0.0f) return 1.0f;
        const float ratio = p_norm / u_norm;
        return ratio < min_coeff ? min_coeff : (ratio > max_coeff ? max_coeff : ratio);
    }
    /// Pass 3, element `i`.
    DS_HOST_DEVICE void apply(std::size_t i, float* p, const float* u, float trust) const {
        p[i] -= step_size * trust * u[i];
    }

    /// The three passes over one tensor of `n` elements on the host; `scratch` holds u.
    void step_tensor(float* p, const float* grad, float* const* states, float* scratch, std::size_t n) const {
        double p_square = 0.0, u_square = 0.0;
        for (std::size_t i = 0; i < n; ++i) {
            scratch[i] = direction(i, p, grad, states);
            p_square += static_cast<double>(p[i]) * p[i];
            u_square += static_cast<double>(scratch[i]) * scratch[i];
        }
        const float trust = trust_ratio(static_cast<float>(std::sqrt(p_square)), static_cast<float>(std::sqrt(u_square)));
        for (std::size_t i = 0; i < n; ++i) apply(i, p, scratch, trust);
    }
};

/// Lamb as a policy: not element-wise (`per_tensor`), and DeepSpeed requires fp16 with
/// dynamic loss scaling for it (`ds::check`).
template <LambHyper Defaults = LambHyper{}>
struct Lamb {
    using Hyper = LambHyper;
    using Update = LambUpdate;
    static constexpr OptimizerType type = OptimizerType::Lamb;
    static constexpr Hyper defaults = Defaults;
    static constexpr std::size_t state_buffers = 2;  // exp_avg, exp_avg_sq
    static constexpr bool per_tensor = true;         // the trust ratio needs whole-tensor norms

    static constexpr bool accepts(OptimizerType t) { return t == OptimizerType::Lamb; }
    static constexpr Hyper hyper_from(const OptimizerParams& p) {
        return {p.lr, p.betas, p.eps, p.weight_decay, p.bias_correction, p.max_coeff, p.min_coeff, p.eps_inside_sqrt};
    }
    static LambUpdate update(const Hyper& h, double lr, std::int64_t step) { return Update::at(h, lr, step); }
};

static_assert(optimizer<Lamb<>>);

}  // namespace ds
