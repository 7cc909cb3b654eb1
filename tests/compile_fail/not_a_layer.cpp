// expect: error: static assertion failed: ds::layer: L::Bound<Input> must have `void backward
// A layer without backward: the model's first error names what the layer misses.
#include <array>
#include <cstddef>

#include <ds/nn/linear.hpp>
#include <ds/nn/sequential.hpp>

struct Doubling {  // y = 2x
    template <class Input>
    struct Bound {
        using input_shape = Input;
        using output_shape = Input;
        static constexpr std::array<ds::nn::ParamSpec, 0> params{};
        static void init(float*, ds::Rng&) {}
        void reserve(std::size_t) {}
        void forward(const float* x, float* y, std::size_t batch, const float*) {
            for (std::size_t i = 0; i < batch * Input::size; ++i) y[i] = 2 * x[i];
        }
#ifndef DSPP_BREAK
        void backward(const float*, const float*, float* dy, float* dx, std::size_t batch, const float*, float*) {
            if (dx)
                for (std::size_t i = 0; i < batch * Input::size; ++i) dx[i] = 2 * dy[i];
        }
#endif
    };
};

using Net = ds::nn::Sequential<ds::nn::Features<4>, Doubling, ds::nn::Linear<4, 2>>;
static_assert(Net::param_count == 10);
