// A separate project using an installed dspp: the config, its check and the policies.
#include <iostream>

#include <ds/ds.hpp>

constexpr ds::Config cfg{
    .train_batch_size = 32,
    .optimizer = {.type = ds::OptimizerType::Adam},
    .bf16 = {.enabled = true},
    .zero_optimization = {.stage = 2},
};
static_assert(ds::check(cfg, 4));
using P = ds::PoliciesFor<cfg>;

int main() {
    const auto loaded = ds::parse_config(ds::to_json(cfg).dump(), 4);
    if (!(loaded.config == cfg)) return 1;
    std::cout << "consumer ok: Zero<" << P::zero_policy::stage << "> " << P::precision_policy::name << " "
              << ds::name_of(P::optimizer_policy::type) << "\n";
}
