// expect: Lamb requires dynamic loss scaling
#include <ds/ds.hpp>

constexpr ds::Config cfg{.train_batch_size = 16,
                         .optimizer = {.type = ds::OptimizerType::Lamb},
#ifdef DSPP_BREAK
                         .bf16 = {.enabled = true}};
#else
                         .fp16 = {.enabled = true}};
#endif
static_assert(ds::static_check<cfg>());
