#pragma once
/// @file
/// `ds::nn::Sequential<Input, Layers...>`: a model whose shapes, parameter layout and
/// parameter names are all known at compile time.

#include <algorithm>
#include <array>
#include <cstddef>
#include <stdexcept>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <ds/device/cpu/convert.hpp>
#include <ds/nn/layer.hpp>
#include <ds/nn/model.hpp>
#include <ds/nn/parameter.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// Gives a layer the name PyTorch's `state_dict` uses for it: `Named<"conv1", Conv2d<3, 6, 5>>`
/// owns `conv1.weight` and `conv1.bias`. Unnamed layers are named by their index, as in
/// `torch.nn.Sequential`.
template <FixedString Name, class Layer>
struct Named {
    using layer = Layer;  ///< what is named (nvcc cannot deduce it from a `Named<Name, L>` pattern)
    template <class Input>
    struct Bound : Layer::template Bound<Input> {
        static constexpr std::string_view name = Name.view();
    };
};

/// The per-layer hooks of a model whose parameters are one flat buffer of `T` and whose
/// gradients add into one flat buffer of `G` (no ZeRO: what `forward(x, batch, params)` uses).
template <class T, class G>
struct FlatHooks {
    const T* params;
    G* grads;
    const T* parameters(LayerRange r) { return params + r.offset; }
    G* gradients(LayerRange r) { return grads + r.offset; }
    void forward_done(LayerRange) {}
    void backward_done(LayerRange) {}
};

namespace detail {

template <class Input, class... Layers>
struct Chain {
    using layers = std::tuple<>;
    using output = Input;
};
template <class Input, class First, class... Rest>
struct Chain<Input, First, Rest...> {
    static_assert(explain_layer<First, Input>());
    using bound = typename First::template Bound<Input>;
    using rest = Chain<typename bound::output_shape, Rest...>;
    using layers = decltype(std::tuple_cat(std::declval<std::tuple<bound>>(), std::declval<typename rest::layers>()));
    using output = typename rest::output;
};

/// A layer computing with an earlier layer's parameters (`nn::Tied`).
template <class L>
concept borrows_parameters = requires { L::tied_to; };

/// A Mixture-of-Experts layer: it reports auxiliary losses.
template <class L>
concept reports_aux_losses = requires(const L& l) { l.aux_losses(); };

/// A layer with a second parameter group, reduced over the expert-data-parallel group:
/// the experts of an MoE layer (`expert_params`).
template <class L>
concept has_expert_params = requires { L::expert_params; };

template <class L>
constexpr std::size_t layer_param_count() {
    std::size_t n = 0;
    for (const auto& p : L::params) n += p.shape.numel();
    return n;
}
template <class L>
constexpr std::size_t layer_expert_count() {
    std::size_t n = 0;
    if constexpr (has_expert_params<L>)
        for (const auto& p : L::expert_params) n += p.shape.numel();
    return n;
}
template <class L>
constexpr std::size_t layer_ep_size() {
    if constexpr (has_expert_params<L>) return L::ep_size;
    else return 0;
}

/// Layer L with its experts split over Ep ranks (looking through `Named`); others as they are.
template <class L, std::size_t Ep>
struct WithEp {
    using type = L;
};
template <class L, std::size_t Ep>
    requires requires { typename L::template with_ep_size<Ep>; }
struct WithEp<L, Ep> {
    using type = typename L::template with_ep_size<Ep>;
};

/// A number as decimal text, for the names of unnamed layers ("0.weight").
struct DecimalText {
    char text[20]{};
    std::size_t size = 0;
    constexpr std::string_view view() const { return {text, size}; }
};
constexpr DecimalText decimal(std::size_t v) {
    DecimalText reversed, out;
    do {
        reversed.text[reversed.size++] = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v);
    while (out.size < reversed.size) out.text[out.size] = reversed.text[reversed.size - 1 - out.size], ++out.size;
    return out;
}
template <std::size_t I>
inline constexpr DecimalText decimal_text = decimal(I);

/// The first part of the names of layer `L`'s tensors: its `Named` name, else its index.
template <class L, std::size_t I>
constexpr std::string_view layer_prefix() {
    if constexpr (requires { L::name; }) return L::name;
    else return decimal_text<I>.view();
}

template <FixedString Name, class L, std::size_t Ep>
struct WithEp<Named<Name, L>, Ep> {
    using type = Named<Name, typename WithEp<L, Ep>::type>;
};

}  // namespace detail

/// What a model hands every layer that takes it — the training mode, MoE settings, the
/// expert-parallel group — through the model's `for_each_layer`. Shared by
/// `nn::BasicSequential` and `cuda::DeviceSequential` (CRTP).
template <class Model>
class LayerSettings {
public:
    /// Training or eval mode for the layers that behave differently (the MoE gates' noise
    /// and capacity factor), like `module.train(mode)`.
    void set_training(bool training) {
        model().for_each_layer([&](auto& layer) {
            if constexpr (requires { layer.set_training(training); }) layer.set_training(training);
        });
    }
    /// Applies `settings` to every layer that takes them (`ds::nn::MoE::configure`).
    template <class Settings>
    void configure_moe(const Settings& settings) {
        model().for_each_layer([&](auto& layer) {
            if constexpr (requires { layer.configure(settings); }) layer.configure(settings);
        });
    }
    /// Hands every MoE layer this rank's expert-parallel group (`ds::Engine` does).
    template <class Group>
    void set_expert_parallel_group(Group* group) {
        model().for_each_layer([&](auto& layer) {
            if constexpr (requires { layer.set_expert_parallel_group(group); }) layer.set_expert_parallel_group(group);
        });
    }

private:
    Model& model() { return static_cast<Model&>(*this); }
};

/// Layers applied in order to an `Input`-shaped sample. Each layer's output shape is
/// inferred from its input shape, and a mismatch stops compilation in that layer's
/// `static_assert`. Parameters live in one flat buffer that the caller owns (the engine's
/// flat buffers, DESIGN principle 4), in layer order, each layer's tensors in PyTorch order —
/// except an MoE layer's experts, which form a second group after every dense value
/// (DeepSpeed's expert parameter groups; `dense_param_count`, `expert_ranges`). A flat
/// vector of an MoE model is therefore not in PyTorch's registration order; the names in
/// `parameters` (and safetensors files, which go by name) are what to rely on.
///
/// `T` is the dtype parameters, activations and activation gradients are stored in. The
/// layers compute in float: with a 2-byte `T` each layer's inputs and parameters are
/// widened (exactly) into float work buffers, and its outputs rounded back to `T`, so
/// every stored value is a `T` and every sum is accumulated in fp32 — what PyTorch's CPU
/// kernels do for a bf16 or fp16 module. Parameter gradients are rounded to `T` and added
/// into the caller's accumulation buffer, whose dtype the hooks choose.
/// `Sequential<Input, Layers...>` is the fp32 model; the engine rebinds it with `with_storage`.
template <class T, class Input, class... Layers>
class BasicSequential : public LayerSettings<BasicSequential<T, Input, Layers...>> {
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
    /// The expert parameters come after every dense one.
    static constexpr auto expert_offsets = [] {
        std::array<std::size_t, layer_count + 1> offsets{};
        offsets[0] = layer_offsets[layer_count];
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((offsets[I + 1] = offsets[I] + detail::layer_expert_count<layer_t<I>>()), ...);
        }(std::make_index_sequence<layer_count>{});
        return offsets;
    }();
    template <std::size_t I>
    static constexpr bool has_experts = detail::has_expert_params<layer_t<I>>;
    template <std::size_t I>
    static constexpr std::size_t expert_block_count() {
        if constexpr (has_experts<I>) return layer_t<I>::expert_blocks.size();
        else return 0;
    }
    /// The sizes of the expert blocks (one per MoE layer: its local experts), in order.
    static constexpr auto expert_blocks = [] {
        std::array<std::size_t, []<std::size_t... I>(std::index_sequence<I...>) {
            return (expert_block_count<I>() + ... + 0);
        }(std::make_index_sequence<layer_count>{})> blocks{};
        std::size_t next = 0;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (
                [&] {
                    if constexpr (has_experts<I>)
                        for (std::size_t n : layer_t<I>::expert_blocks) blocks[next++] = n;
                }(),
                ...);
        }(std::make_index_sequence<layer_count>{});
        return blocks;
    }();

public:
    using value_type = T;
    using input_shape = Input;
    /// What `forward` reads: token ids as they are (`Tokens<T>`), anything else stored in `T`.
    using input_value_type = std::conditional_t<holds_ids<Input>, shape_value_t<Input>, T>;
    using output_shape = typename chain::output;
    /// The same model storing its values in `U`.
    template <class U>
    using with_storage = BasicSequential<U, Input, Layers...>;
    /// Whether a layer is a Mixture of Experts (it reports auxiliary losses).
    static constexpr bool contains_moe = []<std::size_t... I>(std::index_sequence<I...>) {
        return (detail::reports_aux_losses<layer_t<I>> || ...);
    }(std::make_index_sequence<layer_count>{});
    /// Ψ: the number of trainable values on this rank, the dense ones first, then this
    /// rank's experts.
    static constexpr std::size_t param_count = expert_offsets[layer_count];
    /// Values reduced over every data-parallel rank: [0, dense_param_count).
    static constexpr std::size_t dense_param_count = layer_offsets[layer_count];
    /// This rank's experts, reduced over its expert-data-parallel group: [dense_param_count, param_count).
    static constexpr std::size_t expert_param_count = param_count - dense_param_count;
    /// Ranks the experts are split over (1 without experts); every MoE layer must agree.
    static constexpr std::size_t expert_parallel_size = [] {
        std::size_t ep = 0;
        bool agree = true;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (
                [&] {
                    constexpr std::size_t e = detail::layer_ep_size<layer_t<I>>();
                    if (e != 0 && ep != 0 && e != ep) agree = false;
                    if (e != 0) ep = e;
                }(),
                ...);
        }(std::make_index_sequence<layer_count>{});
        return agree ? std::max<std::size_t>(ep, 1) : 0;
    }();
    static_assert(expert_parallel_size > 0, "ds::nn::Sequential: MoE layers with different ep_size");
    /// The same model with its experts split over `Ep` ranks; `with_expert_parallel<1>` is
    /// the model holding every expert, whose layout `global_offset` maps to.
    template <std::size_t Ep>
    using with_expert_parallel = BasicSequential<T, Input, typename detail::WithEp<Layers, Ep>::type...>;

private:
    /// Calls `f(std::integral_constant<std::size_t, I>, spec, offset)` for every tensor of
    /// layer I, in table order: the dense ones in layer order, then the experts.
    static constexpr auto for_each_tensor = [](auto&& f) {
        const auto specs = [&](auto layer, std::size_t at, const auto& list) {
            for (const auto& spec : list) f(layer, spec, at), at += spec.shape.numel();
        };
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (specs(std::integral_constant<std::size_t, I>{}, layer_offsets[I], layer_t<I>::params), ...);
            (
                [&] {
                    if constexpr (has_experts<I>)
                        specs(std::integral_constant<std::size_t, I>{}, expert_offsets[I], layer_t<I>::expert_params);
                }(),
                ...);
        }(std::make_index_sequence<layer_count>{});
    };
    /// The name's first part for the tensors of layer `I` (an integral_constant).
    static constexpr auto prefix = [](auto layer) {
        return detail::layer_prefix<layer_t<decltype(layer)::value>, decltype(layer)::value>();
    };
    static constexpr std::size_t tensor_count = [] {
        std::size_t n = 0;
        for_each_tensor([&](auto, const auto&, std::size_t) { ++n; });
        return n;
    }();
    /// The text of every name, one after another: names of any length, in constexpr storage.
    static constexpr auto name_text = [] {
        constexpr std::size_t chars = [] {
            std::size_t n = 0;
            for_each_tensor([&](auto layer, const auto& spec, std::size_t) {
                n += prefix(layer).size() + 1 + spec.name.size();
            });
            return n;
        }();
        std::array<char, chars> text{};
        std::size_t at = 0;
        const auto put = [&](std::string_view s) {
            for (char c : s) text[at++] = c;
        };
        for_each_tensor([&](auto layer, const auto& spec, std::size_t) {
            put(prefix(layer));
            put(".");
            put(spec.name);
        });
        return text;
    }();

public:
    /// Every parameter tensor with its PyTorch name (`fc1.weight`), offset and shape: the
    /// dense ones in layer order, then this rank's experts in layer order.
    static constexpr auto parameters = [] {
        std::array<Parameter, tensor_count> table{};
        std::size_t next = 0, at = 0;
        for_each_tensor([&](auto layer, const auto& spec, std::size_t offset) {
            const std::size_t length = prefix(layer).size() + 1 + spec.name.size();
            table[next++] = {std::string_view(name_text.data() + at, length), offset, spec.shape};
            at += length;
        });
        return table;
    }();

    /// Where value `at` of EP rank `ep_rank`'s parameters sits in `with_expert_parallel<1>`'s:
    /// dense values stay; block b of a layer's local experts is block `ep_rank` of that
    /// layer's experts there (EP rank ρ holds experts ρ·E/ep ..).
    static constexpr std::size_t global_offset(std::size_t at, std::size_t ep_rank) {
        if (at < dense_param_count) return at;
        std::size_t local = dense_param_count;
        for (std::size_t n : expert_blocks) {
            if (at < local + n)
                return dense_param_count + expert_parallel_size * (local - dense_param_count) + ep_rank * n + (at - local);
            local += n;
        }
        return at;  // past the end: not a parameter
    }

    /// Allocates activations and work buffers for batches of up to `max_batch` samples.
    explicit BasicSequential(std::size_t max_batch) : max_batch_(max_batch) {
        std::size_t widest = Input::size;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((std::get<I>(layers_).reserve(max_batch),
              activations_[I].resize(max_batch * layer_t<I>::output_shape::size),
              widest = std::max(widest, layer_t<I>::output_shape::size)),
             ...);
        }(std::make_index_sequence<layer_count>{});
        grad_a_.resize(max_batch * widest);
        grad_b_.resize(max_batch * widest);
        if constexpr (!std::is_same_v<T, float>) {
            std::size_t widest_layer = 0, widest_experts = 0;
            for (const auto& r : layer_ranges) widest_layer = std::max(widest_layer, r.count);
            for (const auto& r : expert_ranges) widest_experts = std::max(widest_experts, r.count);
            for (auto* b : {&x32_, &y32_, &dy32_, &dx32_}) b->resize(max_batch * widest);
            w32_.resize(widest_layer);
            dw32_.resize(widest_layer);
            we32_.resize(widest_experts);
            dwe32_.resize(widest_experts);
        }
    }

    std::size_t max_batch() const { return max_batch_; }

    /// Checks a batch's inputs before anything runs (token ids against the vocabulary:
    /// the first layer's `check_inputs`), so a bad batch changes nothing and, at ZeRO
    /// stage 3, fails before any collective. @throws what that layer throws
    void check_inputs(const input_value_type* x, std::size_t batch) const {
        if constexpr (requires { layer_t<0>::check_inputs(x, batch); }) layer_t<0>::check_inputs(x, batch);
    }

    /// Bytes of activations, backward work buffers and each layer's own (the convolutions'
    /// per-thread scratch, pooling positions, MoE blocks).
    std::size_t buffer_bytes() const {
        std::size_t n = grad_a_.size() + grad_b_.size();
        for (const auto& a : activations_) n += a.size();
        const std::size_t work = x32_.size() + y32_.size() + dy32_.size() + dx32_.size() + w32_.size() + dw32_.size() +
                                 we32_.size() + dwe32_.size();
        std::size_t own = 0;
        std::apply([&](const auto&... layer) { ((own += buffer_bytes_of(layer)), ...); }, layers_);
        return n * sizeof(T) + work * sizeof(float) + own;
    }

    /// Calls `f(layer)` for every layer, in order.
    template <class F>
    void for_each_layer(F&& f) {
        std::apply([&](auto&... layer) { (f(layer), ...); }, layers_);
    }

    /// PyTorch's default initialisation of every layer, in layer order, from `rng`.
    static void init(float* params, Rng& rng) {
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (
                [&] {
                    if constexpr (has_experts<I>) layer_t<I>::init(params + layer_offsets[I], params + expert_offsets[I], rng);
                    else layer_t<I>::init(params + layer_offsets[I], rng);
                }(),
                ...);
        }(std::make_index_sequence<layer_count>{});
    }

    using LayerRange = nn::LayerRange;
    /// Each layer's dense parameters.
    static constexpr std::array<LayerRange, layer_count> layer_ranges = [] {
        std::array<LayerRange, layer_count> r{};
        for (std::size_t i = 0; i < layer_count; ++i) r[i] = {layer_offsets[i], layer_offsets[i + 1] - layer_offsets[i]};
        return r;
    }();
    /// The index of the layer that lends layer I its parameters (`nn::Tied`): the earlier
    /// layer whose name it gives.
    template <std::size_t I>
    static constexpr std::size_t lender_of = [] {
        std::size_t found = layer_count;
        if constexpr (detail::borrows_parameters<layer_t<I>>)
            [&]<std::size_t... J>(std::index_sequence<J...>) {
                ((found = J < I && detail::layer_prefix<layer_t<J>, J>() == layer_t<I>::tied_to ? J : found), ...);
            }(std::make_index_sequence<layer_count>{});
        return found;
    }();
    /// The span of the flat buffer layer I computes with: its own, or its lender's.
    template <std::size_t I>
    static constexpr LayerRange param_range = [] {
        if constexpr (detail::borrows_parameters<layer_t<I>>) {
            static_assert(lender_of<I> < I, "ds::nn::Tied: no earlier layer of the model has the name it lends from");
            constexpr auto& lent = layer_t<lender_of<I>>::params;
            constexpr auto& wanted = layer_t<I>::tied_params;
            static_assert(lent.size() == wanted.size() && [&] {
                for (std::size_t t = 0; t < lent.size(); ++t) {
                    if (lent[t].shape.rank != wanted[t].shape.rank) return false;
                    for (std::size_t d = 0; d < lent[t].shape.rank; ++d)
                        if (lent[t].shape.dims[d] != wanted[t].shape.dims[d]) return false;
                }
                return true;
            }(), "ds::nn::Tied: the layer's tensors must have the shapes of its lender's, in order");
            return layer_ranges[lender_of<I>];
        } else {
            return layer_ranges[I];
        }
    }();
    static_assert([]<std::size_t... I>(std::index_sequence<I...>) {  // every lender found, with the model
        return ((param_range<I>.offset + param_range<I>.count <= param_count) && ...);
    }(std::make_index_sequence<layer_count>{}));
    /// The layers whose parameters a forward pass asks for, in order (ZeRO-3 prefetches by
    /// it): each layer with parameters, and a tied layer's lender again where it computes.
    static constexpr auto gather_order = [] {
        constexpr std::size_t count = []<std::size_t... I>(std::index_sequence<I...>) {
            return ((param_range<I>.count > 0 ? 1 : 0) + ... + 0);
        }(std::make_index_sequence<layer_count>{});
        std::array<std::size_t, count> order{};
        std::size_t next = 0;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (
                [&] {
                    if constexpr (param_range<I>.count > 0)
                        order[next++] = detail::borrows_parameters<layer_t<I>> ? lender_of<I> : I;
                }(),
                ...);
        }(std::make_index_sequence<layer_count>{});
        return order;
    }();
    /// Each layer's experts (empty for the others), after all the dense parameters.
    static constexpr std::array<LayerRange, layer_count> expert_ranges = [] {
        std::array<LayerRange, layer_count> r{};
        for (std::size_t i = 0; i < layer_count; ++i) r[i] = {expert_offsets[i], expert_offsets[i + 1] - expert_offsets[i]};
        return r;
    }();

    /// Runs the layers on `batch` samples at `x` (kept by pointer until `backward`) with
    /// parameters from one flat buffer.
    /// @returns the output, `batch × output_shape::size` values owned by the model
    const T* forward(const input_value_type* x, std::size_t batch, const T* params) {
        FlatHooks<T, T> hooks{params, nullptr};
        return forward(x, batch, hooks);
    }

    /// Backward from d loss / d output of the last `forward`, adding parameter gradients
    /// into `grads` (same layout as the parameters). No gradient is formed for the input.
    template <class G>
    void backward(const T* grad_output, const T* params, G* grads) {
        FlatHooks<T, G> hooks{params, grads};
        backward(grad_output, hooks);
    }

    /// Forward with the parameters supplied layer by layer: `hooks.parameters(range)` returns
    /// the layer's parameters (ZeRO-3 gathers them there), `hooks.forward_done(range)`
    /// follows the layer (and may release them). Layers without parameters are not announced.
    template <class Hooks>
    const T* forward(const input_value_type* x, std::size_t batch, Hooks& hooks) {
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
    void backward(const T* grad_output, Hooks& hooks) {
        backward(grad_output, hooks, input_, nullptr);
    }

    /// Backward as above, from the last forward's `input` (the same values, wherever they
    /// are now), also writing d loss / d input to `grad_input` (batch × input size) unless
    /// it is null: what a block around this chain (`nn::Residual`) needs.
    template <class Hooks>
    void backward(const T* grad_output, Hooks& hooks, const input_value_type* input, T* grad_input) {
        if constexpr (holds_ids<Input>)
            if (grad_input) throw std::invalid_argument("ds::nn::Sequential: token ids have no gradient");
        input_ = input;
        grad_input_ = grad_input;
        std::copy_n(grad_output, batch_ * output_shape::size, grad_a_.data());
        backward_from<layer_count - 1>(grad_a_.data(), grad_b_.data(), hooks);
    }

    /// Layer I itself (for tests and inspection, e.g. an MoE layer's routing).
    template <std::size_t I>
    auto& layer() {
        return std::get<I>(layers_);
    }
    template <std::size_t I>
    const auto& layer() const {
        return std::get<I>(layers_);
    }

    /// The activations of layer I after `forward` (for tests and inspection).
    template <std::size_t I>
    const T* activation() const {
        return activations_[I].data();
    }

private:
    static constexpr bool widens = !std::is_same_v<T, float>;

    template <std::size_t I>
    auto layer_input() const {
        if constexpr (I == 0) return input_;
        else return static_cast<const T*>(activations_[I - 1].data());
    }
    /// Layer I's input as it computes on it: widened into `x32_` (2-byte T), except ids.
    template <std::size_t I>
    auto widened_input(std::size_t batch) {
        if constexpr (I == 0 && holds_ids<Input>) {
            return input_;
        } else {
            cpu::convert(layer_input<I>(), x32_.data(), batch * in_size<I>);
            return static_cast<const float*>(x32_.data());
        }
    }
    template <std::size_t I>
    static constexpr std::size_t in_size = layer_t<I>::input_shape::size;
    template <std::size_t I>
    static constexpr std::size_t out_size = layer_t<I>::output_shape::size;

    template <std::size_t I, class Hooks>
    void forward_layer(std::size_t batch, Hooks& hooks) {
        constexpr LayerRange range = param_range<I>, experts = expert_ranges[I];
        const T* w = nullptr;
        const T* we = nullptr;
        if constexpr (range.count > 0) w = hooks.parameters(range);
        if constexpr (experts.count > 0) we = hooks.parameters(experts);
        auto& layer = std::get<I>(layers_);
        const auto run = [&](const auto* x, auto* y, const auto* w_, const auto* we_) {
            if constexpr (has_experts<I>) layer.forward(x, y, batch, w_, we_);
            else layer.forward(x, y, batch, w_);
        };
        if constexpr (widens) {
            const auto* x = widened_input<I>(batch);
            if constexpr (range.count > 0) cpu::convert(w, w32_.data(), range.count);
            if constexpr (experts.count > 0) cpu::convert(we, we32_.data(), experts.count);
            run(x, y32_.data(), w32_.data(), we32_.data());
            cpu::convert(y32_.data(), activations_[I].data(), batch * out_size<I>);
        } else {
            run(layer_input<I>(), activations_[I].data(), w, we);
        }
        if constexpr (range.count > 0) hooks.forward_done(range);
        if constexpr (experts.count > 0) hooks.forward_done(experts);
    }

    template <std::size_t I, class Hooks>
    void backward_from(T* dy, T* dx, Hooks& hooks) {
        constexpr LayerRange range = param_range<I>, experts = expert_ranges[I];
        const T* w = nullptr;
        const T* we = nullptr;
        auto* dw = static_cast<decltype(hooks.gradients(range))>(nullptr);
        auto* dwe = dw;
        if constexpr (range.count > 0) {
            w = hooks.parameters(range);
            dw = hooks.gradients(range);
        }
        if constexpr (experts.count > 0) {
            we = hooks.parameters(experts);
            dwe = hooks.gradients(experts);
        }
        auto& layer = std::get<I>(layers_);
        const auto run = [&](const auto* x, const auto* y, auto* dy_, auto* dx_, const auto* w_, auto* dw_, const auto* we_,
                             auto* dwe_) {
            if constexpr (has_experts<I>) layer.backward(x, y, dy_, dx_, batch_, w_, dw_, we_, dwe_);
            else layer.backward(x, y, dy_, dx_, batch_, w_, dw_);
        };
        if constexpr (widens) {
            const auto* x = widened_input<I>(batch_);
            cpu::convert(activations_[I].data(), y32_.data(), batch_ * out_size<I>);
            cpu::convert(dy, dy32_.data(), batch_ * out_size<I>);
            if constexpr (range.count > 0) {
                cpu::convert(w, w32_.data(), range.count);
                std::fill_n(dw32_.begin(), range.count, 0.0f);
            }
            if constexpr (experts.count > 0) {
                cpu::convert(we, we32_.data(), experts.count);
                std::fill_n(dwe32_.begin(), experts.count, 0.0f);
            }
            float* dx32 = I == 0 && !grad_input_ ? nullptr : dx32_.data();
            run(x, y32_.data(), dy32_.data(), dx32, w32_.data(), dw32_.data(), we32_.data(), dwe32_.data());
            if constexpr (I > 0) cpu::convert(dx32_.data(), dx, batch_ * in_size<I>);
            else if (grad_input_) cpu::convert(dx32_.data(), grad_input_, batch_ * in_size<I>);
            if constexpr (range.count > 0) cpu::accumulate_rounded<T>(dw32_.data(), dw, range.count);
            if constexpr (experts.count > 0) cpu::accumulate_rounded<T>(dwe32_.data(), dwe, experts.count);
        } else {
            run(layer_input<I>(), activations_[I].data(), dy, I == 0 ? grad_input_ : dx, w, dw, we, dwe);
        }
        if constexpr (range.count > 0) hooks.backward_done(range);
        if constexpr (experts.count > 0) hooks.backward_done(experts);
        if constexpr (I > 0) backward_from<I - 1>(dx, dy, hooks);
    }

    layer_tuple layers_{};
    std::array<std::vector<T>, layer_count> activations_{};
    std::vector<T> grad_a_, grad_b_;
    std::vector<float> x32_, y32_, dy32_, dx32_, w32_, dw32_, we32_, dwe32_;  ///< float work buffers (2-byte T only)
    const input_value_type* input_ = nullptr;
    T* grad_input_ = nullptr;  ///< where backward writes d loss / d input (none for a whole model)
    std::size_t batch_ = 0;
    std::size_t max_batch_;
};

/// The fp32 model: what users name (`ds::Engine` rebinds it to the precision policy's dtype).
template <class Input, class... Layers>
using Sequential = BasicSequential<float, Input, Layers...>;

}  // namespace ds::nn
