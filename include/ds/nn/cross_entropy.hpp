#pragma once
/// @file
/// `ds::nn::CrossEntropyLoss`: mean softmax cross-entropy from logits, and its gradient.

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <ds/nn/math/softmax_cross_entropy.hpp>

namespace ds::nn {

/// A loss value with the gradient of the loss with respect to the model's output, which is
/// what `engine.backward(loss)` starts the backward pass from.
struct Loss {
    float value = 0.0f;               ///< mean over the batch
    std::vector<float> grad_output;   ///< d value / d logits, [batch × classes]
    std::size_t batch = 0;
};

/// torch.nn.CrossEntropyLoss() (mean reduction) over `classes` logits per sample, computed
/// stably as logsumexp(z) − z[label] in double; the gradient is (softmax(z) − onehot) / batch
/// (`math::softmax_cross_entropy`, the CUDA kernel's too).
struct CrossEntropyLoss {
    std::size_t classes;

    /// @throws std::out_of_range when a label is not a class index
    Loss operator()(std::span<const float> logits, std::span<const std::int32_t> labels) const {
        const std::size_t batch = labels.size();
        if (logits.size() != batch * classes)
            throw std::invalid_argument("CrossEntropyLoss: logits hold " + std::to_string(logits.size()) +
                                        " values for " + std::to_string(batch) + " labels of " +
                                        std::to_string(classes) + " classes");
        Loss loss{0.0f, std::vector<float>(logits.size()), batch};
        double total = 0.0;
        for (std::size_t b = 0; b < batch; ++b) {
            const float* z = logits.data() + b * classes;
            const auto label = labels[b];
            if (label < 0 || static_cast<std::size_t>(label) >= classes)
                throw std::out_of_range("CrossEntropyLoss: label " + std::to_string(label) + " is not in [0, " +
                                        std::to_string(classes) + ")");
            total += math::softmax_cross_entropy(z, classes, label, batch, loss.grad_output.data() + b * classes);
        }
        loss.value = static_cast<float>(total / static_cast<double>(batch));
        return loss;
    }
};

}  // namespace ds::nn
