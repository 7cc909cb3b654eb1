// The second translation unit of the ODR link test (see odr_a.cpp).
#include <doctest/doctest.h>

#include <ds/ds.hpp>

int odr_unit_a();

TEST_CASE("two translation units including <ds/ds.hpp> link together") {
    CHECK(odr_unit_a() == static_cast<int>(ds::half(2.0f).bits) + 2);
}
