#pragma once
/// @file
/// The CPU backend's threads: OpenMP when the program is built with it, else one thread.

#include <cstddef>
#include <thread>

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

/// Sets the threads parallel loops use.
inline void set_threads(int n) {
#if defined(_OPENMP)
    omp_set_num_threads(n > 0 ? n : 1);
#else
    (void)n;
#endif
}

/// This machine's cores divided among the `local_ranks` processes on it, at least one each
/// (what DeepSpeed's launcher does with `--bind_cores_to_rank`): ranks that each start a
/// thread per core would oversubscribe the machine, and OpenMP's spinning threads then wait
/// on each other for whole scheduler slices.
inline int cores_per_rank(int local_ranks) {
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    const int ranks = local_ranks > 0 ? local_ranks : 1;
    return cores / ranks > 0 ? cores / ranks : 1;
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
