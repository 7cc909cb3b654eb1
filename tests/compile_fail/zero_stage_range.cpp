// expect: the ZeRO stage must be 0, 1, 2 or 3
#include <ds/ds.hpp>

#ifdef DSPP_BREAK
constexpr int stage = 4;
#else
constexpr int stage = 3;
#endif
static_assert(ds::Zero<stage>::partitions_parameters);
