// expect: train_batch_size is not equal to micro_batch_per_gpu \* gradient_acc_step \* world_size 16 != 5 \* 1 \* 3
#include <ds/ds.hpp>

constexpr ds::Config cfg{.train_batch_size = 16};
#ifdef DSPP_BREAK
static_assert(ds::static_check<cfg, 3>());
#else
static_assert(ds::static_check<cfg, 4>());
#endif
