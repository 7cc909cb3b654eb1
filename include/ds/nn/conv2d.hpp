#pragma once
/// @file
/// `ds::nn::Conv2d<In, Out, K>`: stride 1, no padding, like the CIFAR example's layers.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include <ds/device/cpu/gemm.hpp>
#include <ds/device/cpu/im2col.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// 2-D convolution over an `In`-channel image with `Out` filters of K × K, weight
/// [Out, In, K, K] and bias [Out] as in PyTorch. Computed per image as im2col + one GEMM.
template <std::size_t In, std::size_t Out, std::size_t K>
struct Conv2d {
    template <class Input>
    struct Bound;

    template <std::size_t C, std::size_t H, std::size_t W>
    struct Bound<Image<C, H, W>> {
        static_assert(C == In, "ds::nn::Conv2d<In, Out, K>: In must equal the input's channel count");
        static_assert(H >= K && W >= K, "ds::nn::Conv2d<In, Out, K>: the kernel is larger than the image");
        static constexpr std::size_t out_h = H - K + 1, out_w = W - K + 1;
        static constexpr std::size_t pixels = out_h * out_w;  // per output channel
        static constexpr std::size_t patch = In * K * K;      // GEMM inner dimension
        using input_shape = Image<C, H, W>;
        using output_shape = Image<Out, out_h, out_w>;
        static constexpr std::array<ParamSpec, 2> params{
            {{"weight", {4, {Out, In, K, K}}}, {"bias", {1, {Out}}}}};
        static constexpr std::size_t weight_offset = 0, bias_offset = Out * patch;

        std::vector<float> col = std::vector<float>(patch * pixels);

        void reserve(std::size_t /*max_batch*/) {}

        /// PyTorch's default: U(±1/√(In·K·K)) for weight (kaiming-uniform, a = √5) and bias.
        static void init(float* w, Rng& rng) {
            const float bound = 1.0f / std::sqrt(static_cast<float>(patch));
            for (std::size_t i = 0; i < Out * patch + Out; ++i) w[i] = rng.uniform(-bound, bound);
        }

        void forward(const float* x, float* y, std::size_t batch, const float* w) {
            for (std::size_t b = 0; b < batch; ++b) {
                float* out = y + b * output_shape::size;
                for (std::size_t o = 0; o < Out; ++o) std::fill_n(out + o * pixels, pixels, w[bias_offset + o]);
                cpu::im2col(x + b * input_shape::size, C, H, W, K, col.data());
                cpu::gemm(cpu::Op::none, cpu::Op::none, Out, pixels, patch, 1.0f, w, patch, col.data(), pixels, 1.0f,
                          out, pixels);
            }
        }

        /// Adds the weight and bias gradients to `dw`; writes dx unless it is null.
        void backward(const float* x, const float* /*y*/, float* dy, float* dx, std::size_t batch, const float* w,
                      float* dw) {
            float* db = dw + bias_offset;
            for (std::size_t b = 0; b < batch; ++b) {
                const float* grad_out = dy + b * output_shape::size;
                for (std::size_t o = 0; o < Out; ++o) {
                    float sum = 0.0f;
                    for (std::size_t p = 0; p < pixels; ++p) sum += grad_out[o * pixels + p];
                    db[o] += sum;
                }
                cpu::im2col(x + b * input_shape::size, C, H, W, K, col.data());
                cpu::gemm(cpu::Op::none, cpu::Op::transpose, Out, patch, pixels, 1.0f, grad_out, pixels, col.data(),
                          pixels, 1.0f, dw, patch);
                if (dx) {
                    cpu::gemm(cpu::Op::transpose, cpu::Op::none, patch, pixels, Out, 1.0f, w, patch, grad_out, pixels,
                              0.0f, col.data(), pixels);
                    float* grad_in = dx + b * input_shape::size;
                    std::fill_n(grad_in, input_shape::size, 0.0f);
                    cpu::col2im(col.data(), C, H, W, K, grad_in);
                }
            }
        }
    };
};

}  // namespace ds::nn
