#pragma once
/// @file
/// `ds::SGD<>`: torch.optim.SGD's math (SPEC §2.4), as DeepSpeed's `"type": "SGD"` runs it.

#include <cstddef>
#include <cstdint>

#include <ds/config/config.hpp>
#include <ds/optim/optimizer.hpp>
#include <ds/util/host_device.hpp>

namespace ds {

/// SGD's hyper-parameters (torch defaults, lr as DeepSpeed's other optimizers).
struct SgdHyper {
    double lr = 1e-3;
    double momentum = 0.0;
    double dampening = 0.0;
    double weight_decay = 0.0;
    bool nesterov = false;
    constexpr bool operator==(const SgdHyper&) const = default;
};

/// One SGD update per element: L2 weight decay, then (Nesterov) momentum with the buffer
/// set to the gradient on the first step, as torch does.
struct SgdUpdate {
    float lr, momentum, dampening, weight_decay;
    bool nesterov, first_step;

    static SgdUpdate at(const SgdHyper& h, double lr, std::int64_t step) {
        return {static_cast<float>(lr), static_cast<float>(h.momentum), static_cast<float>(h.dampening),
                static_cast<float>(h.weight_decay), h.nesterov, step == 1};
    }

    /// Element `i`; states[0] is the momentum buffer (untouched without momentum).
    DS_HOST_DEVICE void operator()(std::size_t i, float* p, const float* grad, float* const* states) const {
        float g = grad[i] + weight_decay * p[i];
        if (momentum != 0.0f) {
            float& buffer = states[0][i];
            buffer = first_step ? g : momentum * buffer + (1.0f - dampening) * g;
            g = nesterov ? g + momentum * buffer : buffer;
        }
        p[i] -= lr * g;
    }
};

/// SGD as a policy. Under ZeRO it needs `zero_allow_untested_optimizer`, as in DeepSpeed.
template <SgdHyper Defaults = SgdHyper{}>
struct SGD {
    using Hyper = SgdHyper;
    using Update = SgdUpdate;
    static constexpr OptimizerType type = OptimizerType::SGD;
    static constexpr Hyper defaults = Defaults;
    static constexpr std::size_t state_buffers = 1;  // momentum_buffer

    static constexpr bool accepts(OptimizerType t) { return t == OptimizerType::SGD; }
    static constexpr Hyper hyper_from(const OptimizerParams& p) {
        return {p.lr, p.momentum, p.dampening, p.weight_decay, p.nesterov};
    }
    static SgdUpdate update(const Hyper& h, double lr, std::int64_t step) { return Update::at(h, lr, step); }
};

static_assert(optimizer<SGD<>>);

}  // namespace ds
