#pragma once
/// @file
/// `ds::cuda::Gemm`: matrix products through cuBLASLt, row-major like `ds::cpu::gemm`, in
/// fp32 (optionally on TF32 tensor cores), bf16 or fp16 with fp32 accumulation, with the
/// bias and bias+ReLU epilogues. One workspace, allocated once; the algorithm cuBLASLt's
/// heuristic picks is cached per shape, dtype, epilogue and pointer alignment.

#include <compare>
#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <ds/device/cuda/error.hpp>
#include <ds/device/cuda/memory.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::cuda {

namespace detail {
inline void check(cublasStatus_t status, const char* call, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS)
        throw CudaError("cuBLASLt", call,
                        std::string(cublasLtGetStatusName(status)) + " (" + cublasLtGetStatusString(status) + ")", file,
                        line);
}
}  // namespace detail

/// Throws `ds::CudaError` unless the cuBLASLt call succeeds.
#define DS_CUBLAS_CHECK(call) ::ds::cuda::detail::check((call), #call, __FILE__, __LINE__)

enum class Op { none, transpose };
/// What the product's epilogue adds: nothing, a bias per output column, or bias then ReLU.
enum class Epilogue { none, bias, relu_bias };

/// Row-major C[m×n] = alpha · op(A)[m×k] · op(B)[k×n] + beta · C (+ epilogue), on a stream.
/// C may be fp32 under 2-byte A and B (the sums kept unrounded for a later bias add). The
/// epilogue's bias must be 16-byte aligned; k must not be 0.
/// One `Gemm` per stream and host thread: its workspace and cached descriptors are reused by
/// every call, so two streams sharing one would race on them.
///
/// cuBLASLt is column-major; a row-major product is the column-major product of the
/// transposes, Cᵀ = op(B)ᵀ · op(A)ᵀ, so B is passed first and m and n swap. fp32 operands
/// compute in fp32 unless `use_tf32` (the documented switch, like PyTorch's
/// `allow_tf32`): then they round to TF32 (10-bit mantissa) on the tensor cores.
class Gemm {
public:
    explicit Gemm(std::size_t workspace_bytes = std::size_t{32} << 20) : workspace_(workspace_bytes) {
        DS_CUBLAS_CHECK(cublasLtCreate(&handle_));
    }
    ~Gemm() {
        for (auto& [key, plan] : plans_) destroy(plan);
        if (handle_) cublasLtDestroy(handle_);
    }
    Gemm(const Gemm&) = delete;
    Gemm& operator=(const Gemm&) = delete;

    std::size_t workspace_bytes() const { return workspace_.bytes(); }

    /// TF32 tensor cores for fp32 operands (off by default: fp32 results match the CPU's).
    bool use_tf32 = false;

    template <storage_float T, storage_float C>
    void operator()(Op op_a, Op op_b, std::size_t m, std::size_t n, std::size_t k, float alpha, const T* a,
                    std::size_t lda, const T* b, std::size_t ldb, float beta, C* c, std::size_t ldc, cudaStream_t stream,
                    Epilogue epilogue = Epilogue::none, const C* bias = nullptr) {
        static_assert(std::is_same_v<C, T> || std::is_same_v<C, float>, "ds::cuda::Gemm: C is A's dtype or fp32");
        if (m == 0 || n == 0) return;
        if (k == 0)  // an empty sum (a batch of 0): cuBLASLt refuses the zero-width layouts
            throw std::invalid_argument("ds::cuda::Gemm: a product over k = 0");
        // cuBLASLt's kernels may read the bias 16 bytes at a time, and its alignment
        // preferences do not cover the bias: a misaligned one faults (misaligned address).
        if (epilogue != Epilogue::none && (bias == nullptr || alignment(bias) < 16))
            throw std::invalid_argument("ds::cuda::Gemm: the epilogue needs a 16-byte aligned bias (add a "
                                        "misaligned one with a kernel after the product)");
        const Key key{data_type<T>(), data_type<C>(), op_a, op_b, m, n, k, lda, ldb, ldc, epilogue,
                      use_tf32 && std::is_same_v<T, float>, alignment(a), alignment(b), alignment(c)};
        auto it = plans_.find(key);
        if (it == plans_.end()) it = plans_.emplace(key, make_plan(key)).first;
        Plan& plan = it->second;
        if (epilogue != Epilogue::none)
            DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                           sizeof(bias)));
        // Column-major: D = op(B_cm) · op(A_cm), B first.
        DS_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, b, plan.first, a, plan.second, &beta, c, plan.out, c,
                                       plan.out, &plan.algo, workspace_.data(), workspace_.bytes(), stream));
    }

    /// Shapes with a cached algorithm.
    std::size_t cached_plans() const { return plans_.size(); }

private:
    struct Key {
        cudaDataType_t type, out_type;
        Op op_a, op_b;
        std::size_t m, n, k, lda, ldb, ldc;
        Epilogue epilogue;
        bool tf32;
        std::uint32_t align_a, align_b, align_c;
        auto operator<=>(const Key&) const = default;
    };
    struct Plan {
        cublasLtMatmulDesc_t desc = nullptr;
        cublasLtMatrixLayout_t first = nullptr, second = nullptr, out = nullptr;
        cublasLtMatmulAlgo_t algo{};
    };

    template <class T>
    static constexpr cudaDataType_t data_type() {
        if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
        else if constexpr (std::is_same_v<T, bf16>) return CUDA_R_16BF;
        else return CUDA_R_16F;
    }
    /// The largest power of two up to 256 that divides the address: what cuBLASLt may assume.
    static std::uint32_t alignment(const void* p) {
        const auto address = reinterpret_cast<std::uintptr_t>(p);
        std::uint32_t align = 256;
        while (align > 1 && address % align != 0) align /= 2;
        return align;
    }
    static void destroy(Plan& p) {
        if (p.first) cublasLtMatrixLayoutDestroy(p.first);
        if (p.second) cublasLtMatrixLayoutDestroy(p.second);
        if (p.out) cublasLtMatrixLayoutDestroy(p.out);
        if (p.desc) cublasLtMatmulDescDestroy(p.desc);
    }

    Plan make_plan(const Key& key) {
        Plan p;
        try {
            const cublasComputeType_t compute = key.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
            DS_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F));
            const cublasOperation_t first_op = key.op_b == Op::none ? CUBLAS_OP_N : CUBLAS_OP_T;
            const cublasOperation_t second_op = key.op_a == Op::none ? CUBLAS_OP_N : CUBLAS_OP_T;
            DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &first_op, sizeof(first_op)));
            DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &second_op, sizeof(second_op)));
            if (key.epilogue != Epilogue::none) {
                const cublasLtEpilogue_t e =
                    key.epilogue == Epilogue::bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_RELU_BIAS;
                DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof(e)));
                const cudaDataType_t bias_type = key.out_type;
                DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                               sizeof(bias_type)));
            }
            // Stored column-major shapes: row-major B (k×n, or n×k transposed) is n×k (k×n) column-major.
            const auto rows_first = key.op_b == Op::none ? key.n : key.k;
            const auto cols_first = key.op_b == Op::none ? key.k : key.n;
            const auto rows_second = key.op_a == Op::none ? key.k : key.m;
            const auto cols_second = key.op_a == Op::none ? key.m : key.k;
            DS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.first, key.type, rows_first, cols_first, static_cast<std::int64_t>(key.ldb)));
            DS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.second, key.type, rows_second, cols_second, static_cast<std::int64_t>(key.lda)));
            DS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.out, key.out_type, key.n, key.m, static_cast<std::int64_t>(key.ldc)));

            cublasLtMatmulPreference_t preference = nullptr;
            DS_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
            const std::size_t workspace = workspace_.bytes();
            cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                 sizeof(workspace));
            cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_b,
                                                 sizeof(key.align_b));
            cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_a,
                                                 sizeof(key.align_a));
            cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_c,
                                                 sizeof(key.align_c));
            cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_c,
                                                 sizeof(key.align_c));
            cublasLtMatmulHeuristicResult_t result{};
            int found = 0;
            const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.first, p.second, p.out, p.out,
                                                                          preference, 1, &result, &found);
            cublasLtMatmulPreferenceDestroy(preference);
            DS_CUBLAS_CHECK(status);
            if (found == 0)
                throw CudaError("cuBLASLt", "cublasLtMatmulAlgoGetHeuristic",
                                "no algorithm for a " + std::to_string(key.m) + "x" + std::to_string(key.n) + "x" +
                                    std::to_string(key.k) + " product",
                                __FILE__, __LINE__);
            p.algo = result.algo;
            return p;
        } catch (...) {
            destroy(p);
            throw;
        }
    }

    cublasLtHandle_t handle_ = nullptr;
    DeviceBuffer<std::byte> workspace_;
    std::map<Key, Plan> plans_;
};

}  // namespace ds::cuda
