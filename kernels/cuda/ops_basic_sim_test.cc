// The device code of the weight formats, run on the CPU: dequant.cuh's decoders and
// matvec_lanes.cuh's per-lane loops compiled for the host (MESA_CUDA_HOST_SIM, see
// device_compat.cuh) and checked against the refs. A GPU run is still needed for the
// kernels themselves (ops_basic_test.cc, label gpu), but the indexing of every block
// format (which lane reads which bytes, which element each decodes to) is checked here,
// on every machine, without a device.
//
//   DecodeAt<T>       bit-identical to ref::DequantizeRow, element by element
//   LaneDot<T, M>     the 32 lanes' sums of one row (as the warp reduction adds them)
//                     within 1e-5 * sum_c |W[r][c] x[i][c]| of ref::MatMul (f32 sums of
//                     exact products; a lane that skipped or repeated an element would be
//                     off by a whole product, far above that)
#ifndef MESA_CUDA_HOST_SIM
#error "compile with MESA_CUDA_HOST_SIM (kernels/cuda/ops_basic.cmake does)"
#endif

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/matvec_lanes.cuh"
#include "kernels/dtype.h"
#include "kernels/matmul.h"
#include "kernels/ref/quant_ref.h"
#include "tests/testing/random_weights.h"

namespace mesa {

void PrintTo(DType type, std::ostream* os) { *os << DTypeName(type); }

namespace {

using cuda::internal::DecodeAt;
using cuda::internal::LaneDot;

std::vector<int64_t> LengthsFor(DType type) {
  const int block = GetDTypeInfo(type).block_elems;
  if (block == 1) return {1, 7, 33, 4096 + 5};
  return {block, 3 * block, 17 * block, 4096 + block};
}

// Decodes every element of `rows` random rows with DecodeAt<T>; counts mismatches.
template <DType T>
int64_t DecodeMismatches(int64_t rows, int64_t cols, std::mt19937& rng) {
  const std::vector<uint8_t> w = testing::RandomWeights(T, rows, cols, rng);
  const WeightView view{T, rows, cols, w.data()};
  std::vector<float> want(cols);
  int64_t bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    ref::DequantizeRow(T, view.row(r), want.data(), cols);
    for (int64_t c = 0; c < cols; ++c) {
      const float got = DecodeAt<T>(view.row(r), c);
      if (std::memcmp(&got, &want[c], 4) != 0) {
        if (bad < 3)
          ADD_FAILURE() << "row " << r << " col " << c << ": " << got << " vs " << want[c];
        ++bad;
      }
    }
  }
  return bad;
}

// One warp's work per row, lane by lane, then the sum over lanes; against ref::MatMul.
template <DType T, int M>
void CheckLanes(int64_t rows, int64_t cols, int m, std::mt19937& rng) {
  SCOPED_TRACE(std::string(DTypeName(T)) + " cols=" + std::to_string(cols) +
               " m=" + std::to_string(m) + " M=" + std::to_string(M));
  const std::vector<uint8_t> w = testing::RandomWeights(T, rows, cols, rng);
  std::uniform_real_distribution<float> any(-1.0f, 1.0f);
  std::vector<float> x(m * cols);
  for (float& v : x) v = any(rng);
  const WeightView view{T, rows, cols, w.data()};
  std::vector<float> want(m * rows), wrow(cols);
  ref::MatMul(view, x.data(), m, want.data());
  for (int64_t r = 0; r < rows; ++r) {
    float acc[32][M] = {};
    for (int lane = 0; lane < 32; ++lane)
      LaneDot<T, M>::Run(view.row(r), cols, x.data(), m, lane, acc[lane]);
    ref::DequantizeRow(T, view.row(r), wrow.data(), cols);
    for (int i = 0; i < m; ++i) {
      float got = 0;
      for (int lane = 0; lane < 32; ++lane) got += acc[lane][i];
      double s = 0;
      for (int64_t c = 0; c < cols; ++c)
        s += std::fabs(static_cast<double>(wrow[c]) * x[i * cols + c]);
      EXPECT_TRUE(std::fabs(static_cast<double>(got) - want[i * rows + r]) <= 1e-5 * s)
          << "row " << r << " token " << i << ": " << got << " vs " << want[i * rows + r];
    }
    // Tokens past m are never touched.
    for (int lane = 0; lane < 32; ++lane)
      for (int i = m; i < M; ++i) ASSERT_EQ(acc[lane][i], 0.0f);
  }
}

template <DType T>
void CheckType() {
  std::mt19937 rng(1000 + static_cast<int>(T));
  for (int64_t cols : LengthsFor(T)) {
    SCOPED_TRACE("cols=" + std::to_string(cols));
    EXPECT_EQ(DecodeMismatches<T>(5, cols, rng), 0);
    CheckLanes<T, 1>(5, cols, 1, rng);
    CheckLanes<T, 2>(5, cols, 2, rng);
    CheckLanes<T, 4>(5, cols, 3, rng);
    CheckLanes<T, 8>(5, cols, 5, rng);
    CheckLanes<T, 8>(5, cols, 8, rng);
  }
}

TEST(CudaDeviceCodeOnHost, F32) { CheckType<DType::kF32>(); }
TEST(CudaDeviceCodeOnHost, F16) { CheckType<DType::kF16>(); }
TEST(CudaDeviceCodeOnHost, BF16) { CheckType<DType::kBF16>(); }
TEST(CudaDeviceCodeOnHost, Q8_0) { CheckType<DType::kQ8_0>(); }
TEST(CudaDeviceCodeOnHost, Q4_0) { CheckType<DType::kQ4_0>(); }
TEST(CudaDeviceCodeOnHost, Q4_K) { CheckType<DType::kQ4_K>(); }
TEST(CudaDeviceCodeOnHost, Q5_K) { CheckType<DType::kQ5_K>(); }
TEST(CudaDeviceCodeOnHost, Q6_K) { CheckType<DType::kQ6_K>(); }

// The packed 6-bit scales of Q4_K / Q5_K: every (j, byte pattern) as the ref decodes it.
TEST(CudaDeviceCodeOnHost, ScaleMinK4MatchesRef) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    uint8_t q[12];
    for (uint8_t& b : q) b = static_cast<uint8_t>(rng());
    for (int j = 0; j < 8; ++j) {
      int sc = -1, m = -1, rsc = -2, rm = -2;
      cuda::internal::ScaleMinK4(j, q, &sc, &m);
      ref::ScaleMinK4(j, q, &rsc, &rm);
      ASSERT_EQ(sc, rsc) << j;
      ASSERT_EQ(m, rm) << j;
    }
  }
}

}  // namespace
}  // namespace mesa
