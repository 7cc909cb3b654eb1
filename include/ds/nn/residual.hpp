#pragma once
/// @file
/// `ds::nn::Residual<Layers...>`: y = x + f(x), where f is a chain of layers.

#include <array>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <vector>

#include <ds/nn/layer.hpp>
#include <ds/nn/sequential.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// A residual block: its layers applied in order to x, plus x (a transformer block's two
/// halves, a ResNet block). The output shape of the chain must equal its input shape.
///
/// The block is one layer to whatever holds it: its tensors are its layers' tensors, one
/// after another, named `<i>.<name>` below the block's own name (PyTorch's
/// `nn.Sequential` inside a module: `block.0.weight`), and ZeRO stage 3 gathers them
/// together — every layer of the block has its parameters live while the block runs.
/// Inside, the layers compute and keep their activations in fp32, whatever the model's
/// storage dtype: only the block's output (and input gradient) is rounded to it.
template <class... Layers>
struct Residual {
    static_assert(sizeof...(Layers) > 0, "ds::nn::Residual: give the block at least one layer");
    template <class Input>
    struct Bound {
        static_assert(!holds_ids<Input>, "ds::nn::Residual: a block adds its input, so it takes features, not token ids");
        using chain = Sequential<Input, Layers...>;
        static_assert(chain::output_shape::size == Input::size,
                      "ds::nn::Residual: the block's layers must map the input shape to itself (x + f(x))");
        static_assert(!chain::contains_moe, "ds::nn::Residual: Mixture-of-Experts layers cannot sit inside a block");
        using input_shape = Input;
        using output_shape = Input;

        static constexpr auto params = [] {
            std::array<ParamSpec, chain::parameters.size()> specs{};
            for (std::size_t i = 0; i < specs.size(); ++i) specs[i] = {chain::parameters[i].name(), chain::parameters[i].shape};
            return specs;
        }();

        static void init(float* params, Rng& rng) { chain::init(params, rng); }

        void reserve(std::size_t max_batch) {
            if (!chain_ || chain_->max_batch() < max_batch) chain_.emplace(max_batch);
        }
        std::size_t buffer_bytes() const { return chain_ ? chain_->buffer_bytes() : 0; }

        void forward(const float* x, float* y, std::size_t batch, const float* w) {
            if (!chain_ || batch > chain_->max_batch())
                throw std::logic_error("ds::nn::Residual: forward of a batch larger than reserve() allowed");
            const float* fx = chain_->forward(x, batch, w);
            for (std::size_t i = 0; i < batch * Input::size; ++i) y[i] = x[i] + fx[i];
        }

        /// d/dx (x + f(x)) = 1 + f'(x): the chain's input gradient plus dy.
        void backward(const float* x, const float* /*y*/, float* dy, float* dx, std::size_t batch, const float* w,
                      float* dw) {
            FlatHooks<float, float> hooks{w, dw};
            chain_->backward(dy, hooks, x, dx);
            if (dx)
                for (std::size_t i = 0; i < batch * Input::size; ++i) dx[i] += dy[i];
        }

    private:
        std::optional<chain> chain_;
    };
};

}  // namespace ds::nn
