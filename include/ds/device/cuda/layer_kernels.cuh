#pragma once
/// @file
/// The CIFAR Net's layer kernels on the GPU, each a thin grid-stride launch over the shared
/// `DS_HOST_DEVICE` math in `ds/nn/math/` (DESIGN principle 3): im2col and its gradient,
/// max-pool forward and backward, ReLU, softmax cross-entropy. One thread per output
/// element, gathering, so no kernel needs atomics and every result is deterministic.
/// Values are stored as T (float, bf16 or half) and computed in float.

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


template <class Shape, class T>
struct GatherBatch {
    const T* in;
    T* col;
    std::size_t batch;
    __device__ void operator()(std::size_t i) const { Shape::gather_batch(i, in, col, batch); }
};
template <class Shape, class D, class T>
struct ScatterBackBatch {
    const D* dcol;
    T* dx;
    std::size_t batch;
    __device__ void operator()(std::size_t i) const { Shape::scatter_back_batch(i, dcol, dx, batch); }
};
/// With `Relu`, a ReLU that follows the layer runs here too: relu(round(v)) is round(relu(v)),
/// so the values are those of the two passes.
template <class Rows, class R, class T, bool Relu>
struct ToImages {
    const R* rows;
    const T* bias;
    T* images;
    std::size_t batch;
    __device__ void operator()(std::size_t i) const {
        Rows::to_images(i, rows, bias, images, batch);
        if constexpr (Relu) images[i] = T(nn::math::relu(static_cast<float>(images[i])));
    }
};
template <class Rows, class T>
struct ToRows {
    const T* images;
    T* rows;
    std::size_t batch;
    __device__ void operator()(std::size_t i) const { Rows::to_rows(i, images, rows, batch); }
};
/// y[i] = T(float(sums[i]) + float(bias[i % features])): one rounding (in place for fp32);
/// with `Relu`, of the sum's ReLU.
template <class R, class T, bool Relu>
struct AddBias {
    const R* sums;
    const T* bias;
    T* y;
    std::size_t features;
    __device__ void operator()(std::size_t i) const {
        const float v = static_cast<float>(sums[i]) + static_cast<float>(bias[i % features]);
        y[i] = T(Relu ? nn::math::relu(v) : v);
    }
};
template <class T>
struct Fill {
    T* out;
    T value;
    __device__ void operator()(std::size_t i) const { out[i] = value; }
};
/// dst[i] = G(float(dst[i]) + float(src[i])): a gradient in T added into a buffer of G.
template <class T, class G>
struct Accumulate {
    const T* src;
    G* dst;
    __device__ void operator()(std::size_t i) const {
        dst[i] = G(static_cast<float>(dst[i]) + static_cast<float>(src[i]));
    }
};

template <std::size_t C, std::size_t H, std::size_t W, std::size_t S, class T>
struct PoolForward {
    static constexpr std::size_t out_h = H / S, out_w = W / S;
    const T* x;
    T* y;
    std::uint8_t* at;
    /// The window widened to float, then the shared `window_max` (exact: max picks a value).
    __device__ void operator()(std::size_t i) const {
        const std::size_t plane = i / (out_h * out_w), oy = i / out_w % out_h, ox = i % out_w;
        const T* first = x + plane * H * W + oy * S * W + ox * S;
        float window[S * S];
#pragma unroll
        for (std::size_t k = 0; k < S * S; ++k) window[k] = static_cast<float>(first[(k / S) * W + k % S]);
        const nn::math::WindowMax best = nn::math::window_max<S>(window, S);
        y[i] = T(best.value);
        at[i] = best.at;
    }
};
template <std::size_t C, std::size_t H, std::size_t W, std::size_t S, class T>
struct PoolBackward {
    static constexpr std::size_t out_h = H / S, out_w = W / S;
    const T* dy;
    const std::uint8_t* at;
    T* dx;
    /// Input element i takes its window's gradient if it was the window's maximum (windows
    /// do not overlap); edges that no window covers get 0.
    __device__ void operator()(std::size_t i) const {
        const std::size_t plane = i / (H * W), h = i / W % H, w = i % W;
        const std::size_t oy = h / S, ox = w / S;
        T g = T(0.0f);
        if (oy < out_h && ox < out_w) {
            const std::size_t o = plane * out_h * out_w + oy * out_w + ox;
            if (at[o] == (h % S) * S + w % S) g = dy[o];
        }
        dx[i] = g;
    }
};

template <class T>
struct ReluForward {
    const T* x;
    T* y;
    __device__ void operator()(std::size_t i) const { y[i] = T(nn::math::relu(static_cast<float>(x[i]))); }
};
template <class T>
struct ReluBackward {
    const T* y;
    const T* dy;
    T* dx;
    __device__ void operator()(std::size_t i) const {
        dx[i] = T(nn::math::relu_backward(static_cast<float>(y[i]), static_cast<float>(dy[i])));
    }
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
template <std::size_t C, std::size_t H, std::size_t W, std::size_t K, class T>
void im2col_batch(const T* in, T* col, std::size_t batch, cudaStream_t stream) {
    using Shape = nn::math::Im2Col<C, H, W, K>;
    detail::for_each_index(batch * Shape::col_size, detail::GatherBatch<Shape, plain_t<T>>{in, col, batch}, stream);
}
/// The input gradient from the columns' gradient (`Im2Col::scatter_back_batch`): `dcol` in
/// T, or unrounded fp32 products rounded to T once after their sum.
template <std::size_t C, std::size_t H, std::size_t W, std::size_t K, class D, class T>
void col2im_batch(const D* dcol, T* dx, std::size_t batch, cudaStream_t stream) {
    using Shape = nn::math::Im2Col<C, H, W, K>;
    detail::for_each_index(batch * Shape::image_size,
                           detail::ScatterBackBatch<Shape, plain_t<D>, plain_t<T>>{dcol, dx, batch}, stream);
}
/// [O][B][P] GEMM rows (T, or unrounded fp32 sums) to [B][O][P] images, adding a bias per
/// channel (`nn::math::BatchRows`), then with `Relu` a ReLU.
template <std::size_t O, std::size_t P, bool Relu = false, class R, class T>
void rows_to_images(const R* rows, const T* bias, T* images, std::size_t batch, cudaStream_t stream) {
    detail::for_each_index(
        batch * O * P,
        detail::ToImages<nn::math::BatchRows<O, P>, plain_t<R>, plain_t<T>, Relu>{rows, bias, images, batch}, stream);
}
template <std::size_t O, std::size_t P, class T>
void images_to_rows(const T* images, T* rows, std::size_t batch, cudaStream_t stream) {
    detail::for_each_index(batch * O * P, detail::ToRows<nn::math::BatchRows<O, P>, plain_t<T>>{images, rows, batch}, stream);
}
/// y[b][f] = sums[b][f] + bias[f] for `batch` rows of `features`, rounded once to T (`sums`
/// may be `y` itself, or unrounded fp32 products), then with `Relu` a ReLU.
template <bool Relu = false, class R, class T>
void add_bias(const R* sums, const T* bias, T* y, std::size_t features, std::size_t batch, cudaStream_t stream) {
    detail::for_each_index(batch * features, detail::AddBias<plain_t<R>, plain_t<T>, Relu>{sums, bias, y, features},
                           stream);
}
template <class T>
void fill(T* out, std::size_t n, T value, cudaStream_t stream) {
    detail::for_each_index(n, detail::Fill<plain_t<T>>{out, value}, stream);
}
/// dst[i] = G(float(dst[i]) + float(src[i])) for n elements: a gradient computed in T added
/// into the accumulation buffer (as `cpu::accumulate_rounded` once the CPU rounds to T).
template <class T, class G>
void accumulate(const T* src, G* dst, std::size_t n, cudaStream_t stream) {
    detail::for_each_index(n, detail::Accumulate<plain_t<T>, plain_t<G>>{src, dst}, stream);
}
/// S × S max pooling of `batch` C × H × W images; `at` keeps each maximum's place.
template <std::size_t C, std::size_t H, std::size_t W, std::size_t S, class T>
void max_pool_forward(const T* x, T* y, std::uint8_t* at, std::size_t batch, cudaStream_t stream) {
    detail::for_each_index(batch * C * (H / S) * (W / S), detail::PoolForward<C, H, W, S, plain_t<T>>{x, y, at}, stream);
}
template <std::size_t C, std::size_t H, std::size_t W, std::size_t S, class T>
void max_pool_backward(const T* dy, const std::uint8_t* at, T* dx, std::size_t batch, cudaStream_t stream) {
    detail::for_each_index(batch * C * H * W, detail::PoolBackward<C, H, W, S, plain_t<T>>{dy, at, dx}, stream);
}
template <class T>
void relu_forward(const T* x, T* y, std::size_t n, cudaStream_t stream) {
    detail::for_each_index(n, detail::ReluForward<plain_t<T>>{x, y}, stream);
}
template <class T>
void relu_backward(const T* y, const T* dy, T* dx, std::size_t n, cudaStream_t stream) {
    detail::for_each_index(n, detail::ReluBackward<plain_t<T>>{y, dy, dx}, stream);
}
/// Each sample's loss (double) into `losses` and d mean loss / d logits into `grad`.
inline void softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::size_t classes,
                                  std::size_t batch, double* losses, float* grad, cudaStream_t stream) {
    detail::for_each_index(batch, detail::SoftmaxCrossEntropy{logits, labels, classes, batch, losses, grad}, stream);
}

}  // namespace ds::cuda
