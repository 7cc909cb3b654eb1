#pragma once
/// @file
/// `ds::model`: what `ds::Engine` needs of the model it trains.
///
/// ## Minimal definition
/// A model `M` describes one sample's computation in fp32 with everything about its
/// parameters known at compile time:
/// - `M::input_shape`, `M::output_shape`: per-sample shapes (a constexpr `size` each); the
///   input's element type is `nn::shape_value_t<input_shape>` — float, or `int32` token ids
///   (`nn::Tokens<T>`), which the engine takes and passes on as they are;
/// - `M::param_count` and `M::parameters`: Ψ, and the table of tensors (`nn::Parameter`:
///   PyTorch name, offset in the flat buffer, shape) covering [0, Ψ) — the names are those
///   of checkpoints and safetensors files;
/// - `M::LayerRange` and `M::layer_ranges`: the spans of the flat buffer that are gathered
///   and released together (ZeRO stage 3), in forward order;
/// - `static void init(float* params, Rng&)`: the initial values of all Ψ;
/// - experts: `contains_moe`, `expert_parallel_size`, `dense_param_count`,
///   `expert_param_count`, `expert_ranges`, `global_offset(at, ep_rank)` and
///   `with_expert_parallel<1>` (a model without experts: false, 1, Ψ, 0, empty ranges,
///   `at`, and `M` itself);
/// - `M::with_storage<T>`: the model storing parameters and activations in `T` (float,
///   `ds::bf16`, `ds::half`): the *network* the engine runs. A network `N` is constructed
///   from the largest batch, reports `max_batch()` and `buffer_bytes()`, takes
///   `set_training(bool)`, and runs
///   `const T* forward(const T* x, std::size_t batch, Hooks& hooks)` and
///   `void backward(const T* grad_output, Hooks& hooks)`, asking `hooks` for each layer range's
///   parameters (`hooks.parameters(range)`) and gradient buffer (`hooks.gradients(range)`)
///   and announcing when a range is done (`forward_done`, `backward_done`).
///
/// ## Laws
/// 1. backward **adds** every parameter's gradient into `hooks.gradients(range)` exactly
///    once per pass, then calls `backward_done(range)`; it never overwrites.
/// 2. forward reads no gradient; a range's parameters are used only between
///    `hooks.parameters(range)` and that range's `..._done` call (ZeRO-3 frees them after).
/// 3. The model never sees ZeRO, ranks or the optimizer: the engine's hooks hand it
///    parameters and take its gradients.
/// 4. `init` depends only on the `Rng` it is given, so every rank draws the same model.
///
/// ## Models
/// `nn::Sequential<Input, Layers...>` (`nn::BasicSequential<float, ...>`) of any
/// `ds::layer`s, including the user's own (README "Your own model").

#include <concepts>
#include <cstddef>
#include <type_traits>

#include <ds/nn/parameter.hpp>
#include <ds/util/rng.hpp>

namespace ds {

namespace detail {

/// The hooks a network is driven with, as the engine's `ZeroState` provides them.
template <class T, class G>
struct HooksArchetype {
    const T* parameters(nn::LayerRange);
    G* gradients(nn::LayerRange);
    void forward_done(nn::LayerRange);
    void backward_done(nn::LayerRange);
};

/// A network storing `T` that reads inputs of `In` (float images stored as T, or token ids).
template <class N, class T, class In = float>
concept network_of = std::constructible_from<N, std::size_t> &&
                     requires(N& n, const N& c, const std::conditional_t<std::is_integral_v<In>, In, T>* x,
                              const T* grad, std::size_t batch, HooksArchetype<T, float>& hooks) {
                         { c.max_batch() } -> std::convertible_to<std::size_t>;
                         { c.buffer_bytes() } -> std::convertible_to<std::size_t>;
                         n.set_training(true);
                         { n.forward(x, batch, hooks) } -> std::convertible_to<const T*>;
                         n.backward(grad, hooks);
                     };

template <class M>
concept model_shapes = requires {
    { M::input_shape::size } -> std::convertible_to<std::size_t>;
    { M::output_shape::size } -> std::convertible_to<std::size_t>;
};

template <class M>
concept model_parameters = requires(float* p, Rng& rng) {
    { M::param_count } -> std::convertible_to<std::size_t>;
    { M::parameters[0] } -> std::convertible_to<nn::Parameter>;
    { M::parameters.size() } -> std::convertible_to<std::size_t>;
    typename M::LayerRange;
    { M::layer_ranges[0] } -> std::convertible_to<nn::LayerRange>;
    M::init(p, rng);
};

template <class M>
concept model_experts = requires(std::size_t at) {
    { M::contains_moe } -> std::convertible_to<bool>;
    { M::expert_parallel_size } -> std::convertible_to<std::size_t>;
    { M::dense_param_count } -> std::convertible_to<std::size_t>;
    { M::expert_param_count } -> std::convertible_to<std::size_t>;
    { M::expert_ranges[0] } -> std::convertible_to<nn::LayerRange>;
    { M::global_offset(at, at) } -> std::convertible_to<std::size_t>;
    typename M::template with_expert_parallel<1>;
};

}  // namespace detail

/// `M` can be trained by `ds::Engine` (see the file's documentation).
template <class M>
concept model = detail::model_shapes<M> && detail::model_parameters<M> && detail::model_experts<M> &&
                requires { typename M::template with_storage<float>; } &&
                detail::network_of<typename M::template with_storage<float>, float, nn::shape_value_t<typename M::input_shape>>;

/// `model<M>`, or a compile error naming the first requirement `M` misses: what
/// `ds::Engine` is constrained on, so the missing member leads the error output.
template <class M>
consteval bool explain_model() {
    static_assert(detail::model_shapes<M>,
                  "ds::model: M must declare `input_shape` and `output_shape` (per-sample shapes with a constexpr `size`)");
    static_assert(detail::model_parameters<M>,
                  "ds::model: M must declare `param_count`, the table `parameters` (ds::nn::Parameter), `LayerRange`, "
                  "`layer_ranges` and `static void init(float*, ds::Rng&)`");
    static_assert(detail::model_experts<M>,
                  "ds::model: M must declare its experts: `contains_moe`, `expert_parallel_size`, `dense_param_count`, "
                  "`expert_param_count`, `expert_ranges`, `global_offset` and `with_expert_parallel<Ep>` (a model "
                  "without experts: see ds/nn/model.hpp)");
    static_assert(requires { typename M::template with_storage<float>; },
                  "ds::model: M must declare `template <class T> using with_storage` (the network storing T)");
    if constexpr (requires { typename M::template with_storage<float>; })
        static_assert(detail::network_of<typename M::template with_storage<float>, float,
                                         nn::shape_value_t<typename M::input_shape>>,
                      "ds::model: M::with_storage<T> must be constructible from the largest batch and provide "
                      "max_batch(), buffer_bytes(), set_training(bool), forward(x, batch, hooks) and "
                      "backward(grad_output, hooks)");
    return model<M>;
}

}  // namespace ds
