#pragma once
/// @file
/// `ds::nn::Linear<In, Out>`: y = x · Wᵀ + b, PyTorch's layout (weight [Out, In]).

#include <array>
#include <cmath>
#include <cstddef>
#include <type_traits>

#include <ds/device/cpu/gemm.hpp>
#include <ds/nn/layer.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

namespace detail {
/// Fails with the expected size in the instantiation note: "[with ... Expected = 400]".
template <std::size_t Given, std::size_t Expected>
constexpr bool input_size_matches() {
    static_assert(Given == Expected,
                  "ds::nn::Linear<In, Out>: In must equal the size of the previous layer's output "
                  "(see 'Given' and 'Expected' in the instantiation above)");
    return true;
}

/// Whether `Linear<In, ...>` applies to each position of `Input` (a `Sequence<T, In>`).
template <class Input, std::size_t In>
consteval bool per_position() {
    if constexpr (requires { Input::features; }) return Input::features == In;
    else return false;
}

template <class Input, std::size_t Out, bool PerPosition>
struct LinearOutput {
    using type = Features<Out>;
};
template <class Input, std::size_t Out>
struct LinearOutput<Input, Out, true> {
    using type = Sequence<Input::positions, Out>;
};

template <class Input, std::size_t In>
consteval bool linear_input_fits() {
    if constexpr (per_position<Input, In>()) return true;
    else return input_size_matches<In, Input::size>();
}

}  // namespace detail

/// Fully connected layer, PyTorch's: on a `Sequence<T, In>` it applies to each of the T
/// positions (the last dimension); any other input of `In` values is read flat (an image,
/// as after `Flatten`); any other size is a compile error naming the expected size.
template <std::size_t In, std::size_t Out, bool Bias = true>
struct Linear {
    template <class Input>
    struct Bound {
        static_assert(detail::linear_input_fits<Input, In>());
        static constexpr bool per_position = detail::per_position<Input, In>();
        /// Rows of the GEMM per sample: one per position, or the sample itself.
        static constexpr std::size_t rows = per_position ? Input::size / In : 1;
        using input_shape = Input;
        using output_shape = typename detail::LinearOutput<Input, Out, per_position>::type;
        static constexpr auto params = [] {
            if constexpr (Bias) return std::array<ParamSpec, 2>{{{"weight", {2, {Out, In}}}, {"bias", {1, {Out}}}}};
            else return std::array<ParamSpec, 1>{{{"weight", {2, {Out, In}}}}};
        }();
        static constexpr std::size_t weight_offset = 0, bias_offset = Out * In;

        void reserve(std::size_t /*max_batch*/) {}

        /// PyTorch's default: U(±1/√In) for weight (kaiming-uniform, a = √5) and bias.
        static void init(float* w, Rng& rng) {
            const float bound = 1.0f / std::sqrt(static_cast<float>(In));
            for (std::size_t i = 0; i < Out * In + (Bias ? Out : 0); ++i) w[i] = rng.uniform(-bound, bound);
        }

        void forward(const float* x, float* y, std::size_t batch, const float* w) {
            const std::size_t m = batch * rows;
            if constexpr (Bias)
                for (std::size_t r = 0; r < m; ++r) std::copy_n(w + bias_offset, Out, y + r * Out);
            cpu::gemm(cpu::Op::none, cpu::Op::transpose, m, Out, In, 1.0f, x, In, w, In, Bias ? 1.0f : 0.0f, y, Out);
        }

        /// Adds this batch's weight and bias gradients to `dw`; writes dx unless it is null.
        void backward(const float* x, const float* /*y*/, float* dy, float* dx, std::size_t batch, const float* w,
                      float* dw) {
            const std::size_t m = batch * rows;
            cpu::gemm(cpu::Op::transpose, cpu::Op::none, Out, In, m, 1.0f, dy, Out, x, In, 1.0f, dw, In);
            if constexpr (Bias) {
                float* db = dw + bias_offset;
                for (std::size_t r = 0; r < m; ++r)
                    for (std::size_t o = 0; o < Out; ++o) db[o] += dy[r * Out + o];
            }
            if (dx) cpu::gemm(cpu::Op::none, cpu::Op::none, m, In, Out, 1.0f, dy, Out, w, In, 0.0f, dx, In);
        }
    };
};

static_assert(ds::layer<Linear<2, 3>, Features<2>>);
static_assert(Linear<2, 3, false>::Bound<Features<2>>::params.size() == 1);
static_assert(std::is_same_v<Linear<2, 3>::Bound<Sequence<5, 2>>::output_shape, Sequence<5, 3>>);

}  // namespace ds::nn
