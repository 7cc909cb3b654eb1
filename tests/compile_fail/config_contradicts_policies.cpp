// expect: zero_optimization.stage is 2 but the engine is built for ds::Zero<1>
#include <ds/ds.hpp>

using Policies = ds::Policies<ds::Adam<>, ds::Zero<1>, ds::BF16>;
#ifdef DSPP_BREAK
constexpr ds::Config cfg{.train_batch_size = 16, .bf16 = {.enabled = true}, .zero_optimization = {.stage = 2}};
#else
constexpr ds::Config cfg{.train_batch_size = 16, .bf16 = {.enabled = true}, .zero_optimization = {.stage = 1}};
#endif
static_assert(ds::static_agrees<Policies, cfg>());
