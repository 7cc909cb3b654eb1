#pragma once
/// @file
/// The CPU backend's threads: OpenMP when the program is built with it, else one thread.

#include <cstddef>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace ds::cpu {

/// Threads a parallel loop may use (`OMP_NUM_THREADS`, or the example's `--threads`).
inline int max_threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/// The calling thread's index within the current parallel loop.
inline int thread_index() {
#if defined(_OPENMP)
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/// Calls `body(i, thread)` for every i in [0, n), the indices split into contiguous runs over
/// `threads` OpenMP threads (one run each, in order: what a thread does is fixed by n and
/// `threads`, so per-thread partial sums are reproducible).
template <class Body>
void parallel_for(std::size_t n, int threads, Body&& body) {
    (void)threads;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static) if (n > 1)
#endif
    for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(n); ++i)
        body(static_cast<std::size_t>(i), static_cast<std::size_t>(thread_index()));
}

}  // namespace ds::cpu
