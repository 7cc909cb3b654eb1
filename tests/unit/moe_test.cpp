// ds::nn::MoE as a Sequential layer: PyTorch's parameter names and order, the forward
// against a float64 re-computation from the routing, the backward against central
// differences, and training.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <ds/data/synthetic.hpp>
#include <ds/engine/engine.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/moe.hpp>
#include <ds/nn/relu.hpp>
#include <ds/nn/sequential.hpp>

namespace {

using namespace ds::nn;

constexpr MoESettings top1{.k = 1, .capacity_factor = 1.0, .min_capacity = 2, .use_rts = false};
constexpr MoESettings top2{.k = 2, .capacity_factor = 1.0, .min_capacity = 2, .second_expert_sampling = false};
constexpr std::size_t M = 8;

/// Case 0: top-1, plain MoE; case 1: top-2, PR-MoE.
template <int Case>
using Net = Sequential<Features<M>,
                       Named<"moe", MoE<Linear<M, M>, Case == 0 ? MoEMlp::standard : MoEMlp::residual, 2, 3>>>;
template <int Case>
constexpr MoESettings settings_for = Case == 0 ? top1 : top2;

/// The weights of Linear expert `e` of MoE layer `i` inside `params`, by PyTorch name.
template <class N>
const float* tensor(const std::vector<float>& params, const std::string& name) {
    for (const auto& p : N::parameters)
        if (p.name() == name) return params.data() + p.offset;
    FAIL("no parameter " << name);
    return nullptr;
}

/// y = W x + b in double.
std::vector<double> linear(const float* w, const float* b, const double* x, std::size_t in, std::size_t out) {
    std::vector<double> y(out);
    for (std::size_t o = 0; o < out; ++o) {
        y[o] = b ? b[o] : 0.0;
        for (std::size_t i = 0; i < in; ++i) y[o] += double(w[o * in + i]) * x[i];
    }
    return y;
}

template <int Case>
std::vector<float> random_params(std::uint64_t seed) {
    std::vector<float> p(Net<Case>::param_count);
    ds::Rng rng(seed);
    Net<Case>::init(p.data(), rng);
    // Gates ×3: routing rarely flips under small steps, and the gate still has gradient.
    for (const auto& t : Net<Case>::parameters)
        if (t.name().find("gate.wg") != std::string_view::npos)
            for (std::size_t i = 0; i < t.numel(); ++i) p[t.offset + i] *= 3.0f;
    return p;
}

std::vector<float> random_input(std::size_t batch, std::uint64_t seed) {
    std::vector<float> x(batch * M);
    ds::Rng rng(seed);
    for (float& v : x) v = rng.uniform(-1.0f, 1.0f);
    return x;
}

}  // namespace

TEST_SUITE("moe") {

TEST_CASE("PR-MoE [2, 3] has DeepSpeed's parameter names, in PyTorch's order per group, with the MLP shared") {
    using N = Net<1>;
    std::vector<std::string> names;
    for (const auto& p : N::parameters) names.emplace_back(p.name());
    // The dense group (gates, the shared MLP, coefficients), then the expert group, as
    // split_params_into_different_moe_groups_for_optimizer appends it.
    const std::vector<std::string> expected{
        "moe.0.deepspeed_moe.gate.wg.weight", "moe.0.mlp.weight", "moe.0.mlp.bias", "moe.0.coefficient.weight",
        "moe.0.coefficient.bias", "moe.1.deepspeed_moe.gate.wg.weight", "moe.1.coefficient.weight",
        "moe.1.coefficient.bias",
        "moe.0.deepspeed_moe.experts.deepspeed_experts.0.weight", "moe.0.deepspeed_moe.experts.deepspeed_experts.0.bias",
        "moe.0.deepspeed_moe.experts.deepspeed_experts.1.weight", "moe.0.deepspeed_moe.experts.deepspeed_experts.1.bias",
        "moe.1.deepspeed_moe.experts.deepspeed_experts.0.weight", "moe.1.deepspeed_moe.experts.deepspeed_experts.0.bias",
        "moe.1.deepspeed_moe.experts.deepspeed_experts.1.weight", "moe.1.deepspeed_moe.experts.deepspeed_experts.1.bias",
        "moe.1.deepspeed_moe.experts.deepspeed_experts.2.weight", "moe.1.deepspeed_moe.experts.deepspeed_experts.2.bias"};
    CHECK(names == expected);
    constexpr std::size_t expert = M * M + M;
    static_assert(N::dense_param_count == (2 * M + expert + 2 * M + 2) + (3 * M + 2 * M + 2));
    static_assert(N::expert_param_count == 5 * expert && N::expert_parallel_size == 1);
    static_assert(N::param_count == (2 * M + 2 * expert + expert + 2 * M + 2) + (3 * M + 3 * expert + 2 * M + 2));
    for (const auto& p : N::parameters)  // the expert group starts after the last dense tensor
        CHECK((p.offset >= N::dense_param_count) == (p.name().find("experts") != std::string_view::npos));
    // Every expert (and the MLP) starts as the same draw, like DeepSpeed's deep copies.
    std::vector<float> p(N::param_count);
    ds::Rng rng(4);
    N::init(p.data(), rng);
    const float* mlp = tensor<N>(p, "moe.0.mlp.weight");
    for (const char* e : {"moe.0.deepspeed_moe.experts.deepspeed_experts.1.weight",
                          "moe.1.deepspeed_moe.experts.deepspeed_experts.2.weight"})
        CHECK(std::equal(mlp, mlp + M * M, tensor<N>(p, e)));
}

TEST_CASE_TEMPLATE("forward equals a float64 re-computation from the routing", Opt,
                   std::integral_constant<int, 0>, std::integral_constant<int, 1>) {
    constexpr int Case = Opt::value;
    constexpr MoESettings O = settings_for<Case>;
    using N = Net<Case>;
    const std::size_t batch = 6;
    auto params = random_params<Case>(7);
    // Different experts, so a wrong dispatch shows.
    ds::Rng rng(8);
    for (const auto& t : N::parameters)
        if (t.name().find("experts") != std::string_view::npos)
            for (std::size_t i = 0; i < t.numel(); ++i) params[t.offset + i] += rng.uniform(-0.2f, 0.2f);
    const auto x = random_input(batch, 9);
    N net(batch);
    net.configure_moe(O);
    const float* y = net.forward(x.data(), batch, params.data());

    std::vector<double> h(x.begin(), x.end());  // the running activation, in double
    for (std::size_t layer = 0; layer < 2; ++layer) {
        const std::string at = "moe." + std::to_string(layer) + ".";
        const auto& r = net.template layer<0>().routing(layer);
        std::vector<double> next(batch * M, 0.0);
        for (std::size_t s = 0; s < batch; ++s) {
            for (std::size_t j = 0; j < r.k; ++j) {
                if (!r.kept(s, j)) continue;
                const std::string e = at + "deepspeed_moe.experts.deepspeed_experts." + std::to_string(r.expert[s * r.k + j]);
                const auto out = linear(tensor<N>(params, e + ".weight"), tensor<N>(params, e + ".bias"), &h[s * M], M, M);
                for (std::size_t m = 0; m < M; ++m) next[s * M + m] += r.weight[s * r.k + j] * out[m];
            }
            if (Case == 1) {
                const auto mlp = linear(tensor<N>(params, "moe.0.mlp.weight"), tensor<N>(params, "moe.0.mlp.bias"),
                                        &h[s * M], M, M);
                const auto z = linear(tensor<N>(params, at + "coefficient.weight"),
                                      tensor<N>(params, at + "coefficient.bias"), &h[s * M], M, 2);
                const double c0 = 1.0 / (1.0 + std::exp(z[1] - z[0])), c1 = 1.0 - c0;
                for (std::size_t m = 0; m < M; ++m) next[s * M + m] = next[s * M + m] * c0 + mlp[m] * c1;
            }
        }
        // The routing the layer took is the one the gate's logits give.
        const auto logits = [&] {
            std::vector<float> z(batch * r.experts);
            for (std::size_t s = 0; s < batch; ++s) {
                const auto row = linear(tensor<N>(params, at + "deepspeed_moe.gate.wg.weight"), nullptr, &h[s * M], M,
                                        r.experts);
                for (std::size_t e = 0; e < r.experts; ++e) z[s * r.experts + e] = static_cast<float>(row[e]);
            }
            return z;
        }();
        ds::Rng quiet(1);
        const auto expected = O.k == 1 ? top1_gating(logits, r.experts, 1.0, 2, NoisyGate::none, true, false, quiet)
                                       : top2_gating(logits, r.experts, 1.0, 2, true, false, quiet);
        CHECK(expected.slot == r.slot);
        h = next;
    }
    for (std::size_t i = 0; i < batch * M; ++i) CHECK(y[i] == doctest::Approx(h[i]).epsilon(1e-5).scale(1e-5));
}

TEST_CASE_TEMPLATE("backward equals central differences, the input gradient included", Opt,
                   std::integral_constant<int, 0>, std::integral_constant<int, 1>) {
    constexpr int Case = Opt::value;
    // A Linear in front: its gradients check the MoE layer's input gradient.
    using N = Sequential<Features<M>, Named<"fc", Linear<M, M>>,
                         Named<"moe", MoE<Linear<M, M>, Case == 0 ? MoEMlp::standard : MoEMlp::residual, 2, 3>>>;
    const std::size_t batch = 5;
    std::vector<float> params(N::param_count);
    ds::Rng rng(17);
    N::init(params.data(), rng);
    for (const auto& t : N::parameters)  // gates ×3: steps rarely re-route (those are skipped), the gate keeps its gradient
        if (t.name().find("gate.wg") != std::string_view::npos)
            for (std::size_t i = 0; i < t.numel(); ++i) params[t.offset + i] *= 3.0f;
    const auto x = random_input(batch, 18);
    const auto c = random_input(batch, 19);  // loss = Σ c · y
    N net(batch);
    net.configure_moe(settings_for<Case>);
    auto loss = [&](const std::vector<float>& p) {
        const float* y = net.forward(x.data(), batch, p.data());
        double l = 0;
        for (std::size_t i = 0; i < batch * M; ++i) l += double(c[i]) * y[i];
        return l;
    };
    loss(params);
    const auto slots0 = net.template layer<1>().routing(0).slot, slots1 = net.template layer<1>().routing(1).slot;
    std::vector<float> grads(params.size(), 0.0f);
    net.backward(c.data(), params.data(), grads.data());
    const float h = 1e-2f;
    int checked = 0, total = 0;
    for (std::size_t i = 0; i < params.size(); i += 3, ++total) {
        auto up = params, down = params;
        up[i] += h;
        down[i] -= h;
        const double lu = loss(up);
        const bool same_up = net.template layer<1>().routing(0).slot == slots0 && net.template layer<1>().routing(1).slot == slots1;
        const double ld = loss(down);
        const bool same_down = net.template layer<1>().routing(0).slot == slots0 && net.template layer<1>().routing(1).slot == slots1;
        if (!same_up || !same_down) continue;  // a re-route: not differentiable there
        INFO("parameter " << i);
        CHECK(grads[i] == doctest::Approx((lu - ld) / (double(up[i]) - double(down[i]))).epsilon(1e-2).scale(1e-2));
        ++checked;
    }
    CHECK(checked >= total * 9 / 10);
}

TEST_CASE("an MoE net trains: the loss falls on learnable data, and eval uses eval_capacity_factor") {
    using MoENet = Sequential<Features<16>, Named<"fc1", Linear<16, 16>>, ReLU,
                              Named<"moe", MoE<Linear<16, 16>, MoEMlp::standard, 2>>,
                              Named<"fc4", Linear<16, 4>>>;
    ds::Config cfg{.train_batch_size = 16, .optimizer = {.type = ds::OptimizerType::Adam, .params = {.lr = 1e-2}}, .seed = 2};
    ds::Engine<MoENet, ds::Adam<>> engine(cfg);
    engine.module().configure_moe(MoESettings{.k = 1, .eval_capacity_factor = 2.0, .min_capacity = 2,
                                              .noisy_gate_policy = NoisyGate::rsample});
    CHECK_THROWS_WITH(engine.module().configure_moe(MoESettings{.k = 3}), doctest::Contains("takes 1 or 2"));
    const auto data = ds::data::make_synthetic(16 * 40, 1, 4, 4, 4, 3);
    std::vector<float> inputs(16 * 16);
    std::vector<std::int32_t> labels(16);
    double first = 0, last = 0;
    for (int step = 0; step < 40; ++step) {
        for (std::size_t i = 0; i < 16; ++i) labels[i] = data.get(step * 16 + i, inputs.data() + i * 16);
        const auto out = engine.forward(inputs);
        const auto loss = CrossEntropyLoss{4}(out, labels);
        engine.backward(loss);
        engine.step();
        (step < 5 ? first : last) += step < 5 || step >= 35 ? loss.value : 0.0;
    }
    CHECK(last < first * 0.8);
    engine.eval();
    engine.forward(inputs);
    CHECK(engine.module().layer<2>().routing(0).capacity == 16);  // ⌈16/2 · 2⌉
    engine.train();
    engine.forward(inputs);
    CHECK(engine.module().layer<2>().routing(0).capacity == 8);
}

}  // TEST_SUITE
