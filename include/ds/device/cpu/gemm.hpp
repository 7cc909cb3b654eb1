#pragma once
/// @file
/// Row-major single-precision GEMM on the CPU through OpenBLAS (`cblas_sgemm`); without a
/// CBLAS header (the GPU check machine has none) a plain loop of the same contract, slow but
/// exact enough to be the CPU reference of the GPU tests.

#include <cstddef>

#if __has_include(<cblas.h>)
#include <cblas.h>
#define DSPP_CPU_GEMM_CBLAS 1
#else
#define DSPP_CPU_GEMM_CBLAS 0
#endif

namespace ds::cpu {

/// Whether an operand is used as stored or transposed.
enum class Op { none, transpose };

/// C[M×N] = alpha · op(A)[M×K] · op(B)[K×N] + beta · C, all row-major with leading
/// dimensions lda, ldb, ldc. beta = 1 accumulates, which is how gradients add up across
/// the images of a batch and the micro-steps of an accumulation.
inline void gemm(Op op_a, Op op_b, std::size_t m, std::size_t n, std::size_t k, float alpha, const float* a,
                 std::size_t lda, const float* b, std::size_t ldb, float beta, float* c, std::size_t ldc) {
#if DSPP_CPU_GEMM_CBLAS
    cblas_sgemm(CblasRowMajor, op_a == Op::none ? CblasNoTrans : CblasTrans,
                op_b == Op::none ? CblasNoTrans : CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                static_cast<int>(ldc));
#else
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            double sum = 0;
            for (std::size_t p = 0; p < k; ++p)
                sum += double(op_a == Op::none ? a[i * lda + p] : a[p * lda + i]) *
                       (op_b == Op::none ? b[p * ldb + j] : b[j * ldb + p]);
            float& out = c[i * ldc + j];
            out = static_cast<float>(alpha * sum + (beta == 0.0f ? 0.0 : double(beta) * out));
        }
#endif
}

}  // namespace ds::cpu
