// expect: Given = 401; long unsigned int Expected = 400
#include <ds/nn/conv2d.hpp>
#include <ds/nn/flatten.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/max_pool2d.hpp>
#include <ds/nn/relu.hpp>
#include <ds/nn/sequential.hpp>

using namespace ds::nn;
#ifdef DSPP_BREAK
constexpr std::size_t fc1_in = 401;
#else
constexpr std::size_t fc1_in = 400;
#endif
using Net = Sequential<Image<3, 32, 32>, Conv2d<3, 6, 5>, ReLU, MaxPool2d<2>, Conv2d<6, 16, 5>, ReLU, MaxPool2d<2>,
                       Flatten, Linear<fc1_in, 120>>;
static_assert(Net::param_count > 0);
