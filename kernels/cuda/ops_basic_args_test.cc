// The argument checks of ops.h's "elementwise and row ops" and "weights" sections: bad
// shapes, unsupported types, misaligned weights, a missing cuBLAS handle. Nothing here
// reaches the device (each call returns before enqueuing anything), so this runs, and
// must pass, on machines without a GPU; the numerics are in ops_basic_test.cc (gpu).
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/matmul_plan.h"
#include "kernels/cuda/ops.h"

namespace mesa::cuda {
namespace {

TEST(CudaOpsArgs, MatMulRejectsBadWeights) {
  const MatMulWorkspace none;
  const auto* fake = reinterpret_cast<const void*>(uintptr_t{0x10000});
  auto* out = reinterpret_cast<float*>(uintptr_t{0x20000});
  const auto* x = reinterpret_cast<const float*>(uintptr_t{0x30000});
  EXPECT_EQ(MatMul({DType::kQ4_1, 4, 64, fake}, x, 1, out, none, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(MatMul({DType::kQ8_0, 4, 40, fake}, x, 1, out, none, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(MatMul({DType::kQ4_K, 4, 255, fake}, x, 1, out, none, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(MatMul({DType::kF32, -1, 8, fake}, x, 1, out, none, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(MatMul({DType::kF32, 4, 8, fake}, x, -1, out, none, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(MatMul({DType::kF32, 4, 8, nullptr}, x, 1, out, none, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(MatMul({DType::kF32, 4, 8, fake}, nullptr, 1, out, none, nullptr),
            cudaErrorInvalidValue);
  // Misaligned data: 4-byte words for F32, Q4_K and Q5_K; 2-byte scales everywhere.
  const auto* odd2 = reinterpret_cast<const void*>(uintptr_t{0x10002});
  const auto* odd1 = reinterpret_cast<const void*>(uintptr_t{0x10001});
  EXPECT_EQ(MatMul({DType::kQ4_K, 4, 256, odd2}, x, 1, out, none, nullptr),
            cudaErrorMisalignedAddress);
  EXPECT_EQ(MatMul({DType::kF32, 4, 8, odd2}, x, 1, out, none, nullptr),
            cudaErrorMisalignedAddress);
  EXPECT_EQ(MatMul({DType::kQ8_0, 4, 32, odd1}, x, 1, out, none, nullptr),
            cudaErrorMisalignedAddress);
  // Nothing to do: success without touching anything.
  EXPECT_EQ(MatMul({DType::kQ8_0, 4, 32, fake}, x, 0, out, none, nullptr), cudaSuccess);
  EXPECT_EQ(MatMul({DType::kQ8_0, 0, 32, fake}, x, 3, out, none, nullptr), cudaSuccess);
  // The GEMM path needs a cuBLAS handle.
  EXPECT_EQ(MatMul({DType::kF32, 4, 8, fake}, x, 9, out, none, nullptr), cudaErrorInvalidValue);
}

TEST(CudaOpsArgs, WorkspaceBytes) {
  // Matrix-vector sizes need none.
  EXPECT_EQ(MatMulWorkspaceBytes(4096, 4096, 1), 0u);
  EXPECT_EQ(MatMulWorkspaceBytes(4096, 4096, 8), 0u);
  EXPECT_EQ(MatMulWorkspaceBytes(0, 4096, 64), 0u);
  // Larger m: an x chunk and a tile, never below one bf16 row of each, and growing with
  // every bound.
  const size_t base = MatMulWorkspaceBytes(37, 4101, 9);
  EXPECT_GE(base, 2u * (9 * 4101 * 2));
  EXPECT_EQ(base % 256, 0u);
  EXPECT_GE(MatMulWorkspaceBytes(38, 4101, 9), base);
  EXPECT_GE(MatMulWorkspaceBytes(37, 4102, 9), base);
  EXPECT_GE(MatMulWorkspaceBytes(37, 4101, 10), base);
  // Huge shapes stay bounded (chunks and tiles of 2^24 elements).
  EXPECT_LE(MatMulWorkspaceBytes(152064, 8192, 131072), size_t{128} << 20);
}

TEST(CudaOpsArgs, RowOpsRejectBadShapes) {
  float* p = reinterpret_cast<float*>(uintptr_t{0x10000});
  RopeParams rp;
  rp.head_dim = 64;
  rp.rope_dims = 65;
  EXPECT_EQ(Rope(rp, nullptr, 1, 1, p, nullptr), cudaErrorInvalidValue);
  rp.rope_dims = 64;
  EXPECT_EQ(Rope(rp, nullptr, 0, 4, p, nullptr), cudaSuccess);
  EXPECT_EQ(RmsNorm(p, nullptr, 1e-5f, -1, 8, p, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(LayerNorm(p, nullptr, nullptr, 1e-5f, 2, -8, p, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(Add(p, -3, p, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(Add(p, 0, p, nullptr), cudaSuccess);
  EXPECT_EQ(Embed(DType::kQ4_1, p, nullptr, 1, 32, p, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(Embed(DType::kQ4_K, p, nullptr, 1, 100, p, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(Embed(DType::kF32, reinterpret_cast<const void*>(uintptr_t{0x10002}), nullptr, 1, 8, p,
                  nullptr),
            cudaErrorMisalignedAddress);
}

// The GEMM plan against the workspace MatMulWorkspaceBytes promises: for every shape up to
// the bounds it was asked for, the plan fits (x chunk + tile <= workspace), every cuBLAS
// operand stays under 2^30 elements, and tiles are multiples of 128 rows unless they are
// the whole matrix or fewer than 128 rows fit.
TEST(CudaOpsArgs, GemmPlanFitsTheWorkspaceOfAnySmallerShape) {
  using internal::kMaxGemmElems;
  const DType types[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                         DType::kQ4_0, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
  const int64_t row_counts[] = {1, 37, 300, 4096, 152064};
  const int64_t col_counts[] = {1, 7, 256, 4096, 5000, 14336};
  const int64_t token_counts[] = {9, 64, 4100, 131072};
  for (int64_t max_rows : row_counts) {
    for (int64_t max_cols : col_counts) {
      for (int64_t max_m : token_counts) {
        const size_t ws = MatMulWorkspaceBytes(max_rows, max_cols, max_m);
        for (int64_t rows : row_counts) {
          for (int64_t cols : col_counts) {
            for (int64_t m : token_counts) {
              if (rows > max_rows || cols > max_cols || m > max_m) continue;
              for (DType type : types) {
                SCOPED_TRACE(std::string(DTypeName(type)) + " max " + std::to_string(max_rows) +
                             "x" + std::to_string(max_cols) + " m " + std::to_string(max_m) +
                             ", shape " + std::to_string(rows) + "x" + std::to_string(cols) +
                             " m " + std::to_string(m));
                const internal::GemmPlan p = internal::PlanGemm(type, rows, cols, m, true, ws);
                ASSERT_TRUE(p.ok);
                ASSERT_GE(p.tokens, 1);
                ASSERT_LE(p.tokens, m);
                ASSERT_GE(p.rows, 1);
                ASSERT_LE(p.rows, rows);
                ASSERT_LE(p.tokens * cols, kMaxGemmElems);
                ASSERT_LE(p.tokens * rows, std::max<int64_t>(rows, kMaxGemmElems));
                ASSERT_LE(p.rows * cols, kMaxGemmElems);
                ASSERT_EQ(p.x_bytes % 256, 0u);
                const size_t tile = p.w_in_place ? 0 : static_cast<size_t>(p.rows * cols) * 2;
                ASSERT_LE(p.x_bytes + tile, ws);
                if (!p.x_in_place) {
                  ASSERT_GE(p.x_bytes, static_cast<size_t>(p.tokens * cols) * 2);
                }
                if (p.rows < rows && p.rows >= 128) {
                  ASSERT_EQ(p.rows % 128, 0);
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(CudaOpsArgs, GemmPlanRefusesTooLittleWorkspace) {
  // F32 needs none; BF16 needs the x chunk; the others the x chunk and one row.
  EXPECT_TRUE(internal::PlanGemm(DType::kF32, 64, 64, 9, false, 0).ok);
  EXPECT_FALSE(internal::PlanGemm(DType::kBF16, 64, 64, 9, false, 0).ok);
  const size_t x_bytes = 1280;  // 9 * 64 bf16, rounded up to 256
  EXPECT_TRUE(internal::PlanGemm(DType::kBF16, 64, 64, 9, true, x_bytes).ok);
  EXPECT_FALSE(internal::PlanGemm(DType::kBF16, 64, 64, 9, true, x_bytes - 1).ok);
  EXPECT_FALSE(internal::PlanGemm(DType::kQ8_0, 64, 64, 9, true, x_bytes).ok);
  EXPECT_FALSE(internal::PlanGemm(DType::kQ8_0, 64, 64, 9, true, x_bytes + 127).ok);
  const internal::GemmPlan one_row =
      internal::PlanGemm(DType::kQ8_0, 64, 64, 9, true, x_bytes + 128);
  EXPECT_TRUE(one_row.ok);
  EXPECT_EQ(one_row.rows, 1);
  const internal::GemmPlan all = internal::PlanGemm(DType::kQ8_0, 64, 64, 9, true, 1 << 20);
  EXPECT_EQ(all.rows, 64);
  EXPECT_EQ(all.tokens, 9);
  // A prefill longer than one chunk: 2^24 / 4096 = 4096 tokens per round.
  EXPECT_EQ(internal::PlanGemm(DType::kQ4_K, 8, 4096, 5000, true, size_t{1} << 30).tokens, 4096);
}

}  // namespace
}  // namespace mesa::cuda
