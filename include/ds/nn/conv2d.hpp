#pragma once
/// @file
/// `ds::nn::Conv2d<In, Out, K>`: stride 1, no padding, like the CIFAR example's layers.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include <ds/device/cpu/conv_kernels.hpp>
#include <ds/device/cpu/simd.hpp>
#include <ds/device/cpu/threads.hpp>
#include <ds/nn/layer.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// 2-D convolution over an `In`-channel image with `Out` filters of K × K, weight
/// [Out, In, K, K] and bias [Out] as in PyTorch. Computed image by image with the direct
/// kernels of `ds::cpu::conv`, which pick their vector layout from the shapes.
template <std::size_t In, std::size_t Out, std::size_t K>
struct Conv2d {
    template <class Input>
    struct Bound;

    template <std::size_t C, std::size_t H, std::size_t W>
    struct Bound<Image<C, H, W>> {
        static_assert(C == In, "ds::nn::Conv2d<In, Out, K>: In must equal the input's channel count");
        static_assert(H >= K && W >= K, "ds::nn::Conv2d<In, Out, K>: the kernel is larger than the image");
        using shape = cpu::conv::Shape<C, Out, K, H, W>;
        // The input gradient is a convolution of the output gradient, zero-padded by K − 1.
        using grad_shape = cpu::conv::Shape<Out, C, K, H + K - 1, W + K - 1>;
        static constexpr std::size_t out_h = shape::out_h, out_w = shape::out_w, pixels = out_h * out_w;
        static constexpr std::size_t filter = C * K * K;
        using input_shape = Image<C, H, W>;
        using output_shape = Image<Out, out_h, out_w>;
        static constexpr std::array<ParamSpec, 2> params{
            {{"weight", {4, {Out, In, K, K}}}, {"bias", {1, {Out}}}}};
        static constexpr std::size_t weight_offset = 0, bias_offset = Out * filter;

        void reserve(std::size_t /*max_batch*/) {
            weights_.resize(Out * filter);
            scratch_.resize(static_cast<std::size_t>(cpu::max_threads()));
            for (auto& s : scratch_) {
                s.padded_in.resize(C * H * shape::padded_w);
                s.padded_grad.resize(Out * (H + K - 1) * grad_shape::padded_w);
                s.grad_rows.resize(Out * out_h * std::max(shape::padded_out_w, out_w));
                s.weight_grads.resize(Out * filter + Out);
            }
        }

        std::size_t buffer_bytes() const {
            std::size_t n = weights_.size();
            for (const auto& s : scratch_)
                n += s.padded_in.size() + s.padded_grad.size() + s.grad_rows.size() + s.weight_grads.size();
            return n * sizeof(float);
        }

        /// PyTorch's default: U(±1/√(In·K·K)) for weight (kaiming-uniform, a = √5) and bias.
        static void init(float* w, Rng& rng) {
            const float bound = 1.0f / std::sqrt(static_cast<float>(filter));
            for (std::size_t i = 0; i < Out * filter + Out; ++i) w[i] = rng.uniform(-bound, bound);
        }

        /// Images are independent: with OpenMP they are split over the threads.
        void forward(const float* x, float* y, std::size_t batch, const float* w) {
            if constexpr (shape::channels_in_lanes) to_channels_last(w, weights_.data());
            cpu::parallel_for(batch, static_cast<int>(scratch_.size()), [&](std::size_t b, std::size_t thread) {
                Scratch& s = scratch_[thread];
                const float* image = x + b * input_shape::size;
                float* out = y + b * output_shape::size;
                if constexpr (shape::channels_in_lanes) {
                    cpu::conv::forward_o<C, Out, K, H, W>(image, weights_.data(), w + bias_offset, out);
                } else {
                    cpu::conv::pad_rows(image, C * H, W, shape::padded_w, s.padded_in.data());
                    cpu::conv::forward_x<C, Out, K, H, W>(s.padded_in.data(), w, w + bias_offset, out);
                }
            });
        }

        /// Adds the weight and bias gradients to `dw`; writes dx unless it is null. Each
        /// thread sums its images' weight gradients apart; the partial sums are then added
        /// in thread order, so a given thread count gives the same bits every run.
        void backward(const float* x, const float* /*y*/, float* dy, float* dx, std::size_t batch, const float* w,
                      float* dw) {
            if (dx) flip(w, weights_.data());
            for (auto& s : scratch_) std::fill(s.weight_grads.begin(), s.weight_grads.end(), 0.0f);
            cpu::parallel_for(batch, static_cast<int>(scratch_.size()), [&](std::size_t b, std::size_t thread) {
                Scratch& s = scratch_[thread];
                const float* image = x + b * input_shape::size;
                const float* grad_out = dy + b * output_shape::size;
                float* db = s.weight_grads.data() + Out * filter;
                for (std::size_t o = 0; o < Out; ++o) db[o] += cpu::sum(grad_out + o * pixels, pixels);
                if constexpr (shape::channels_in_lanes) {
                    for (std::size_t p = 0; p < pixels; ++p)  // [O][pixels] -> [pixels][O]
                        for (std::size_t o = 0; o < Out; ++o) s.grad_rows[p * Out + o] = grad_out[o * pixels + p];
                    cpu::conv::weight_grad_o<C, Out, K, H, W>(image, s.grad_rows.data(), s.weight_grads.data());
                } else {
                    cpu::conv::pad_rows(image, C * H, W, shape::padded_w, s.padded_in.data());
                    cpu::conv::pad_rows(grad_out, Out * out_h, out_w, shape::padded_out_w, s.grad_rows.data());
                    cpu::conv::weight_grad_x<C, Out, K, H, W>(s.padded_in.data(), s.grad_rows.data(),
                                                              s.weight_grads.data());
                }
                if (dx) input_grad(s, grad_out, dx + b * input_shape::size);
            });
            for (const auto& s : scratch_) {
                if constexpr (shape::channels_in_lanes) add_from_channels_last(s.weight_grads.data(), dw);
                else
                    for (std::size_t i = 0; i < Out * filter; ++i) dw[i] += s.weight_grads[i];
                for (std::size_t o = 0; o < Out; ++o) dw[bias_offset + o] += s.weight_grads[Out * filter + o];
            }
        }

    private:
        /// w[o][c][i][j] -> t[c][i][j][o]
        static void to_channels_last(const float* w, float* t) {
            for (std::size_t o = 0; o < Out; ++o)
                for (std::size_t f = 0; f < filter; ++f) t[f * Out + o] = w[o * filter + f];
        }
        static void add_from_channels_last(const float* t, float* dw) {
            for (std::size_t o = 0; o < Out; ++o)
                for (std::size_t f = 0; f < filter; ++f) dw[o * filter + f] += t[f * Out + o];
        }
        /// w[o][c][i][j] -> f[c][o][K-1-i][K-1-j]: the weights of the input-gradient convolution.
        static void flip(const float* w, float* f) {
            for (std::size_t o = 0; o < Out; ++o)
                for (std::size_t c = 0; c < C; ++c)
                    for (std::size_t i = 0; i < K; ++i)
                        for (std::size_t j = 0; j < K; ++j)
                            f[((c * Out + o) * K + (K - 1 - i)) * K + (K - 1 - j)] = w[((o * C + c) * K + i) * K + j];
        }
        /// Per-thread work buffers.
        struct Scratch {
            std::vector<float> padded_in, padded_grad, grad_rows;
            std::vector<float> weight_grads;  ///< this thread's weight (as laid out by the kernel) and bias gradients
        };

        /// dx = the output gradient, zero-padded by K − 1 on every side, convolved with the flipped weights.
        void input_grad(Scratch& s, const float* grad_out, float* grad_in) {
            constexpr std::size_t ph = H + K - 1, stride = grad_shape::padded_w;
            std::fill(s.padded_grad.begin(), s.padded_grad.end(), 0.0f);
            for (std::size_t o = 0; o < Out; ++o)
                for (std::size_t r = 0; r < out_h; ++r)
                    std::copy_n(grad_out + (o * out_h + r) * out_w, out_w,
                                s.padded_grad.data() + (o * ph + r + K - 1) * stride + K - 1);
            cpu::conv::forward_x<Out, C, K, H + K - 1, W + K - 1>(s.padded_grad.data(), weights_.data(), nullptr,
                                                                  grad_in);
        }

        std::vector<float> weights_;  ///< channels-last (forward) or flipped (backward) weights, shared
        std::vector<Scratch> scratch_;
    };
};

static_assert(ds::layer<Conv2d<1, 2, 3>, Image<1, 5, 5>>);

}  // namespace ds::nn
