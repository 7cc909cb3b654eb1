#pragma once
/// @file
/// `ds::FlatOptimizer<Opt>`: an optimizer policy's state over flat fp32 buffers, and its step.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <span>
#include <string>
#include <type_traits>

#include <ds/device/cpu/convert.hpp>
#include <ds/engine/flat_buffers.hpp>
#include <ds/optim/optimizer.hpp>

namespace ds {

/// A contiguous run of the flat buffer that forms one tensor (for per-tensor optimizers).
struct Segment {
    std::size_t offset, count;
};

/// A run of the optimizer's partition: fp32 values and their gradients (in the
/// accumulation dtype). A model with experts has two, one per parameter group.
template <class G>
struct ShardPart {
    float* params = nullptr;
    const G* grads = nullptr;
    std::size_t count = 0;
};

/// `hyper` with β1 and β2 replaced where given (OneCycle's momentum schedule); optimizers
/// without betas keep theirs. Every device's optimizer steps with it.
template <class Hyper>
Hyper with_betas(Hyper hyper, std::optional<double> beta1, std::optional<double> beta2) {
    if constexpr (requires { hyper.betas; }) {
        if (beta1) hyper.betas[0] = *beta1;
        if (beta2) hyper.betas[1] = *beta2;
    }
    return hyper;
}

/// The optimizer an engine returns from `ds::initialize`: hyper-parameters, the step count
/// (equal to the number of applied steps at every stage, SPEC decisions table) and the
/// state buffers, laid out as the partition it steps (`ShardPart`s end to end).
template <optimizer Opt>
class FlatOptimizer {
public:
    using Hyper = typename Opt::Hyper;
    static constexpr bool per_tensor = requires { Opt::per_tensor; };

    FlatOptimizer(const Hyper& hyper, std::size_t elements)
        : hyper_(hyper), states_(Opt::state_buffers + (per_tensor ? 2 : 0), elements) {}

    const Hyper& hyper() const { return hyper_; }
    Hyper& hyper() { return hyper_; }
    /// Applied optimizer steps so far.
    std::int64_t step_count() const { return steps_; }
    /// Restores the count (a checkpoint's): Adam's bias corrections continue from it.
    void set_step_count(std::int64_t steps) { steps_ = steps; }
    /// State buffer k (Adam: 0 = exp_avg, 1 = exp_avg_sq).
    std::span<const float> state(std::size_t k) const { return states_.span(k); }
    std::span<float> state(std::size_t k) { return states_.span(k); }
    /// Replaces state buffer k (a checkpoint's; `elements()` values).
    void set_state(std::size_t k, std::span<const float> values) {
        if (values.size() != elements())
            throw std::invalid_argument("FlatOptimizer::set_state: " + std::to_string(values.size()) +
                                        " values for a state of " + std::to_string(elements()));
        std::copy(values.begin(), values.end(), states_.span(k).begin());
    }
    /// Values in each state buffer: the partition this optimizer steps.
    std::size_t elements() const { return states_.elements(); }
    std::size_t state_bytes() const { return Opt::state_buffers * states_.elements() * sizeof(float); }

    /// One optimizer step over `params` with gradients `grads` (both `elements` long) at
    /// learning rate `lr`, optionally with β1 and β2 replaced (OneCycle's momentum).
    /// Per-tensor optimizers (Lamb) treat each of `tensors` as one tensor.
    ///
    /// The gradients may be in a 2-byte dtype; they are widened block by block and
    /// multiplied by `grad_factor` as they are read: unscaling and clipping in one
    /// multiply, without a full-size fp32 gradient copy (SPEC §5.1).
    template <storage_float G>
    void step(float* params, const G* grads, float grad_factor, double lr, std::optional<double> beta1,
              std::optional<double> beta2, std::span<const Segment> tensors) {
        const ShardPart<G> all{params, grads, states_.elements()};
        step(std::span<const ShardPart<G>>(&all, 1), grad_factor, lr, beta1, beta2, tensors);
    }
    /// The same step over parts laid end to end (the states follow their order); each of
    /// `tensors` lies within one part, in those concatenated coordinates.
    template <storage_float G>
    void step(std::span<const ShardPart<G>> parts, float grad_factor, double lr, std::optional<double> beta1,
              std::optional<double> beta2, std::span<const Segment> tensors) {
        const auto update = Opt::update(with_betas(hyper_, beta1, beta2), lr, ++steps_);
        std::size_t base = 0;
        for (const ShardPart<G>& part : parts) {
            step_part(update, part, base, grad_factor, tensors);
            base += part.count;
        }
    }

private:
    /// One part, whose states start at element `base`.
    template <class Update, class G>
    void step_part(const Update& update, const ShardPart<G>& part, std::size_t base, float grad_factor,
                   std::span<const Segment> tensors) {
        float* states[Opt::state_buffers > 0 ? Opt::state_buffers : 1];
        for (std::size_t k = 0; k < Opt::state_buffers; ++k) states[k] = states_[k] + base;
        float* const params = part.params;
        const G* const grads = part.grads;
        // fp32 gradients that need no factor are read in place; others through a widened block.
        bool as_given = false;
        if constexpr (std::is_same_v<G, float>) as_given = grad_factor == 1.0f;
        if constexpr (per_tensor) {
            float* scratch = states_[Opt::state_buffers];
            float* widened = states_[Opt::state_buffers + 1];
            for (const Segment& whole : tensors) {
                if (whole.offset < base || whole.offset >= base + part.count) continue;
                if (whole.offset + whole.count > base + part.count)
                    throw std::logic_error("FlatOptimizer: a tensor straddles two parts of the partition");
                const Segment t{whole.offset - base, whole.count};
                float* segment_states[Opt::state_buffers];
                for (std::size_t k = 0; k < Opt::state_buffers; ++k) segment_states[k] = states[k] + t.offset;
                const float* g = widened;
                if constexpr (std::is_same_v<G, float>)
                    if (as_given) g = grads + t.offset;
                if (!as_given) {
                    cpu::convert(grads + t.offset, widened, t.count);
                    for (std::size_t i = 0; i < t.count; ++i) widened[i] *= grad_factor;
                }
                update.step_tensor(params + t.offset, g, segment_states, scratch, t.count);
            }
        } else {
            if constexpr (std::is_same_v<G, float>) {
                if (as_given) {
                    for (std::size_t i = 0; i < part.count; ++i) update(i, params, grads, states);
                    return;
                }
            }
            cpu::for_each_widened<256>(grads, part.count, [&](const float* block, std::size_t first, std::size_t count) {
                alignas(64) float g[256];
                for (std::size_t i = 0; i < count; ++i) g[i] = block[i] * grad_factor;
                float* shifted[Opt::state_buffers > 0 ? Opt::state_buffers : 1];
                for (std::size_t k = 0; k < Opt::state_buffers; ++k) shifted[k] = states[k] + first;
                for (std::size_t i = 0; i < count; ++i) update(i, params + first, g, shifted);
            });
        }
    }

    Hyper hyper_;
    FlatBuffers states_;
    std::int64_t steps_ = 0;
};

}  // namespace ds
