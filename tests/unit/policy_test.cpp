// Policies: ZeRO traits, precision types, and the mapping from a constexpr config.
#include <string>
#include <type_traits>

#include <doctest/doctest.h>

#include <ds/policy/policies_for.hpp>

#include "cifar10/ds_config.hpp"

TEST_SUITE("policy") {

TEST_CASE_TEMPLATE("Zero<S> partitions cumulatively", Z, ds::Zero<0>, ds::Zero<1>, ds::Zero<2>, ds::Zero<3>) {
    static_assert(ds::zero_policy<Z>);
    CHECK(Z::partitions_optimizer_states == (Z::stage >= 1));
    CHECK(Z::partitions_gradients == (Z::stage >= 2));
    CHECK(Z::partitions_parameters == (Z::stage == 3));
}

TEST_CASE("precision policies store 2-byte compute types and keep fp32 where DeepSpeed does") {
    static_assert(sizeof(ds::BF16::compute_type) == 2 && sizeof(ds::BF16::grad_type) == 2);
    // Gradients accumulate in the model's dtype, except bf16 without ZeRO (fp32), as DeepSpeed.
    static_assert(std::is_same_v<ds::grad_accumulation_t<ds::BF16, ds::Zero<0>>, float>);
    static_assert(std::is_same_v<ds::grad_accumulation_t<ds::BF16, ds::Zero<1>>, ds::bf16>);
    static_assert(std::is_same_v<ds::grad_accumulation_t<ds::FP16<>, ds::Zero<0>>, ds::half>);
    static_assert(std::is_same_v<ds::grad_accumulation_t<ds::FP32, ds::Zero<3>>, float>);
    static_assert(sizeof(ds::FP16<>::compute_type) == 2 && sizeof(ds::FP16<>::grad_type) == 2);
    static_assert(std::is_same_v<ds::FP16<>::scaler, ds::DynamicLossScaler>);
    static_assert(!ds::FP32::has_master_weights && ds::BF16::has_master_weights && ds::FP16<>::has_master_weights);
    static_assert(ds::FP16<>::scales_loss && !ds::BF16::scales_loss);
    CHECK(ds::FP16<>::name == "fp16");
}

TEST_CASE("PoliciesFor maps the CIFAR config, carrying its numbers as defaults") {
    using P = ds::PoliciesFor<cifar10::ds_config>;
    static_assert(std::is_same_v<P::zero_policy, ds::Zero<0>>);
    static_assert(std::is_same_v<P::precision_policy, ds::FP32>);
    static_assert(std::is_same_v<P::device_policy, ds::Cpu>);
    static_assert(P::optimizer_policy::type == ds::OptimizerType::Adam);
    static_assert(P::optimizer_policy::defaults.betas[0] == 0.8);
    static_assert(P::optimizer_policy::defaults.weight_decay == 3e-7);
    static_assert(ds::static_agrees<P, cifar10::ds_config>());
    CHECK(P::optimizer_policy::defaults.adam_w_mode);
}

TEST_CASE("PoliciesFor picks the precision and the loss scaler from fp16/bf16") {
    constexpr ds::Config dynamic{.train_batch_size = 8, .fp16 = {.enabled = true}, .zero_optimization = {.stage = 3}};
    constexpr ds::Config fixed{.train_batch_size = 8, .fp16 = {.enabled = true, .loss_scale = 128}};
    constexpr ds::Config brain{.train_batch_size = 8, .optimizer = {.type = ds::OptimizerType::AdamW},
                               .bf16 = {.enabled = true}};
    static_assert(std::is_same_v<ds::PoliciesFor<dynamic>::precision_policy, ds::FP16<ds::DynamicLossScaler>>);
    static_assert(std::is_same_v<ds::PoliciesFor<dynamic>::zero_policy, ds::Zero<3>>);
    static_assert(std::is_same_v<ds::PoliciesFor<fixed>::precision_policy, ds::FP16<ds::StaticLossScaler>>);
    using B = ds::PoliciesFor<brain, ds::Cuda>;
    static_assert(std::is_same_v<B::precision_policy, ds::BF16> && std::is_same_v<B::device_policy, ds::Cuda>);
    static_assert(B::optimizer_policy::type == ds::OptimizerType::AdamW);
    CHECK(true);
}

TEST_CASE("a config that contradicts explicit policies is rejected with the reason") {
    using Explicit = ds::Policies<ds::Adam<>, ds::Zero<2>, ds::BF16>;
    ds::Config c = cifar10::ds_config;
    auto why = [&] { return std::string(ds::check_agrees<Explicit>(c).what()); };
    CHECK(why() == "zero_optimization.stage is 0 but the engine is built for ds::Zero<2>");
    c.zero_optimization.stage = 2;
    CHECK(why() == "the config selects fp32 but the engine is built for bf16");
    c.bf16.enabled = true;
    CHECK(why().empty());
    c.optimizer.params.lr = 0.5;  // numbers may differ: they are read at run time
    CHECK(why().empty());
    c.optimizer.type = ds::OptimizerType::Lion;
    CHECK(why() == "optimizer.type is Lion but the engine is built for Adam");

    using Fp16Static = ds::Policies<ds::AdamW<>, ds::Zero<0>, ds::FP16<ds::StaticLossScaler>>;
    ds::Config f = cifar10::ds_config;
    f.fp16.enabled = true;
    CHECK(std::string(ds::check_agrees<Fp16Static>(f).what()) ==
          "fp16.loss_scale selects dynamic loss scale but the engine is built for a static one");
    f.fp16.loss_scale = 64;
    CHECK(ds::check_agrees<Fp16Static>(f));
    f.optimizer.params.adam_w_mode = false;
    CHECK(std::string(ds::check_agrees<Fp16Static>(f).what()) ==
          "optimizer Adam with adam_w_mode false (L2) but the engine is built for AdamW");
}


TEST_CASE("PoliciesFor maps every optimizer type, with its numbers") {
    constexpr ds::Config sgd{.train_batch_size = 8,
                             .optimizer = {.type = ds::OptimizerType::SGD, .params = {.lr = 0.1, .momentum = 0.9}}};
    constexpr ds::Config lion{.train_batch_size = 8, .optimizer = {.type = ds::OptimizerType::Lion}};
    constexpr ds::Config lamb{.train_batch_size = 8, .optimizer = {.type = ds::OptimizerType::Lamb},
                              .fp16 = {.enabled = true}};
    static_assert(std::is_same_v<ds::PoliciesFor<sgd>::optimizer_policy, ds::SGD<ds::SgdHyper{.lr = 0.1, .momentum = 0.9}>>);
    static_assert(std::is_same_v<ds::PoliciesFor<lion>::optimizer_policy, ds::Lion<>>);
    static_assert(std::is_same_v<ds::PoliciesFor<lamb>::optimizer_policy, ds::Lamb<>>);
    static_assert(ds::static_agrees<ds::PoliciesFor<lamb>, lamb>());
    CHECK(ds::PoliciesFor<sgd>::optimizer_policy::defaults.momentum == 0.9);
}

}  // TEST_SUITE
