#pragma once
/// @file
/// The CIFAR Net's layer kernels on the GPU, each a thin grid-stride launch over the shared
/// `DS_HOST_DEVICE` math in `ds/nn/math/` (DESIGN principle 3): im2col and its gradient,
/// max-pool forward and backward, ReLU, softmax cross-entropy. One thread per output
/// element, gathering, so no kernel needs atomics and every result is deterministic.

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/launch.hpp>
#include <ds/nn/math/im2col.hpp>
#include <ds/nn/math/max_pool.hpp>
#include <ds/nn/math/relu.hpp>
#include <ds/nn/math/softmax_cross_entropy.hpp>

namespace ds::cuda {

namespace detail {

template <class F>
__global__ void for_each_index_kernel(std::size_t n, F f) {
    const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
    for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

/// f(i) for i in [0, n), on `stream`.
template <class F>
void for_each_index(std::size_t n, const F& f, cudaStream_t stream) {
    if (n == 0) return;
    constexpr unsigned threads = 256;
    for_each_index_kernel<<<grid_for(n, threads), threads, 0, stream>>>(n, f);
    DS_CUDA_CHECK_LAUNCH();
}


template <class Shape>
struct GatherBatch {
    const float* in;
    float* col;
    std::size_t batch;
    __device__ void operator()(std::size_t i) const { Shape::gather_batch(i, in, col, batch); }
};
template <class Shape>
struct ScatterBackBatch {
    const float* dcol;
    float* dx;
    std::size_t batch;
    __device__ void operator()(std::size_t i) const { Shape::scatter_back_batch(i, dcol, dx, batch); }
};
template <class Rows>
struct ToImages {
    const float* rows;
    const float* bias;
    float* images;
    std::size_t batch;
    __device__ void operator()(std::size_t i) const { Rows::to_images(i, rows, bias, images, batch); }
};
template <class Rows>
struct ToRows {
    const float* images;
    float* rows;
    std::size_t batch;
    __device__ void operator()(std::size_t i) const { Rows::to_rows(i, images, rows, batch); }
};
struct AddBias {
    float* y;
    const float* bias;
    std::size_t features;
    __device__ void operator()(std::size_t i) const { y[i] += bias[i % features]; }
};
struct Fill {
    float* out;
    float value;
    __device__ void operator()(std::size_t i) const { out[i] = value; }
};

template <std::size_t C, std::size_t H, std::size_t W, std::size_t S>
struct PoolForward {
    static constexpr std::size_t out_h = H / S, out_w = W / S;
    const float* x;
    float* y;
    std::uint8_t* at;
    __device__ void operator()(std::size_t i) const {
        const std::size_t plane = i / (out_h * out_w), oy = i / out_w % out_h, ox = i % out_w;
        const nn::math::WindowMax best = nn::math::window_max<S>(x + plane * H * W + oy * S * W + ox * S, W);
        y[i] = best.value;
        at[i] = best.at;
    }
};
template <std::size_t C, std::size_t H, std::size_t W, std::size_t S>
struct PoolBackward {
    static constexpr std::size_t out_h = H / S, out_w = W / S;
    const float* dy;
    const std::uint8_t* at;
    float* dx;
    /// Input element i takes its window's gradient if it was the window's maximum (windows
    /// do not overlap); edges that no window covers get 0.
    __device__ void operator()(std::size_t i) const {
        const std::size_t plane = i / (H * W), h = i / W % H, w = i % W;
        const std::size_t oy = h / S, ox = w / S;
        float g = 0.0f;
        if (oy < out_h && ox < out_w) {
            const std::size_t o = plane * out_h * out_w + oy * out_w + ox;
            if (at[o] == (h % S) * S + w % S) g = dy[o];
        }
        dx[i] = g;
    }
};

struct ReluForward {
    const float* x;
    float* y;
    __device__ void operator()(std::size_t i) const { y[i] = nn::math::relu(x[i]); }
};
struct ReluBackward {
    const float* y;
    const float* dy;
    float* dx;
    __device__ void operator()(std::size_t i) const { dx[i] = nn::math::relu_backward(y[i], dy[i]); }
};
struct SoftmaxCrossEntropy {
    const float* logits;
    const std::int32_t* labels;
    std::size_t classes, batch;
    double* losses;
    float* grad;
    __device__ void operator()(std::size_t b) const {
        losses[b] = nn::math::softmax_cross_entropy(logits + b * classes, classes, labels[b], batch, grad + b * classes);
    }
};

}  // namespace detail

/// The columns of `batch` C × H × W images for K × K filters, side by side
/// (`nn::math::Im2Col::gather_batch`): one GEMM then convolves the whole batch.
template <std::size_t C, std::size_t H, std::size_t W, std::size_t K>
void im2col_batch(const float* in, float* col, std::size_t batch, cudaStream_t stream) {
    using Shape = nn::math::Im2Col<C, H, W, K>;
    detail::for_each_index(batch * Shape::col_size, detail::GatherBatch<Shape>{in, col, batch}, stream);
}
/// The input gradient from the columns' gradient (`Im2Col::scatter_back_batch`).
template <std::size_t C, std::size_t H, std::size_t W, std::size_t K>
void col2im_batch(const float* dcol, float* dx, std::size_t batch, cudaStream_t stream) {
    using Shape = nn::math::Im2Col<C, H, W, K>;
    detail::for_each_index(batch * Shape::image_size, detail::ScatterBackBatch<Shape>{dcol, dx, batch}, stream);
}
/// [O][B][P] GEMM rows to [B][O][P] images, adding a bias per channel (`nn::math::BatchRows`).
template <std::size_t O, std::size_t P>
void rows_to_images(const float* rows, const float* bias, float* images, std::size_t batch, cudaStream_t stream) {
    detail::for_each_index(batch * O * P, detail::ToImages<nn::math::BatchRows<O, P>>{rows, bias, images, batch}, stream);
}
template <std::size_t O, std::size_t P>
void images_to_rows(const float* images, float* rows, std::size_t batch, cudaStream_t stream) {
    detail::for_each_index(batch * O * P, detail::ToRows<nn::math::BatchRows<O, P>>{images, rows, batch}, stream);
}
/// y[b][f] += bias[f] for `batch` rows of `features`.
inline void add_bias(float* y, const float* bias, std::size_t features, std::size_t batch, cudaStream_t stream) {
    detail::for_each_index(batch * features, detail::AddBias{y, bias, features}, stream);
}
inline void fill(float* out, std::size_t n, float value, cudaStream_t stream) {
    detail::for_each_index(n, detail::Fill{out, value}, stream);
}
/// S × S max pooling of `batch` C × H × W images; `at` keeps each maximum's place.
template <std::size_t C, std::size_t H, std::size_t W, std::size_t S>
void max_pool_forward(const float* x, float* y, std::uint8_t* at, std::size_t batch, cudaStream_t stream) {
    detail::for_each_index(batch * C * (H / S) * (W / S), detail::PoolForward<C, H, W, S>{x, y, at}, stream);
}
template <std::size_t C, std::size_t H, std::size_t W, std::size_t S>
void max_pool_backward(const float* dy, const std::uint8_t* at, float* dx, std::size_t batch, cudaStream_t stream) {
    detail::for_each_index(batch * C * H * W, detail::PoolBackward<C, H, W, S>{dy, at, dx}, stream);
}
inline void relu_forward(const float* x, float* y, std::size_t n, cudaStream_t stream) {
    detail::for_each_index(n, detail::ReluForward{x, y}, stream);
}
inline void relu_backward(const float* y, const float* dy, float* dx, std::size_t n, cudaStream_t stream) {
    detail::for_each_index(n, detail::ReluBackward{y, dy, dx}, stream);
}
/// Each sample's loss (double) into `losses` and d mean loss / d logits into `grad`.
inline void softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::size_t classes,
                                  std::size_t batch, double* losses, float* grad, cudaStream_t stream) {
    detail::for_each_index(batch, detail::SoftmaxCrossEntropy{logits, labels, classes, batch, losses, grad}, stream);
}

}  // namespace ds::cuda
