#pragma once
/// @file
/// `ds::layer`: what a layer of a `ds::nn::Sequential` provides.
///
/// ## Minimal definition
/// A layer `L` is a type with a member template `L::Bound<Input>`: the layer applied to
/// samples of shape `Input` (`nn::Features<N>`, `nn::Image<C, H, W>`: any type with a
/// constexpr `size`). The bound layer `B = L::Bound<Input>` provides
/// - `B::input_shape` and `B::output_shape`, per-sample shapes (`Input`, and what the layer
///   makes of it; a wrong `Input` is a `static_assert` in `Bound`, naming the expected size);
/// - `B::params`, a constexpr array of `nn::ParamSpec` {name, shape}: the layer's tensors in
///   its PyTorch `state_dict` order ("weight", "bias"), stored one after another;
/// - `static void init(float* params, Rng& rng)`: their initial values;
/// - `void reserve(std::size_t max_batch)`: work buffers for batches of up to `max_batch`;
/// - `void forward(const float* x, float* y, std::size_t batch, const float* params)`;
/// - `void backward(const float* x, const float* y, float* dy, float* dx, std::size_t batch,
///   const float* params, float* grads)`.
///
/// A layer whose input holds ids (`nn::Tokens<T>`: `input_shape::value_type` is `int32`)
/// takes `const std::int32_t* x` instead; it is a model's first layer and gets no `dx`.
///
/// Optional: `std::size_t buffer_bytes() const` (the bytes of its work buffers, counted in
/// the engine's memory report), `void set_training(bool)`.
///
/// A Mixture-of-Experts layer (`nn::MoE`) has a second tensor group, `B::expert_params`,
/// reduced over the expert-data-parallel group; its `init`, `forward` and `backward` take the
/// experts' values (and gradients) after the dense ones.
///
/// ## Laws
/// 1. **backward adds**: it adds this batch's d loss / d params into `grads` and never
///    overwrites them — gradient accumulation over micro-batches relies on it.
/// 2. backward writes d loss / d x into `dx` (overwriting) unless `dx` is null (the first
///    layer of a model needs none); it may use `dy` as scratch.
/// 3. backward is given the `x` forward read and the `y` it wrote; forward reads no
///    gradient and nothing a previous backward left.
/// 4. **A layer never sees ZeRO**, ranks or storage precision: it computes in fp32 on the
///    parameters it is handed — gathered whole at ZeRO stage 3, widened from bf16 / fp16 by
///    the sequencer, which also rounds its outputs and gradients back.
/// 5. `batch` never exceeds the `max_batch` given to `reserve`.
///
/// ## Models
/// `nn::Linear`, `nn::Conv2d`, `nn::MaxPool2d`, `nn::ReLU`, `nn::Flatten`, `nn::MoE`,
/// `nn::Embedding`, `nn::Residual`, and `nn::Named<"name", L>` of any of them; a user's own type written as
/// above (README "Your own model").

#include <concepts>
#include <cstddef>
#include <type_traits>

#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds {

namespace detail {

template <class S>
concept sample_shape = requires {
    { S::size } -> std::convertible_to<std::size_t>;
};

template <class B>
concept layer_tensors = requires {
    typename std::integral_constant<std::size_t, B::params.size()>;  // a constexpr table
    { B::params.size() } -> std::convertible_to<std::size_t>;
    requires std::same_as<std::remove_cvref_t<decltype(B::params[0])>, nn::ParamSpec>;
};

/// What a layer reads: floats, or the ids of a `Tokens` input.
template <class B>
using layer_input_t = nn::shape_value_t<typename B::input_shape>;

template <class B>
concept dense_layer_math = requires(B& b, const layer_input_t<B>* x, const float* out, float* y, float* dy, float* dx,
                                    std::size_t batch, const float* w, float* dw, Rng& rng) {
    B::init(dy, rng);
    b.forward(x, y, batch, w);
    b.backward(x, out, dy, dx, batch, w, dw);
};

template <class B>
concept expert_layer_math = requires(B& b, const float* x, float* y, float* dy, float* dx, std::size_t batch,
                                     const float* w, float* dw, Rng& rng) {
    B::expert_params.size();
    B::init(dy, dy, rng);
    b.forward(x, y, batch, w, w);
    b.backward(x, x, dy, dx, batch, w, dw, w, dw);
};

}  // namespace detail

/// A layer bound to its input shape: `L::Bound<Input>` of a `ds::layer`.
template <class B>
concept bound_layer = requires { sizeof(B); } && std::is_default_constructible_v<B> && requires(B& b, std::size_t n) {
    typename B::input_shape;
    typename B::output_shape;
    requires detail::sample_shape<typename B::input_shape> && detail::sample_shape<typename B::output_shape>;
    requires detail::layer_tensors<B>;
    b.reserve(n);
} && (detail::dense_layer_math<B> || detail::expert_layer_math<B>);

/// `L` applied to samples of shape `Input` is a layer (see the file's documentation).
template <class L, class Input>
concept layer = requires { typename L::template Bound<Input>; } && bound_layer<typename L::template Bound<Input>>;

/// `layer<L, Input>`, or a compile error naming the first requirement `L` misses (for
/// `static_assert` in the places that take layers, so the message leads the error output).
template <class L, class Input>
consteval bool explain_layer() {
    if constexpr (!requires { typename L::template Bound<Input>; }) {
        static_assert(requires { typename L::template Bound<Input>; },
                      "ds::layer: L has no member template `Bound<Input>` (the layer applied to an input shape)");
        return false;
    } else if constexpr (!requires { sizeof(typename L::template Bound<Input>); }) {
        static_assert(requires { sizeof(typename L::template Bound<Input>); },
                      "ds::layer: L has no Bound for this input shape (e.g. a Conv2d or MaxPool2d after Flatten: "
                      "they take nn::Image inputs)");
        return false;
    } else {
        using B = typename L::template Bound<Input>;
        static_assert(requires { typename B::input_shape; typename B::output_shape; },
                      "ds::layer: L::Bound<Input> must declare `input_shape` and `output_shape`");
        static_assert(detail::layer_tensors<B>,
                      "ds::layer: L::Bound<Input> must declare `static constexpr std::array<ds::nn::ParamSpec, N> params`");
        static_assert(requires(B& b) { b.reserve(std::size_t{}); },
                      "ds::layer: L::Bound<Input> must have `void reserve(std::size_t max_batch)`");
        static_assert(requires(Rng& rng, float* p) { B::init(p, rng); } || detail::expert_layer_math<B>,
                      "ds::layer: L::Bound<Input> must have `static void init(float* params, ds::Rng&)`");
        static_assert(requires(B& b, const detail::layer_input_t<B>* x, float* y, const float* w) {
                          b.forward(x, y, std::size_t{}, w);
                      } ||
                          detail::expert_layer_math<B>,
                      "ds::layer: L::Bound<Input> must have `void forward(const float* x, float* y, std::size_t batch, "
                      "const float* params)`");
        static_assert(detail::dense_layer_math<B> || detail::expert_layer_math<B>,
                      "ds::layer: L::Bound<Input> must have `void backward(const float* x, const float* y, float* dy, "
                      "float* dx, std::size_t batch, const float* params, float* grads)` (adding into grads)");
        static_assert(std::is_default_constructible_v<B>, "ds::layer: L::Bound<Input> must be default-constructible");
        return layer<L, Input>;
    }
}

}  // namespace ds
