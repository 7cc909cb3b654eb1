#pragma once
/// @file
/// `ds::nn::CrossEntropyLoss`: mean softmax cross-entropy from logits (per sample or per
/// position, with `ignore_index`), and its gradient.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <ds/nn/math/softmax_cross_entropy.hpp>

namespace ds::nn {

/// A loss value with the gradient of the loss with respect to the model's output, which is
/// what `engine.backward(loss)` starts the backward pass from.
struct Loss {
    float value = 0.0f;               ///< mean over the counted rows
    std::vector<float> grad_output;   ///< d value / d logits, [rows × classes]
    std::size_t batch = 0;            ///< rows of logits: samples, or samples × positions
};

/// torch.nn.CrossEntropyLoss(ignore_index=-100) (mean reduction) over the last dimension:
/// `labels.size()` rows of `classes` logits — one per sample, or one per position of a
/// sequence (logits [batch × T × classes], labels [batch × T]). Each row is computed stably
/// as logsumexp(z) − z[label] in double; rows labelled `ignore_index` count for nothing and
/// get no gradient; the mean is over the counted rows, so the gradient is
/// (softmax(z) − onehot) / counted (`math::softmax_cross_entropy`; the CUDA loss kernel
/// uses it with one label per sample and no ignore_index).
/// With every row ignored the loss is NaN and the gradient zero, as in PyTorch.
struct CrossEntropyLoss {
    std::size_t classes;
    std::int32_t ignore_index = -100;

    /// @throws std::invalid_argument when the logits are not `classes` per label
    /// @throws std::out_of_range naming the first label that is neither a class nor ignore_index
    Loss operator()(std::span<const float> logits, std::span<const std::int32_t> labels) const {
        const std::size_t rows = labels.size();
        if (classes == 0 || logits.size() != rows * classes)
            throw std::invalid_argument("CrossEntropyLoss: logits hold " + std::to_string(logits.size()) +
                                        " values for " + std::to_string(rows) + " labels of " +
                                        std::to_string(classes) + " classes");
        std::size_t counted = 0;
        for (std::size_t r = 0; r < rows; ++r) {
            const auto label = labels[r];
            if (label == ignore_index) continue;
            if (label < 0 || static_cast<std::size_t>(label) >= classes)
                throw std::out_of_range("CrossEntropyLoss: label " + std::to_string(label) + " (row " +
                                        std::to_string(r) + ") is not in [0, " + std::to_string(classes) +
                                        ") nor ignore_index " + std::to_string(ignore_index));
            ++counted;
        }
        Loss loss{0.0f, std::vector<float>(logits.size()), rows};
        double total = 0.0;
        for (std::size_t r = 0; r < rows; ++r)
            if (labels[r] != ignore_index)
                total += math::softmax_cross_entropy(logits.data() + r * classes, classes, labels[r], counted,
                                                     loss.grad_output.data() + r * classes);
        loss.value = counted ? static_cast<float>(total / static_cast<double>(counted))
                             : std::numeric_limits<float>::quiet_NaN();
        return loss;
    }
};

}  // namespace ds::nn
