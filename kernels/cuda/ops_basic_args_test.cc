// The argument checks of ops.h's "elementwise and row ops" and "weights" sections: bad
// shapes, unsupported types, misaligned weights, a missing cuBLAS handle. Nothing here
// reaches the device (each call returns before enqueuing anything), so this runs, and
// must pass, on machines without a GPU; the numerics are in ops_basic_test.cc (gpu).
#include <gtest/gtest.h>

#include <cstdint>

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

}  // namespace
}  // namespace mesa::cuda
