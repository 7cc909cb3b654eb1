#pragma once
/// @file
/// `ds::nn::ReLU`: max(x, 0), any shape.

#include <array>
#include <cstddef>

#include <ds/nn/math/relu.hpp>
#include <ds/nn/layer.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// Rectified linear unit. Backward passes the gradient where the output is positive.
struct ReLU {
    template <class Input>
    struct Bound {
        using input_shape = Input;
        using output_shape = Input;
        static constexpr std::array<ParamSpec, 0> params{};

        void reserve(std::size_t) {}
        static void init(float*, Rng&) {}

        void forward(const float* x, float* y, std::size_t batch, const float*) {
            const std::size_t n = batch * Input::size;
            for (std::size_t i = 0; i < n; ++i) y[i] = math::relu(x[i]);
        }
        void backward(const float*, const float* y, float* dy, float* dx, std::size_t batch, const float*, float*) {
            if (!dx) return;
            const std::size_t n = batch * Input::size;
            for (std::size_t i = 0; i < n; ++i) dx[i] = math::relu_backward(y[i], dy[i]);
        }
    };
};

static_assert(ds::layer<ReLU, Features<3>>);

}  // namespace ds::nn
