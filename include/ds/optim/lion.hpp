#pragma once
/// @file
/// `ds::Lion<>`: DeepSpeed's FusedLion math (SPEC §2.3).

#include <array>
#include <cstddef>
#include <cstdint>

#include <ds/config/config.hpp>
#include <ds/optim/optimizer.hpp>
#include <ds/util/host_device.hpp>

namespace ds {

/// Lion's hyper-parameters, with FusedLion's defaults.
struct LionHyper {
    double lr = 1e-3;
    std::array<double, 2> betas{0.9, 0.999};
    double weight_decay = 0.0;
    constexpr bool operator==(const LionHyper&) const = default;
};

/// One Lion update per element: the sign of the interpolated momentum, decoupled decay.
/// As in FusedLion, an interpolation of exactly 0 counts as negative (p moves by +lr).
struct LionUpdate {
    float lr, beta1, beta2, weight_decay;

    static LionUpdate at(const LionHyper& h, double lr, std::int64_t /*step*/) {
        return {static_cast<float>(lr), static_cast<float>(h.betas[0]), static_cast<float>(h.betas[1]),
                static_cast<float>(h.weight_decay)};
    }

    /// Element `i`; states[0] is the momentum.
    DS_HOST_DEVICE void operator()(std::size_t i, float* p, const float* grad, float* const* states) const {
        float& m = states[0][i];
        const float g = grad[i];
        const float c = beta1 * m + (1.0f - beta1) * g;
        p[i] = p[i] * (1.0f - lr * weight_decay) + (c > 0.0f ? -lr : lr);
        m = beta2 * m + (1.0f - beta2) * g;
    }
};

/// Lion as a policy.
template <LionHyper Defaults = LionHyper{}>
struct Lion {
    using Hyper = LionHyper;
    using Update = LionUpdate;
    static constexpr OptimizerType type = OptimizerType::Lion;
    static constexpr Hyper defaults = Defaults;
    static constexpr std::size_t state_buffers = 1;  // exp_avg

    static constexpr bool accepts(OptimizerType t) { return t == OptimizerType::Lion; }
    static constexpr Hyper hyper_from(const OptimizerParams& p) { return {p.lr, p.betas, p.weight_decay}; }
    static LionUpdate update(const Hyper& h, double lr, std::int64_t step) { return Update::at(h, lr, step); }
};

static_assert(optimizer<Lion<>>);

}  // namespace ds
