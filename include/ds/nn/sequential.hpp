#pragma once
/// @file
/// `ds::nn::Sequential<Input, Layers...>`: a model whose shapes, parameter layout and
/// parameter names are all known at compile time.

#include <algorithm>
#include <array>
#include <cstddef>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// Gives a layer the name PyTorch's `state_dict` uses for it: `Named<"conv1", Conv2d<3, 6, 5>>`
/// owns `conv1.weight` and `conv1.bias`. Unnamed layers are named by their index, as in
/// `torch.nn.Sequential`.
template <FixedString Name, class Layer>
struct Named {
    template <class Input>
    struct Bound : Layer::template Bound<Input> {
        static constexpr std::string_view name = Name.view();
    };
};

/// One parameter tensor of a model: its full name, offset in the flat buffer and shape.
struct Parameter {
    std::array<char, 64> name_storage{};
    std::size_t offset = 0;
    TensorShape shape{};
    constexpr std::string_view name() const { return {name_storage.data(), std::string_view(name_storage.data()).size()}; }
    constexpr std::size_t numel() const { return shape.numel(); }
};

namespace detail {

template <class Input, class... Layers>
struct Chain {
    using layers = std::tuple<>;
    using output = Input;
};
template <class Input, class First, class... Rest>
struct Chain<Input, First, Rest...> {
    using bound = typename First::template Bound<Input>;
    using rest = Chain<typename bound::output_shape, Rest...>;
    using layers = decltype(std::tuple_cat(std::declval<std::tuple<bound>>(), std::declval<typename rest::layers>()));
    using output = typename rest::output;
};

template <class L>
constexpr std::size_t layer_param_count() {
    std::size_t n = 0;
    for (const auto& p : L::params) n += p.shape.numel();
    return n;
}

constexpr void append(std::array<char, 64>& out, std::size_t& at, std::string_view s) {
    for (char c : s)
        if (at + 1 < out.size()) out[at++] = c;
}

constexpr void append_number(std::array<char, 64>& out, std::size_t& at, std::size_t v) {
    char digits[20]{};
    int n = 0;
    do {
        digits[n++] = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v);
    while (n > 0) append(out, at, std::string_view(&digits[--n], 1));
}

}  // namespace detail

/// Layers applied in order to an `Input`-shaped sample. Each layer's output shape is
/// inferred from its input shape, and a mismatch stops compilation in that layer's
/// `static_assert`. Parameters live in one flat buffer that the caller owns (the engine's
/// flat buffers, DESIGN principle 4), in layer order, each layer's tensors in PyTorch order.
template <class Input, class... Layers>
class Sequential {
    using chain = detail::Chain<Input, Layers...>;
    using layer_tuple = typename chain::layers;
    static constexpr std::size_t layer_count = sizeof...(Layers);

    template <std::size_t I>
    using layer_t = std::tuple_element_t<I, layer_tuple>;

    static constexpr auto layer_offsets = [] {
        std::array<std::size_t, layer_count + 1> offsets{};
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((offsets[I + 1] = offsets[I] + detail::layer_param_count<layer_t<I>>()), ...);
        }(std::make_index_sequence<layer_count>{});
        return offsets;
    }();

public:
    using input_shape = Input;
    using output_shape = typename chain::output;
    /// Ψ: the number of trainable values.
    static constexpr std::size_t param_count = layer_offsets[layer_count];

    /// Every parameter tensor with its PyTorch name (`fc1.weight`), offset and shape.
    static constexpr auto parameters = [] {
        std::array<Parameter, ([]<std::size_t... I>(std::index_sequence<I...>) {
                                  return (layer_t<I>::params.size() + ... + 0);
                              }(std::make_index_sequence<layer_count>{}))>
            table{};
        std::size_t next = 0;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (
                [&] {
                    using L = layer_t<I>;
                    std::size_t offset = layer_offsets[I];
                    for (const auto& spec : L::params) {
                        Parameter& p = table[next++];
                        std::size_t at = 0;
                        if constexpr (requires { L::name; }) detail::append(p.name_storage, at, L::name);
                        else detail::append_number(p.name_storage, at, I);
                        detail::append(p.name_storage, at, ".");
                        detail::append(p.name_storage, at, spec.name);
                        p.offset = offset;
                        p.shape = spec.shape;
                        offset += spec.shape.numel();
                    }
                }(),
                ...);
        }(std::make_index_sequence<layer_count>{});
        return table;
    }();

    /// Allocates activations and work buffers for batches of up to `max_batch` samples.
    explicit Sequential(std::size_t max_batch) : max_batch_(max_batch) {
        std::size_t widest = Input::size;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((std::get<I>(layers_).reserve(max_batch),
              activations_[I].resize(max_batch * layer_t<I>::output_shape::size),
              widest = std::max(widest, layer_t<I>::output_shape::size)),
             ...);
        }(std::make_index_sequence<layer_count>{});
        grad_a_.resize(max_batch * widest);
        grad_b_.resize(max_batch * widest);
    }

    std::size_t max_batch() const { return max_batch_; }

    /// Bytes of activations and backward work buffers.
    std::size_t buffer_bytes() const {
        std::size_t n = grad_a_.size() + grad_b_.size();
        for (const auto& a : activations_) n += a.size();
        return n * sizeof(float);
    }

    /// PyTorch's default initialisation of every layer, in layer order, from `rng`.
    static void init(float* params, Rng& rng) {
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (layer_t<I>::init(params + layer_offsets[I], rng), ...);
        }(std::make_index_sequence<layer_count>{});
    }

    /// Where layer I's parameters live in the flat buffer: [offset, offset + count).
    struct LayerRange {
        std::size_t offset, count;
    };
    static constexpr std::array<LayerRange, layer_count> layer_ranges = [] {
        std::array<LayerRange, layer_count> r{};
        for (std::size_t i = 0; i < layer_count; ++i) r[i] = {layer_offsets[i], layer_offsets[i + 1] - layer_offsets[i]};
        return r;
    }();

    /// Runs the layers on `batch` samples at `x` (kept by pointer until `backward`) with
    /// parameters from one flat buffer.
    /// @returns the output, `batch × output_shape::size` values owned by the model
    const float* forward(const float* x, std::size_t batch, const float* params) {
        FlatHooks hooks{params, nullptr};
        return forward(x, batch, hooks);
    }

    /// Backward from d loss / d output of the last `forward`, adding parameter gradients
    /// into `grads` (same layout as the parameters). No gradient is formed for the input.
    void backward(const float* grad_output, const float* params, float* grads) {
        FlatHooks hooks{params, grads};
        backward(grad_output, hooks);
    }

    /// Forward with the parameters supplied layer by layer: `hooks.parameters(range)` returns
    /// the layer's parameters (ZeRO-3 gathers them there), `hooks.forward_done(range)`
    /// follows the layer (and may release them). Layers without parameters are not announced.
    template <class Hooks>
    const float* forward(const float* x, std::size_t batch, Hooks& hooks) {
        input_ = x;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (forward_layer<I>(batch, hooks), ...);
        }(std::make_index_sequence<layer_count>{});
        batch_ = batch;
        return activations_[layer_count - 1].data();
    }

    /// Backward with per-layer hooks: `hooks.parameters(range)` and `hooks.gradients(range)`
    /// give the layer's parameters and the buffer its gradients are added to;
    /// `hooks.backward_done(range)` follows the layer: its gradient is complete for this
    /// micro-batch (ZeRO-2/3 reduce it there, overlapping the layers still to come).
    template <class Hooks>
    void backward(const float* grad_output, Hooks& hooks) {
        std::copy_n(grad_output, batch_ * output_shape::size, grad_a_.data());
        backward_from<layer_count - 1>(grad_a_.data(), grad_b_.data(), hooks);
    }

    /// The activations of layer I after `forward` (for tests and inspection).
    template <std::size_t I>
    const float* activation() const {
        return activations_[I].data();
    }

private:
    template <std::size_t I>
    const float* layer_input() const {
        if constexpr (I == 0) return input_;
        else return activations_[I - 1].data();
    }

    /// Hooks over one flat parameter buffer and one flat gradient buffer.
    struct FlatHooks {
        const float* params;
        float* grads;
        const float* parameters(LayerRange r) { return params + r.offset; }
        float* gradients(LayerRange r) { return grads + r.offset; }
        void forward_done(LayerRange) {}
        void backward_done(LayerRange) {}
    };

    template <std::size_t I, class Hooks>
    void forward_layer(std::size_t batch, Hooks& hooks) {
        constexpr LayerRange range = layer_ranges[I];
        const float* w = nullptr;
        if constexpr (range.count > 0) w = hooks.parameters(range);
        std::get<I>(layers_).forward(layer_input<I>(), activations_[I].data(), batch, w);
        if constexpr (range.count > 0) hooks.forward_done(range);
    }

    template <std::size_t I, class Hooks>
    void backward_from(float* dy, float* dx, Hooks& hooks) {
        constexpr LayerRange range = layer_ranges[I];
        const float* w = nullptr;
        float* dw = nullptr;
        if constexpr (range.count > 0) {
            w = hooks.parameters(range);
            dw = hooks.gradients(range);
        }
        std::get<I>(layers_).backward(layer_input<I>(), activations_[I].data(), dy, I == 0 ? nullptr : dx, batch_, w, dw);
        if constexpr (range.count > 0) hooks.backward_done(range);
        if constexpr (I > 0) backward_from<I - 1>(dx, dy, hooks);
    }

    layer_tuple layers_{};
    std::array<std::vector<float>, layer_count> activations_{};
    std::vector<float> grad_a_, grad_b_;
    const float* input_ = nullptr;
    std::size_t batch_ = 0;
    std::size_t max_batch_;
};

}  // namespace ds::nn
