// expect: Mixture of Experts is not supported with ZeRO stage 3
#include <ds/engine/engine.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/moe.hpp>
#include <ds/nn/sequential.hpp>

using namespace ds::nn;
using Net = Sequential<Features<8>, Named<"moe", MoE<Linear<8, 8>, MoEMlp::standard, 2>>, Named<"fc", Linear<8, 2>>>;
#ifdef DSPP_BREAK
using Stage = ds::Zero<3>;
#else
using Stage = ds::Zero<2>;
#endif
// Naming the engine's size instantiates the class, and with it the policy check.
static_assert(sizeof(ds::Engine<Net, ds::Adam<>, Stage>) > 0);
