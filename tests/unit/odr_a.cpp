// Two translation units include the whole API and link into one binary: no ODR violation.
#include <ds/ds.hpp>

int odr_unit_a() { return static_cast<int>(ds::half(2.0f).bits) + ds::Zero<2>::stage; }
