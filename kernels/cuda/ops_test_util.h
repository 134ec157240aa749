// Helpers shared by the CUDA op tests (on a GPU: ops_basic_test.cc; under the CPU
// emulator: ops_emu_test.cc): random data and element-wise bounds that NaN never passes.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "tests/testing/random_weights.h"

namespace mesa::cuda::testing {

inline std::vector<float> Normal(std::mt19937& rng, size_t n, float sigma = 1.0f, float mean = 0.0f) {
  std::normal_distribution<float> dist(mean, sigma);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// GELU's inputs: normal values with both tails and zero placed first (when n > 4).
inline std::vector<float> GeluInputs(std::mt19937& rng, size_t n) {
  std::vector<float> x = Normal(rng, n, 3.0f);
  if (n > 4) {
    x[0] = -12.0f;
    x[1] = 12.0f;
    x[2] = 0.0f;
    x[3] = -3.5f;
  }
  return x;
}

// Fails where !(|got[i] - want[i]| <= bound[i]) (NaN fails); reports the first few.
inline ::testing::AssertionResult Within(const std::vector<float>& got, const std::vector<float>& want,
                                  const std::vector<double>& bound) {
  if (got.size() != want.size() || bound.size() != want.size())
    return ::testing::AssertionFailure() << "size mismatch";
  int bad = 0;
  std::string first;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= bound[i])) {
      if (bad < 5) {
        first += "\n  [" + std::to_string(i) + "] got " + std::to_string(got[i]) + " want " +
                 std::to_string(want[i]) + " bound " + std::to_string(bound[i]);
      }
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << want.size() << " elements off:" << first;
}

// tol * max |want| over each row of `row` elements.
inline std::vector<double> RowMaxBound(const std::vector<float>& want, int64_t row, double tol) {
  std::vector<double> bound(want.size());
  for (size_t r0 = 0; r0 < want.size(); r0 += row) {
    double mx = 0;
    for (int64_t i = 0; i < row; ++i)
      mx = std::max(mx, std::fabs(static_cast<double>(want[r0 + i])));
    for (int64_t i = 0; i < row; ++i) bound[r0 + i] = tol * mx;
  }
  return bound;
}


// tol * (|want[i]| + 1e-3 * scale[i]): relative, except where the activation is tiny
// against its linear part (scale = |x| for GELU, |gate * up| for SwiGLU), where the gate
// factor (a sigmoid) may be off by 1e-3 * tol absolute. The refs themselves are only that
// good there: ref::Gelu's 1 + tanh(z) is exactly 0 in double below x ~ -7.
inline std::vector<double> ElementBound(const std::vector<float>& want, const std::vector<double>& scale,
                                 double tol) {
  std::vector<double> bound(want.size());
  for (size_t i = 0; i < want.size(); ++i)
    bound[i] = tol * (std::fabs(static_cast<double>(want[i])) + 1e-3 * scale[i]);
  return bound;
}

// Exact agreement.
inline std::vector<double> Exact(size_t n) { return std::vector<double>(n, 0.0); }

// A MatMul case: random weights of `type` (rows x cols), x uniform in [-1, 1) (m rows),
// the ref's product, and S = sum_c |W[r][c] x[i][c]| per output (the scale bounds use).
struct MatMulCase {
  std::vector<uint8_t> w;
  std::vector<float> x, want;
  std::vector<double> abs_sum;
};
inline MatMulCase MakeMatMulCase(DType type, int64_t rows, int64_t cols, int64_t m, std::mt19937& rng) {
  MatMulCase c;
  c.w = ::mesa::testing::RandomWeights(type, rows, cols, rng);
  std::uniform_real_distribution<float> any(-1.0f, 1.0f);
  c.x.resize(m * cols);
  for (float& v : c.x) v = any(rng);
  const WeightView view{type, rows, cols, c.w.data()};
  c.want.resize(m * rows);
  ref::MatMul(view, c.x.data(), m, c.want.data());
  c.abs_sum.assign(m * rows, 0.0);
  std::vector<float> wrow(cols);
  for (int64_t r = 0; r < rows; ++r) {
    ref::DequantizeRow(type, view.row(r), wrow.data(), cols);
    for (int64_t i = 0; i < m; ++i) {
      double sum = 0;
      for (int64_t col = 0; col < cols; ++col) sum += std::fabs(static_cast<double>(wrow[col]) * c.x[i * cols + col]);
      c.abs_sum[i * rows + r] = sum;
    }
  }
  return c;
}

}  // namespace mesa::cuda::testing
