#pragma once
/// @file
/// `ds::nn::Tied<"lender", L>`: layer L computing with an earlier layer's parameters (tied
/// weights), e.g. GPT-2's output projection reading its token embedding.

#include <array>
#include <cstddef>
#include <string_view>

#include <ds/nn/layer.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// Layer `L` whose parameters are those of the earlier layer named `Lender` in the same
/// `Sequential` (`Named<"wte", Embedding<V, C>>` lends `[V, C]` to
/// `Tied<"wte", Linear<C, V, false>>`, whose weight has PyTorch's [Out, In] = [V, C] layout).
/// The tensors exist once: one name, one set of master weights and optimizer states; both
/// layers add their gradients into the same buffer, so the optimizer sees their sum. L's
/// tensors must have the lender's shapes, in order (a compile error otherwise).
template <FixedString Lender, class L>
struct Tied {
    template <class Input>
    struct Bound : L::template Bound<Input> {
        using borrower = typename L::template Bound<Input>;
        static constexpr std::array<ParamSpec, 0> params{};  ///< none of its own
        static constexpr auto tied_params = borrower::params;  ///< what it reads from the lender
        static constexpr std::string_view tied_to = Lender.view();
        static void init(float*, Rng&) {}  // the lender initialises them
    };
};

}  // namespace ds::nn
