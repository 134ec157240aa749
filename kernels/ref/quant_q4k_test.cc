// ref::QuantizeRowQ4_K: every row round-trips through ref::DequantizeRow within the
// bound the header states (half a step per element, the step near the sub-block's
// range / 15), on fresh random rows of several shapes and on the edge cases (zeros,
// constants, one sign, outliers, tiny and large magnitudes).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/matmul.h"
#include "kernels/ref/quant_ref.h"

namespace mesa {
namespace {

constexpr int kBlockBytes = 144;

float F16At(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

// Quantizes x, decodes it, and checks every element against its sub-block's step.
// Sets *rel to the RMS error relative to the RMS of x (absolute when x is all zero).
void RoundTrip(const std::vector<float>& x, const char* what, double* rel) {
  *rel = INFINITY;
  const int64_t n = static_cast<int64_t>(x.size());
  EXPECT_EQ(RowBytes(DType::kQ4_K, n), n / 256 * kBlockBytes);
  std::vector<uint8_t> q(RowBytes(DType::kQ4_K, n), 0xAB);  // garbage: every byte must be written
  ref::QuantizeRowQ4_K(x.data(), q.data(), n);
  std::vector<float> y(n, NAN);
  ref::DequantizeRow(DType::kQ4_K, q.data(), y.data(), n);
  double err2 = 0, ref2 = 0;
  for (int64_t blk = 0; blk < n / 256; ++blk) {
    const uint8_t* b = q.data() + blk * kBlockBytes;
    const float d = F16At(b), dmin = F16At(b + 2);
    EXPECT_TRUE(std::isfinite(d) && d >= 0) << what << " d=" << d;
    EXPECT_TRUE(std::isfinite(dmin) && dmin >= 0) << what << " dmin=" << dmin;
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      ref::ScaleMinK4(j, b + 4, &sc, &m);
      const float* xs = x.data() + blk * 256 + 32 * j;
      const float* ys = y.data() + blk * 256 + 32 * j;
      double lo = 0, hi = -INFINITY;
      for (int l = 0; l < 32; ++l) {
        lo = std::min(lo, double{xs[l]});
        hi = std::max(hi, double{xs[l]});
      }
      const double step = double{d} * sc;
      // The step is at most the sub-block's range / 15 plus one level of each scale.
      EXPECT_LE(step, (hi - lo) / 15 + d + dmin / 15 + 1e-12) << what << " block " << blk << " sub " << j;
      for (int l = 0; l < 32; ++l) {
        ASSERT_FALSE(std::isnan(ys[l])) << what;
        const double e = std::fabs(double{xs[l]} - ys[l]);
        // Half a step, plus f32 rounding of the decoder's d*sc*q - dmin*m.
        const double tol = step / 2 * (1 + 1e-5) + 4e-7 * (std::fabs(double{xs[l]}) + double{dmin} * m);
        ASSERT_LE(e, tol) << what << " element " << blk * 256 + 32 * j + l << " x=" << xs[l] << " y=" << ys[l];
        err2 += e * e;
        ref2 += double{xs[l]} * xs[l];
      }
    }
  }
  *rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
}

double CheckRoundTrip(const std::vector<float>& x, const char* what) {
  double rel;
  RoundTrip(x, what, &rel);
  return rel;
}

TEST(QuantizeQ4K, RandomRowsRoundTripWithinHalfAStep) {
  std::mt19937 rng(20251130);
  for (int64_t n : {256, 512, 4096, 14336}) {
    for (double sigma : {1e-3, 0.0156, 1.0, 30.0}) {
      std::normal_distribution<float> nd(0.0f, static_cast<float>(sigma));
      std::vector<float> x(n);
      for (auto& v : x) v = nd(rng);  // fresh inputs for every check
      const double rel = CheckRoundTrip(x, "normal");
      // 4 bits over a ~5 sigma range: about 0.1 relative RMS error; far above means a
      // broken layout even where every element stays inside its (wrong) bound.
      EXPECT_LT(rel, 0.15) << "n=" << n << " sigma=" << sigma;
      EXPECT_GT(rel, 0.0) << "n=" << n;
    }
  }
}

TEST(QuantizeQ4K, OneSignedOffsetAndOutlierRows) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(1024);
  for (auto& v : x) v = 1.0f + u(rng);  // all positive: min stays 0
  CheckRoundTrip(x, "positive");
  for (auto& v : x) v = -2.0f - u(rng);  // all negative
  CheckRoundTrip(x, "negative");
  for (auto& v : x) v = u(rng) - 0.5f;
  x[3] = 80.0f;  // an outlier in sub-block 0 of block 0
  x[700] = -120.0f;
  const double rel = CheckRoundTrip(x, "outliers");
  EXPECT_LT(rel, 0.2);
  // Each sub-block gets its own scale: a block with one huge and seven small
  // sub-blocks still resolves the small ones (6-bit scales, not one per block).
  std::vector<float> y(256);
  for (int l = 0; l < 256; ++l) y[l] = (l < 32 ? 100.0f : 1.0f) * (u(rng) - 0.5f);
  CheckRoundTrip(y, "mixed scales");
}

TEST(QuantizeQ4K, ZerosAndConstants) {
  std::vector<float> zeros(512, 0.0f);
  std::vector<uint8_t> q(RowBytes(DType::kQ4_K, 512));
  ref::QuantizeRowQ4_K(zeros.data(), q.data(), 512);
  std::vector<float> y(512, NAN);
  ref::DequantizeRow(DType::kQ4_K, q.data(), y.data(), 512);
  for (float v : y) EXPECT_EQ(v, 0.0f);
  for (float c : {0.37f, -0.37f, 1e-6f, 5000.0f}) {
    std::vector<float> x(256, c);
    CheckRoundTrip(x, "constant");
  }
}

TEST(QuantizeQ4K, DeterministicAndOnlyItsOwnBytes) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(512);
  for (auto& v : x) v = nd(rng);
  std::vector<uint8_t> a(RowBytes(DType::kQ4_K, 512) + 16, 0x11), b(a.size(), 0x22);
  ref::QuantizeRowQ4_K(x.data(), a.data(), 512);
  ref::QuantizeRowQ4_K(x.data(), b.data(), 512);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() - 16));
  for (size_t i = a.size() - 16; i < a.size(); ++i) {
    EXPECT_EQ(a[i], 0x11);
    EXPECT_EQ(b[i], 0x22);
  }
}

TEST(QuantizeQ4KDeathTest, RaggedRowIsAProgrammerError) {
  std::vector<float> x(300, 1.0f);
  std::vector<uint8_t> q(4 * kBlockBytes);
  EXPECT_DEATH(ref::QuantizeRowQ4_K(x.data(), q.data(), 300), "multiple of 256");
}

}  // namespace
}  // namespace mesa
