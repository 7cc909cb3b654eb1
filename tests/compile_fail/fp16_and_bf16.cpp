// expect: bfloat16 and fp16 modes cannot be simultaneously enabled
#include <ds/ds.hpp>

constexpr ds::Config cfg{.train_batch_size = 16, .fp16 = {.enabled = true}, .bf16 = {.enabled = true}};
constexpr ds::Config control{.train_batch_size = 16, .bf16 = {.enabled = true}};
#ifdef DSPP_BREAK
static_assert(ds::static_check<cfg>());
#else
static_assert(ds::static_check<control>());
#endif
