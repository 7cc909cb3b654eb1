#pragma once
/// @file
/// Row-major single-precision GEMM on the CPU through OpenBLAS (`cblas_sgemm`).

#include <cstddef>

#include <cblas.h>

namespace ds::cpu {

/// Whether an operand is used as stored or transposed.
enum class Op { none, transpose };

/// C[M×N] = alpha · op(A)[M×K] · op(B)[K×N] + beta · C, all row-major with leading
/// dimensions lda, ldb, ldc. beta = 1 accumulates, which is how gradients add up across
/// the images of a batch and the micro-steps of an accumulation.
inline void gemm(Op op_a, Op op_b, std::size_t m, std::size_t n, std::size_t k, float alpha, const float* a,
                 std::size_t lda, const float* b, std::size_t ldb, float beta, float* c, std::size_t ldc) {
    cblas_sgemm(CblasRowMajor, op_a == Op::none ? CblasNoTrans : CblasTrans,
                op_b == Op::none ? CblasNoTrans : CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                static_cast<int>(ldc));
}

}  // namespace ds::cpu
