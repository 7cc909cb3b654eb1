#pragma once
/// @file
/// `ds::nn::Flatten`: an image as a feature vector.

#include <algorithm>
#include <array>
#include <cstddef>

#include <ds/nn/layer.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// `torch.flatten(x, 1)`: an image becomes a feature vector of the same values, in C, H, W order.
struct Flatten {
    template <class Input>
    struct Bound {
        using input_shape = Input;
        using output_shape = Features<Input::size>;
        static constexpr std::array<ParamSpec, 0> params{};

        void reserve(std::size_t) {}
        static void init(float*, Rng&) {}

        void forward(const float* x, float* y, std::size_t batch, const float*) {
            std::copy_n(x, batch * Input::size, y);
        }
        void backward(const float*, const float*, float* dy, float* dx, std::size_t batch, const float*, float*) {
            if (dx) std::copy_n(dy, batch * Input::size, dx);
        }
    };
};

static_assert(ds::layer<Flatten, Image<1, 2, 2>>);

}  // namespace ds::nn
