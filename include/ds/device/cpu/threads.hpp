#pragma once
/// @file
/// The CPU backend's threads: OpenMP when the program is built with it, else one thread.

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

}  // namespace ds::cpu
