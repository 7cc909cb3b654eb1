#pragma once
/// @file
/// The layers of `ds::nn` on the GPU: `cuda::DeviceLayer<Layer, Input, T>` runs the layer
/// that `Layer` (the unbound `nn::Linear<In, Out>`, `nn::Conv2d<In, Out, K>`, ...) is on
/// `Input`, with values stored as T (float, bf16, half), under the same contract as its CPU
/// counterpart — forward writes y, backward adds the parameter gradients into dw (of the
/// gradient dtype G) and writes dx unless it is null — over device pointers, on one stream.
/// Products go through cuBLASLt (`cuda::Gemm`, fp32 accumulation), everything else through
/// the kernels of `layer_kernels.cuh` over the shared `ds/nn/math/` functions.

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/gemm.hpp>
#include <ds/device/cuda/layer_kernels.cuh>
#include <ds/device/cuda/memory.hpp>
#include <ds/nn/conv2d.hpp>
#include <ds/nn/flatten.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/math/im2col.hpp>
#include <ds/nn/max_pool2d.hpp>
#include <ds/nn/relu.hpp>
#include <ds/nn/shape.hpp>

namespace ds::cuda {

/// What every layer of one model shares: its stream and the GEMM bound to it.
struct LayerContext {
    cudaStream_t stream = nullptr;
    Gemm* gemm = nullptr;
};

/// A vector of ones on the device, as long as the longest sum asks: bias gradients are
/// products with it (deterministic, unlike atomics).
template <class T>
class Ones {
public:
    void reserve(std::size_t n, cudaStream_t stream) {
        if (n <= ones_.size()) return;
        ones_ = DeviceBuffer<T>(n);
        fill(ones_.data(), n, T(1.0f), stream);
    }
    const T* data() const { return ones_.data(); }
    std::size_t bytes() const { return ones_.bytes(); }

private:
    DeviceBuffer<T> ones_;
};

/// The unrounded fp32 sums of a 2-byte layer's product, so what is added to them (the
/// forward's bias, col2im's K² overlapping columns) is added before the one rounding to T,
/// as the CPU layers do (fp32 layers need none: they add in place).
template <class T>
class UnroundedSums {
public:
    void reserve(std::size_t n) {
        if constexpr (!std::is_same_v<T, float>) sums_ = DeviceBuffer<float>(n);
    }
    /// Where the product goes: the output itself in fp32, else the fp32 sums.
    auto* target(T* y) {
        if constexpr (std::is_same_v<T, float>) return y;
        else return sums_.data();
    }
    std::size_t bytes() const { return sums_.bytes(); }

private:
    DeviceBuffer<float> sums_;
};

/// Where a layer's `Count` parameter-gradient values land. fp32 products add straight into
/// the fp32 gradient (beta = 1); in a 2-byte dtype, as the CPU layers do, the product is
/// rounded to T first (beta = 0, into a scratch) and then added into the gradient's dtype G.
template <class T, std::size_t Count>
class GradientSink {
public:
    template <class G>
    static constexpr bool direct = std::is_same_v<T, float> && std::is_same_v<G, float>;
    /// The beta the products write with.
    template <class G>
    static constexpr float beta = direct<G> ? 1.0f : 0.0f;

    void reserve() {
        if constexpr (!std::is_same_v<T, float>) scratch_ = DeviceBuffer<T>(Count);
    }
    /// Where the products write.
    template <class G>
    T* target(G* dw) {
        static_assert(!std::is_same_v<T, float> || std::is_same_v<G, float>,
                      "ds::cuda::GradientSink: fp32 products have no scratch, so they add into fp32 gradients only");
        if constexpr (direct<G>) return dw;
        else return scratch_.data();
    }
    /// After the products: adds the rounded gradient into dw.
    template <class G>
    void finish(G* dw, cudaStream_t stream) {
        if constexpr (!direct<G>) accumulate(scratch_.data(), dw, Count, stream);
    }
    std::size_t bytes() const { return scratch_.bytes(); }

private:
    DeviceBuffer<T> scratch_;
};

template <class Layer, class Input, class T>
struct DeviceLayer {
    static_assert(sizeof(Layer) == 0, "ds::cuda::DeviceLayer: this layer has no CUDA implementation yet");
};

/// y = x·Wᵀ + b in one cuBLASLt call with the bias epilogue (a bias off its 16-byte alignment
/// is added by a kernel to the unrounded product); dW += dyᵀ·x, db += 1ᵀ·dy, dx = dy·W.
/// `forward<true>` applies the ReLU that follows it in the same epilogue (`relu_fuses`).
template <std::size_t In, std::size_t Out, class Input, class T>
struct DeviceLayer<nn::Linear<In, Out>, Input, T> {
    static_assert(!nn::detail::per_position<Input, In>(),
                  "ds::Cuda: nn::Linear over a sequence (per position) runs on ds::Cpu only so far");
    static constexpr std::size_t bias_offset = Out * In;
    static constexpr bool relu_fuses = true;

    void reserve(std::size_t max_batch, LayerContext& ctx) {
        ones_.reserve(max_batch, ctx.stream);
        sink_.reserve();
        sums_.reserve(max_batch * Out);
    }

    template <bool Relu = false>
    void forward(const T* x, T* y, std::size_t batch, const T* w, LayerContext& ctx) {
        const T* bias = w + bias_offset;
        if (reinterpret_cast<std::uintptr_t>(bias) % 16 == 0) {  // the epilogue adds before it rounds
            (*ctx.gemm)(Op::none, Op::transpose, batch, Out, In, 1.0f, x, In, w, In, 0.0f, y, Out, ctx.stream,
                        Relu ? Epilogue::relu_bias : Epilogue::bias, bias);
        } else {
            auto* sums = sums_.target(y);
            (*ctx.gemm)(Op::none, Op::transpose, batch, Out, In, 1.0f, x, In, w, In, 0.0f, sums, Out, ctx.stream);
            add_bias<Relu>(sums, bias, y, Out, batch, ctx.stream);
        }
    }
    template <class G>
    void backward(const T* x, const T* /*y*/, const T* dy, T* dx, std::size_t batch, const T* w, G* dw,
                  LayerContext& ctx) {
        Gemm& gemm = *ctx.gemm;
        T* grad = sink_.target(dw);
        constexpr float beta = Sink::template beta<G>;
        gemm(Op::transpose, Op::none, Out, In, batch, 1.0f, dy, Out, x, In, beta, grad, In, ctx.stream);
        gemm(Op::none, Op::none, 1, Out, batch, 1.0f, ones_.data(), batch, dy, Out, beta, grad + bias_offset, Out,
             ctx.stream);
        sink_.finish(dw, ctx.stream);
        if (dx) gemm(Op::none, Op::none, batch, In, Out, 1.0f, dy, Out, w, In, 0.0f, dx, In, ctx.stream);
    }
    std::size_t buffer_bytes() const { return ones_.bytes() + sink_.bytes() + sums_.bytes(); }

private:
    using Sink = GradientSink<T, Out * In + Out>;
    Ones<T> ones_;
    Sink sink_;
    UnroundedSums<T> sums_;
};

/// The whole batch as one GEMM: columns [C·K·K × B·P] (`Im2Col::gather_batch`), rows
/// W·col = [O × B·P], then NCHW images with the bias added (`BatchRows`). Backward runs the
/// same layout the other way: dW += dY'·colᵀ, db += dY'·1, dcol = Wᵀ·dY', gathered back to dx.
/// `forward<true>` applies the ReLU that follows it in the bias pass (`relu_fuses`).
template <std::size_t In, std::size_t Out, std::size_t K, std::size_t C, std::size_t H, std::size_t W, class T>
struct DeviceLayer<nn::Conv2d<In, Out, K>, nn::Image<C, H, W>, T> {
    static_assert(C == In, "ds::cuda: Conv2d input channels");
    using Cols = nn::math::Im2Col<C, H, W, K>;
    static constexpr std::size_t F = Cols::rows, P = Cols::cols, bias_offset = Out * F;
    static constexpr bool relu_fuses = true;

    void reserve(std::size_t max_batch, LayerContext& ctx) {
        col_ = DeviceBuffer<T>(F * max_batch * P);
        rows_ = DeviceBuffer<T>(Out * max_batch * P);
        ones_.reserve(max_batch * P, ctx.stream);
        sink_.reserve();
        sums_.reserve(Out * max_batch * P);
        dcol_.reserve(F * max_batch * P);
    }

    /// The product's rows unrounded (2-byte T: fp32 sums), then the bias and one rounding.
    template <bool Relu = false>
    void forward(const T* x, T* y, std::size_t batch, const T* w, LayerContext& ctx) {
        const std::size_t bp = batch * P;
        im2col_batch<C, H, W, K>(x, col_.data(), batch, ctx.stream);
        auto* rows = sums_.target(rows_.data());
        (*ctx.gemm)(Op::none, Op::none, Out, bp, F, 1.0f, w, F, col_.data(), bp, 0.0f, rows, bp, ctx.stream);
        rows_to_images<Out, P, Relu>(rows, w + bias_offset, y, batch, ctx.stream);
    }
    template <class G>
    void backward(const T* x, const T* /*y*/, const T* dy, T* dx, std::size_t batch, const T* w, G* dw,
                  LayerContext& ctx) {
        Gemm& gemm = *ctx.gemm;
        const std::size_t bp = batch * P;
        T* grad = sink_.target(dw);
        constexpr float beta = Sink::template beta<G>;
        im2col_batch<C, H, W, K>(x, col_.data(), batch, ctx.stream);  // the forward's columns may be gone
        images_to_rows<Out, P>(dy, rows_.data(), batch, ctx.stream);
        gemm(Op::none, Op::transpose, Out, F, bp, 1.0f, rows_.data(), bp, col_.data(), bp, beta, grad, F, ctx.stream);
        gemm(Op::none, Op::transpose, 1, Out, bp, 1.0f, ones_.data(), bp, rows_.data(), bp, beta, grad + bias_offset,
             Out, ctx.stream);
        sink_.finish(dw, ctx.stream);
        if (!dx) return;
        // dcol reuses the columns' buffer in fp32 (they are consumed), else goes to fp32 sums.
        auto* dcol = dcol_.target(col_.data());
        gemm(Op::transpose, Op::none, F, bp, Out, 1.0f, w, F, rows_.data(), bp, 0.0f, dcol, bp, ctx.stream);
        col2im_batch<C, H, W, K>(dcol, dx, batch, ctx.stream);
    }
    std::size_t buffer_bytes() const {
        return col_.bytes() + rows_.bytes() + ones_.bytes() + sink_.bytes() + sums_.bytes() + dcol_.bytes();
    }

private:
    using Sink = GradientSink<T, Out * F + Out>;
    DeviceBuffer<T> col_, rows_;
    Ones<T> ones_;
    Sink sink_;
    UnroundedSums<T> sums_, dcol_;
};

template <class Input, class T>
struct DeviceLayer<nn::ReLU, Input, T> {
    void reserve(std::size_t, LayerContext&) {}
    void forward(const T* x, T* y, std::size_t batch, const T*, LayerContext& ctx) {
        relu_forward(x, y, batch * Input::size, ctx.stream);
    }
    template <class G>
    void backward(const T*, const T* y, const T* dy, T* dx, std::size_t batch, const T*, G*, LayerContext& ctx) {
        if (dx) relu_backward(y, dy, dx, batch * Input::size, ctx.stream);
    }
};

/// Keeps each window's maximum position from the forward, as the CPU layer does.
template <std::size_t S, std::size_t C, std::size_t H, std::size_t W, class T>
struct DeviceLayer<nn::MaxPool2d<S>, nn::Image<C, H, W>, T> {
    static constexpr std::size_t out_size = C * (H / S) * (W / S);
    void reserve(std::size_t max_batch, LayerContext&) { at_ = DeviceBuffer<std::uint8_t>(max_batch * out_size); }
    void forward(const T* x, T* y, std::size_t batch, const T*, LayerContext& ctx) {
        max_pool_forward<C, H, W, S>(x, y, at_.data(), batch, ctx.stream);
    }
    template <class G>
    void backward(const T*, const T*, const T* dy, T* dx, std::size_t batch, const T*, G*, LayerContext& ctx) {
        if (dx) max_pool_backward<C, H, W, S>(dy, at_.data(), dx, batch, ctx.stream);
    }
    std::size_t buffer_bytes() const { return at_.bytes(); }

private:
    DeviceBuffer<std::uint8_t> at_;
};

/// NCHW is already the flat layout: `DeviceSequential` hands Flatten's input on as its
/// output and its output gradient back as its input gradient, so it runs nothing.
template <class Input, class T>
struct DeviceLayer<nn::Flatten, Input, T> {
    void reserve(std::size_t, LayerContext&) {}
};

}  // namespace ds::cuda
