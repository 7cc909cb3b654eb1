#pragma once
/// @file
/// `ds::nn::Embedding<Vocab, Dim>`: token ids to learned vectors (`torch.nn.Embedding`).

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <ds/nn/layer.hpp>
#include <ds/nn/shape.hpp>
#include <ds/util/rng.hpp>

namespace ds::nn {

/// Row `id` of a [Vocab, Dim] table for each of a sample's T token ids (`Tokens<T>`), giving
/// a `Sequence<T, Dim>`. Ids are read as the integers they are; one outside [0, Vocab) is an
/// error naming it (PyTorch's "index out of range"), never a read past the table. The first
/// layer of a model: ids have no gradient.
template <std::size_t Vocab, std::size_t Dim>
struct Embedding {
    template <class Input>
    struct Bound {
        static_assert(holds_ids<Input>, "ds::nn::Embedding: its input is token ids (ds::nn::Tokens<T>)");
        static constexpr std::size_t positions = Input::size;
        using input_shape = Input;
        using output_shape = Sequence<positions, Dim>;
        static constexpr std::array<ParamSpec, 1> params{{{"weight", {2, {Vocab, Dim}}}}};

        /// PyTorch's default: N(0, 1).
        static void init(float* w, Rng& rng) {
            for (std::size_t i = 0; i < Vocab * Dim; ++i) w[i] = rng.normal();
        }
        void reserve(std::size_t) {}

        /// @throws std::out_of_range naming the first id outside [0, Vocab)
        static void check_inputs(const std::int32_t* ids, std::size_t batch) {
            for (std::size_t p = 0; p < batch * positions; ++p) row(ids, p);
        }
        /// @throws std::out_of_range naming the first id outside [0, Vocab)
        void forward(const std::int32_t* ids, float* y, std::size_t batch, const float* w) {
            for (std::size_t p = 0; p < batch * positions; ++p)
                std::copy_n(w + row(ids, p) * Dim, Dim, y + p * Dim);
        }
        /// Adds each position's output gradient to its id's row (a repeated id adds twice).
        void backward(const std::int32_t* ids, const float*, float* dy, float* /*dx: none for ids*/,
                      std::size_t batch, const float*, float* dw) {
            for (std::size_t p = 0; p < batch * positions; ++p) {
                float* to = dw + row(ids, p) * Dim;
                for (std::size_t c = 0; c < Dim; ++c) to[c] += dy[p * Dim + c];
            }
        }

    private:
        static std::size_t row(const std::int32_t* ids, std::size_t p) {
            const std::int32_t id = ids[p];
            if (id < 0 || static_cast<std::size_t>(id) >= Vocab)
                throw std::out_of_range("ds::nn::Embedding: token id " + std::to_string(id) + " at position " +
                                        std::to_string(p % positions) + " of sample " + std::to_string(p / positions) +
                                        " is not in [0, " + std::to_string(Vocab) + ")");
            return static_cast<std::size_t>(id);
        }
    };
};

static_assert(ds::layer<Embedding<10, 4>, Tokens<3>>);

}  // namespace ds::nn
