#pragma once
/// @file
/// `cuda::DeviceSequential<Model>`: an `nn::Sequential` run on the GPU with its values
/// stored as the model's T (float, bf16, half) — the same layer list, parameter layout
/// (`Model::layer_ranges`) and per-layer hook protocol as the CPU model, so the engine's ZeRO
/// hooks serve both, over device buffers on one stream.

#include <algorithm>
#include <array>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/layers.cuh>
#include <ds/device/cuda/memory.hpp>
#include <ds/device/cuda/moe.cuh>
#include <ds/nn/sequential.hpp>

namespace ds::cuda {

namespace detail {
/// The layer a `Named` wraps (found by its `layer` member: nvcc cannot match `Named<Name, L>`).
template <class L>
struct Unnamed {
    using type = L;
};
template <class L>
    requires requires { typename L::layer; }
struct Unnamed<L> {
    using type = typename L::layer;
};
/// A device layer that can apply the ReLU after it to its own output (`forward<true>`).
template <class L>
concept fuses_relu = requires { requires L::relu_fuses; };
/// Element I of a tuple type, or void past its end.
template <class Tuple, std::size_t I>
struct ElementOr {
    using type = void;
};
template <class Tuple, std::size_t I>
    requires(I < std::tuple_size_v<Tuple>)
struct ElementOr<Tuple, I> {
    using type = std::tuple_element_t<I, Tuple>;
};
}  // namespace detail

template <class Model>
class DeviceSequential;

template <class T, class Input, class... Layers>
class DeviceSequential<nn::BasicSequential<T, Input, Layers...>>
    : public nn::LayerSettings<DeviceSequential<nn::BasicSequential<T, Input, Layers...>>> {
public:
    using model_type = nn::BasicSequential<T, Input, Layers...>;
    using value_type = T;
    using input_shape = typename model_type::input_shape;
    using output_shape = typename model_type::output_shape;
    using LayerRange = typename model_type::LayerRange;

private:
    static constexpr std::size_t layer_count = sizeof...(Layers);
    using bound_layers = typename nn::detail::Chain<Input, Layers...>::layers;
    template <std::size_t I>
    using bound_t = std::tuple_element_t<I, bound_layers>;
    template <std::size_t I>
    using unbound_t = typename detail::Unnamed<std::tuple_element_t<I, std::tuple<Layers...>>>::type;
    template <class Seq>
    struct Devices;
    template <std::size_t... I>
    struct Devices<std::index_sequence<I...>> {
        using type = std::tuple<DeviceLayer<unbound_t<I>, typename bound_t<I>::input_shape, T>...>;
    };
    using device_layers = typename Devices<std::make_index_sequence<layer_count>>::type;
    template <std::size_t I>
    static constexpr std::size_t in_size = bound_t<I>::input_shape::size;
    template <std::size_t I>
    static constexpr std::size_t out_size = bound_t<I>::output_shape::size;
    /// Flatten changes no value (NCHW is already the flat layout): its output is its input,
    /// so it costs no buffer and no copy either way.
    template <std::size_t I>
    static constexpr bool passes_through = std::is_same_v<unbound_t<I>, nn::Flatten>;
    /// A ReLU straight after a layer that can apply it (Linear's GEMM epilogue, Conv2d's bias
    /// pass) runs there, saving a pass: it has no forward of its own and its output is its
    /// input, which its backward reads as y.
    template <std::size_t I>
    static constexpr bool relu_fused_into_previous =
        I > 0 && std::is_same_v<unbound_t<I>, nn::ReLU> &&
        detail::fuses_relu<typename detail::ElementOr<device_layers, I - 1>::type>;
    /// Layer I applies the ReLU that follows it.
    template <std::size_t I>
    static constexpr bool applies_relu =
        detail::fuses_relu<std::tuple_element_t<I, device_layers>> &&
        std::is_same_v<typename detail::ElementOr<std::tuple<typename detail::Unnamed<Layers>::type...>, I + 1>::type,
                       nn::ReLU>;
    /// Layers whose output is their input: no buffer of their own.
    template <std::size_t I>
    static constexpr bool aliases_input = passes_through<I> || relu_fused_into_previous<I>;
    /// An MoE layer: its experts are a second parameter range (`Model::expert_ranges`).
    template <std::size_t I>
    static constexpr bool has_experts = model_type::expert_ranges[I].count > 0;

public:
    /// Layers that run a forward pass of their own: not Flatten, nor a ReLU that the layer
    /// before it applies.
    static constexpr std::size_t forward_passes = [] {
        std::size_t n = 0;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((n += aliases_input<I> ? 0 : 1), ...);
        }(std::make_index_sequence<layer_count>{});
        return n;
    }();

    /// Activations and work buffers for batches of up to `max_batch` samples, on `ctx`'s stream.
    DeviceSequential(std::size_t max_batch, LayerContext ctx) : ctx_(ctx), max_batch_(max_batch) {
        std::size_t widest = Input::size;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((std::get<I>(layers_).reserve(max_batch, ctx_),
              activations_[I] = DeviceBuffer<T>(aliases_input<I> ? 0 : max_batch * out_size<I>),
              widest = std::max(widest, out_size<I>)),
             ...);
        }(std::make_index_sequence<layer_count>{});
        grad_a_ = DeviceBuffer<T>(max_batch * widest);
        grad_b_ = DeviceBuffer<T>(max_batch * widest);
    }

    std::size_t max_batch() const { return max_batch_; }
    LayerContext& context() { return ctx_; }
    /// Calls `f(layer)` for every device layer, in order.
    template <class F>
    void for_each_layer(F&& f) {
        std::apply([&](auto&... layer) { (f(layer), ...); }, layers_);
    }
    /// Device layer I itself (for tests and inspection, e.g. an MoE layer's routing).
    template <std::size_t I>
    auto& layer() {
        return std::get<I>(layers_);
    }
    /// Device bytes of the activations, the backward's work buffers and each layer's own
    /// (im2col columns, pooling positions, MoE blocks, fp32 copies).
    std::size_t buffer_bytes() const {
        std::size_t n = grad_a_.bytes() + grad_b_.bytes();
        for (const auto& a : activations_) n += a.bytes();
        std::apply([&](const auto&... layer) { ((n += nn::buffer_bytes_of(layer)), ...); }, layers_);
        return n;
    }

    /// Runs the layers on `batch` device samples at `x` (kept by pointer until `backward`),
    /// asking `hooks.parameters(range)` for each layer's device parameters.
    /// @returns the output on the device, `batch × output_shape::size` values owned by the model
    template <class Hooks>
    const T* forward(const T* x, std::size_t batch, Hooks& hooks) {
        input_ = x;
        batch_ = batch;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (forward_layer<I>(hooks), ...);
        }(std::make_index_sequence<layer_count>{});
        return output_of<layer_count - 1>();
    }
    /// Backward from d loss / d output (device) of the last `forward`, adding each layer's
    /// parameter gradients into `hooks.gradients(range)`; `hooks.backward_done(range)`
    /// follows each layer.
    /// `grad_output` is only read (the last layer's dy), so it needs no copy.
    template <class Hooks>
    void backward(const T* grad_output, Hooks& hooks) {
        backward_from<layer_count - 1>(grad_output, grad_a_.data(), grad_b_.data(), hooks);
    }

    /// The same over one flat device parameter buffer and one flat gradient buffer.
    const T* forward(const T* x, std::size_t batch, const T* params) {
        nn::FlatHooks<T, T> hooks{params, nullptr};
        return forward(x, batch, hooks);
    }
    template <class G>
    void backward(const T* grad_output, const T* params, G* grads) {
        nn::FlatHooks<T, G> hooks{params, grads};
        backward(grad_output, hooks);
    }

    /// The activations of layer I after `forward` (device; a layer that applies the ReLU
    /// after it holds the ReLU's output).
    template <std::size_t I>
    const T* activation() const {
        return output_of<I>();
    }

private:
    template <std::size_t I>
    const T* layer_input() const {
        if constexpr (I == 0) return input_;
        else return output_of<I - 1>();
    }
    template <std::size_t I>
    const T* output_of() const {
        if constexpr (aliases_input<I>) return layer_input<I>();
        else return activations_[I].data();
    }

    template <std::size_t I, class Hooks>
    void forward_layer(Hooks& hooks) {
        if constexpr (!aliases_input<I>) {
            constexpr LayerRange range = model_type::layer_ranges[I], experts = model_type::expert_ranges[I];
            const T* w = nullptr;
            if constexpr (range.count > 0) w = hooks.parameters(range);
            auto& layer = std::get<I>(layers_);
            if constexpr (has_experts<I>) {
                const T* we = hooks.parameters(experts);
                layer.forward(layer_input<I>(), activations_[I].data(), batch_, w, we, ctx_);
            } else if constexpr (applies_relu<I>) {
                layer.template forward<true>(layer_input<I>(), activations_[I].data(), batch_, w, ctx_);
            } else {
                layer.forward(layer_input<I>(), activations_[I].data(), batch_, w, ctx_);
            }
            if constexpr (range.count > 0) hooks.forward_done(range);
            if constexpr (has_experts<I>) hooks.forward_done(experts);
        }
    }

    /// Layer I reads dy and writes dx; the layer before it reads that and writes `spare`
    /// (the two work buffers alternate). A pass-through layer hands dy on as it is.
    template <std::size_t I, class Hooks>
    void backward_from(const T* dy, T* dx, T* spare, Hooks& hooks) {
        if constexpr (passes_through<I>) {
            if constexpr (I > 0) backward_from<I - 1>(dy, dx, spare, hooks);
        } else {
            constexpr LayerRange range = model_type::layer_ranges[I], experts = model_type::expert_ranges[I];
            const T* w = nullptr;
            decltype(hooks.gradients(range)) dw = nullptr;
            if constexpr (range.count > 0) {
                w = hooks.parameters(range);
                dw = hooks.gradients(range);
            }
            auto& layer = std::get<I>(layers_);
            T* into = I == 0 ? nullptr : dx;
            if constexpr (has_experts<I>)
                layer.backward(layer_input<I>(), output_of<I>(), dy, into, batch_, w, dw, hooks.parameters(experts),
                               hooks.gradients(experts), ctx_);
            else layer.backward(layer_input<I>(), output_of<I>(), dy, into, batch_, w, dw, ctx_);
            if constexpr (range.count > 0) hooks.backward_done(range);
            if constexpr (has_experts<I>) hooks.backward_done(experts);
            if constexpr (I > 0) backward_from<I - 1>(dx, spare, dx, hooks);
        }
    }

    LayerContext ctx_;
    device_layers layers_{};
    std::array<DeviceBuffer<T>, layer_count> activations_{};
    DeviceBuffer<T> grad_a_, grad_b_;
    const T* input_ = nullptr;
    std::size_t batch_ = 0;
    std::size_t max_batch_;
};

}  // namespace ds::cuda
