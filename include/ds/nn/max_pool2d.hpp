#pragma once
/// @file
/// `ds::nn::MaxPool2d<S>`: S × S windows with stride S, as PyTorch's MaxPool2d(S, S).

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <ds/nn/math/max_pool.hpp>
#include <ds/nn/layer.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// Max pooling; odd edges are dropped (floor), as in PyTorch. Backward routes each
/// gradient to the window's first maximum, remembered from the forward.
template <std::size_t S>
struct MaxPool2d {
    static_assert(S >= 1 && S <= 16, "ds::nn::MaxPool2d<S>: window size out of range");

    template <class Input>
    struct Bound;

    template <std::size_t C, std::size_t H, std::size_t W>
    struct Bound<Image<C, H, W>> {
        static_assert(H >= S && W >= S, "ds::nn::MaxPool2d<S>: the window is larger than the image");
        static constexpr std::size_t out_h = H / S, out_w = W / S;
        using input_shape = Image<C, H, W>;
        using output_shape = Image<C, out_h, out_w>;
        static constexpr std::array<ParamSpec, 0> params{};

        std::vector<std::uint8_t> argmax;  // position of the maximum within each window

        void reserve(std::size_t max_batch) { argmax.resize(max_batch * output_shape::size); }
        std::size_t buffer_bytes() const { return argmax.size(); }
        static void init(float*, Rng&) {}

        void forward(const float* x, float* y, std::size_t batch, const float*) {
            for (std::size_t plane = 0; plane < batch * C; ++plane) {
                const float* in = x + plane * H * W;
                float* out = y + plane * out_h * out_w;
                std::uint8_t* arg = argmax.data() + plane * out_h * out_w;
                for (std::size_t oy = 0; oy < out_h; ++oy)
                    for (std::size_t ox = 0; ox < out_w; ++ox) {
                        const math::WindowMax best = math::window_max<S>(in + (oy * S) * W + ox * S, W);
                        out[oy * out_w + ox] = best.value;
                        arg[oy * out_w + ox] = best.at;
                    }
            }
        }

        void backward(const float*, const float*, float* dy, float* dx, std::size_t batch, const float*, float*) {
            if (!dx) return;
            for (std::size_t plane = 0; plane < batch * C; ++plane) {
                float* in = dx + plane * H * W;
                const float* out = dy + plane * out_h * out_w;
                const std::uint8_t* arg = argmax.data() + plane * out_h * out_w;
                std::fill_n(in, H * W, 0.0f);
                for (std::size_t oy = 0; oy < out_h; ++oy)
                    for (std::size_t ox = 0; ox < out_w; ++ox) {
                        const std::size_t i = arg[oy * out_w + ox] / S, j = arg[oy * out_w + ox] % S;
                        in[(oy * S + i) * W + ox * S + j] = out[oy * out_w + ox];
                    }
            }
        }
    };
};

static_assert(ds::layer<MaxPool2d<2>, Image<1, 4, 4>>);

}  // namespace ds::nn
