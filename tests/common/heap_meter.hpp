#pragma once
// The unit tests' heap meter: bytes the program holds through `operator new`, counted by the
// replacement operators in unit/heap_meter.cpp (what malloc actually reserved for each block).
// An independent measure of what an object holds, for checking `Engine::memory_report`.
#include <cstddef>

std::size_t heap_bytes_in_use();
