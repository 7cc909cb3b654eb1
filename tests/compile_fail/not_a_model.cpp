// expect: error: static assertion failed: ds::model: M must declare `param_count`
// A type that is not a ds::model: the engine's first error names what it misses.
#include <ds/engine/engine.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/sequential.hpp>

#ifdef DSPP_BREAK
struct Net {  // shapes, but no parameter table, init or network
    using input_shape = ds::nn::Features<4>;
    using output_shape = ds::nn::Features<2>;
};
#else
using Net = ds::nn::Sequential<ds::nn::Features<4>, ds::nn::Linear<4, 2>>;
#endif
static_assert(sizeof(ds::Engine<Net>) > 0);
