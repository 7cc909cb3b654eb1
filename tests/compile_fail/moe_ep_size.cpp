// expect: num_experts % ep_size == 0
#include <ds/nn/linear.hpp>
#include <ds/nn/moe.hpp>
#include <ds/nn/sequential.hpp>

using namespace ds::nn;
using Net = Sequential<Features<8>, Named<"moe", MoE<Linear<8, 8>, MoEMlp::standard, 2, 4>>, Named<"fc", Linear<8, 2>>>;
#ifdef DSPP_BREAK
using Split = Net::with_expert_parallel<4>;  // 2 experts cannot go to 4 ranks
#else
using Split = Net::with_expert_parallel<2>;
#endif
static_assert(Split::param_count > 0);
