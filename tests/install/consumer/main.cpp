// A separate project using an installed dspp: the config, its check and the policies, and
// a few engine steps of a model with a layer of its own.
#include <array>
#include <cstddef>
#include <cstdint>
#include <iostream>
#include <utility>
#include <vector>

#include <ds/ds.hpp>

constexpr ds::Config cfg{
    .train_batch_size = 32,
    .optimizer = {.type = ds::OptimizerType::Adam},
    .bf16 = {.enabled = true},
    .zero_optimization = {.stage = 2},
};
static_assert(ds::check(cfg, 4));
using P = ds::PoliciesFor<cfg>;

/// y = w ⊙ x: the consumer's own layer (ds/nn/layer.hpp).
struct Scale {
    template <class Input>
    struct Bound {
        static constexpr std::size_t n = Input::size;
        using input_shape = Input;
        using output_shape = Input;
        static constexpr std::array<ds::nn::ParamSpec, 1> params{{{"weight", {1, {n}}}}};
        static void init(float* w, ds::Rng&) { std::fill_n(w, n, 1.0f); }
        void reserve(std::size_t) {}
        void forward(const float* x, float* y, std::size_t batch, const float* w) {
            for (std::size_t i = 0; i < batch * n; ++i) y[i] = w[i % n] * x[i];
        }
        void backward(const float* x, const float*, float* dy, float* dx, std::size_t batch, const float* w,
                      float* dw) {
            for (std::size_t i = 0; i < batch * n; ++i) {
                dw[i % n] += dy[i] * x[i];
                if (dx) dx[i] = dy[i] * w[i % n];
            }
        }
    };
};
using Net = ds::nn::Sequential<ds::nn::Features<4>, ds::nn::Named<"scale", Scale>,
                               ds::nn::Named<"fc", ds::nn::Linear<4, 2>>>;

int main() {
    const auto loaded = ds::parse_config(ds::to_json(cfg).dump(), 4);
    if (!(loaded.config == cfg)) return 1;
    std::cout << "consumer ok: Zero<" << P::zero_policy::stage << "> " << P::precision_policy::name << " "
              << ds::name_of(P::optimizer_policy::type) << "\n";

    // Label = whether x0 > x1; ZeRO stage 3 on one rank, Adam; scored on one held-out batch.
    ds::Config train{.train_batch_size = 8, .optimizer = {.type = ds::OptimizerType::Adam, .params = {.lr = 0.05}}};
    train.zero_optimization.stage = 3;
    ds::Engine<Net, ds::Adam<>, ds::Zero<3>> engine(train);
    ds::Rng rng(1);
    const auto batch = [&] {
        std::pair<std::vector<float>, std::vector<std::int32_t>> b{std::vector<float>(8 * 4), std::vector<std::int32_t>(8)};
        for (auto& v : b.first) v = rng.uniform(-1.0f, 1.0f);
        for (std::size_t s = 0; s < 8; ++s) b.second[s] = b.first[s * 4] > b.first[s * 4 + 1] ? 1 : 0;
        return b;
    };
    const auto held_out = batch();
    const auto score = [&] { return ds::nn::CrossEntropyLoss{2}(engine.forward(held_out.first), held_out.second).value; };
    const float first = score();
    for (int step = 0; step < 40; ++step) {
        const auto [x, y] = batch();
        engine.backward(ds::nn::CrossEntropyLoss{2}(engine.forward(x), y));
        engine.step();
    }
    const float last = score();
    if (!(last < first)) return 1;
    std::cout << "consumer ok: own layer trained at ZeRO stage 3, loss " << first << " -> " << last << "\n";
}
