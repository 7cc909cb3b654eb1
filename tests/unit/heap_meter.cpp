// Replaces the global allocation functions of the unit-test binary with ones that count the
// bytes in use (glibc's malloc_usable_size of each block), and forward to malloc.
#include "common/heap_meter.hpp"

#include <atomic>
#include <cstdlib>
#include <new>

#include <malloc.h>

namespace {

std::atomic<std::size_t> in_use{0};

void* counted(void* p) {
    if (!p) throw std::bad_alloc();
    in_use.fetch_add(malloc_usable_size(p), std::memory_order_relaxed);
    return p;
}
void release(void* p) noexcept {
    if (!p) return;
    in_use.fetch_sub(malloc_usable_size(p), std::memory_order_relaxed);
    std::free(p);
}
void* aligned(std::size_t n, std::align_val_t alignment) {
    const auto a = static_cast<std::size_t>(alignment);
    return counted(std::aligned_alloc(a, (n + a - 1) / a * a));  // a multiple of the alignment, as C requires
}

}  // namespace

std::size_t heap_bytes_in_use() { return in_use.load(std::memory_order_relaxed); }

void* operator new(std::size_t n) { return counted(std::malloc(n ? n : 1)); }
void* operator new[](std::size_t n) { return counted(std::malloc(n ? n : 1)); }
void* operator new(std::size_t n, std::align_val_t a) { return aligned(n ? n : 1, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return aligned(n ? n : 1, a); }
void operator delete(void* p) noexcept { release(p); }
void operator delete[](void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t) noexcept { release(p); }
void operator delete(void* p, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { release(p); }
