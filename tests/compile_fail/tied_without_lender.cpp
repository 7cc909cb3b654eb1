// expect: ds::nn::Tied: no earlier layer of the model has the name it lends from
// Tied weights name the layer they read: a name no earlier layer has is a compile error.
#include <ds/nn/embedding.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/sequential.hpp>
#include <ds/nn/tied.hpp>

using namespace ds::nn;
#ifdef DSPP_BREAK
constexpr FixedString lender = "wpe";
#else
constexpr FixedString lender = "wte";
#endif
using Net = Sequential<Tokens<4>, Named<"wte", Embedding<10, 8>>, Named<"lm_head", Tied<lender, Linear<8, 10, false>>>>;
static_assert(Net::param_count == 80);
static_assert(sizeof(Net) > 0);  // instantiates the model, where each lender is looked up
