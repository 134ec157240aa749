// cpu:: ops of kernels/nn.h against their ref:: twins on random data and odd sizes.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/matmul_cpu_internal.h"
#include "kernels/nn.h"

namespace mesa {
namespace {

std::vector<float> Random(int64_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

const int64_t kSizes[] = {1, 3, 15, 16, 17, 64, 127, 1000};

TEST(NnTest, DotAndAxpyMatchScalar) {
  std::mt19937 rng(1);
  for (int64_t n : kSizes) {
    auto a = Random(n, rng), b = Random(n, rng);
    double want = 0;
    for (int64_t i = 0; i < n; ++i) want += double(a[i]) * b[i];
    EXPECT_NEAR(cpu::Dot(a.data(), b.data(), n), want, 1e-5 * std::sqrt(double(n)) + 1e-6) << n;
    auto y = Random(n, rng);
    auto y0 = y;
    cpu::Axpy(0.37f, a.data(), n, y.data());
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(y[i], y0[i] + 0.37 * a[i], 1e-5);
  }
}

TEST(NnTest, NormsMatchReference) {
  std::mt19937 rng(2);
  for (int64_t n : kSizes) {
    auto x = Random(n, rng, 3.0f), w = Random(n, rng), b = Random(n, rng);
    std::vector<float> got(n, NAN), want(n);
    cpu::RmsNorm(x.data(), w.data(), 1e-5f, n, got.data());
    ref::RmsNorm(x.data(), w.data(), 1e-5f, n, want.data());
    EXPECT_LT(RelErr(got, want), 1e-6) << n;
    cpu::LayerNorm(x.data(), w.data(), b.data(), 1e-5f, n, got.data());
    ref::LayerNorm(x.data(), w.data(), b.data(), 1e-5f, n, want.data());
    EXPECT_LT(RelErr(got, want), 1e-5) << n;
    cpu::RmsNorm(x.data(), nullptr, 1e-6f, n, got.data());
    ref::RmsNorm(x.data(), nullptr, 1e-6f, n, want.data());
    EXPECT_LT(RelErr(got, want), 1e-6) << n;
  }
}

TEST(NnTest, RopeMatchesReferenceBothStylesAndPartialDims) {
  std::mt19937 rng(3);
  for (bool neox : {false, true}) {
    for (int64_t head_dim : {8, 64, 128}) {
      for (int64_t rope_dims : {head_dim, head_dim / 2}) {
        RopeParams p{head_dim, rope_dims, 10000.0f, 0.5f, neox};
        for (double pos : {0.0, 1.0, 17.0, 4095.0, 100000.0}) {
          auto x = Random(3 * head_dim, rng);
          auto want = x;
          cpu::Rope(p, pos, 3, x.data());
          ref::Rope(p, pos, 3, want.data());
          EXPECT_LT(RelErr(x, want), 2e-6) << neox << " " << head_dim << " " << pos;
        }
      }
    }
  }
}

TEST(NnTest, RopeIsRelative) {
  // Rot(a) q . Rot(b) k depends only on a - b: the property Mesa's Stair PE relies on.
  std::mt19937 rng(4);
  RopeParams p{64, 64, 10000.0f, 1.0f, false};
  auto q = Random(64, rng), k = Random(64, rng);
  auto dot_at = [&](double a, double b) {
    auto qa = q, kb = k;
    ref::Rope(p, a, 1, qa.data());
    ref::Rope(p, b, 1, kb.data());
    double s = 0;
    for (int i = 0; i < 64; ++i) s += double(qa[i]) * kb[i];
    return s;
  };
  EXPECT_NEAR(dot_at(10, 3), dot_at(107, 100), 1e-4);
  EXPECT_NEAR(dot_at(7, 0), dot_at(1007, 1000), 1e-4);
}

TEST(NnTest, ActivationsAndSoftmaxMatchReference) {
  std::mt19937 rng(5);
  for (int64_t n : kSizes) {
    auto g = Random(n, rng, 4.0f), u = Random(n, rng);
    std::vector<float> got(n), want(n);
    cpu::SwiGlu(g.data(), u.data(), n, got.data());
    for (int64_t i = 0; i < n; ++i) want[i] = ref::Silu(g[i]) * u[i];
    EXPECT_LT(RelErr(got, want), 1e-6);
    cpu::Gelu(g.data(), n, got.data());
    for (int64_t i = 0; i < n; ++i) want[i] = ref::Gelu(g[i]);
    EXPECT_LT(RelErr(got, want), 1e-6);
    auto s1 = Random(n, rng, 10.0f);
    auto s2 = s1;
    cpu::Softmax(s1.data(), n);
    ref::Softmax(s2.data(), n);
    EXPECT_LT(RelErr(s1, s2), 1e-6);
    double sum = 0;
    for (float v : s1) sum += v;
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

// The vector activations (activation_cpu-inl.h) of every ISA this machine runs, each
// element against the double-precision formulas (tolerance scaled for GELU, below): random data of odd sizes (the tail's
// padded vector included), then the extremes: huge arguments (the exp's clamps),
// zeros, infinities (gelu/silu(-inf) is NaN, as the formulas in double say), NaN (must
// stay NaN), denormals. The output is poisoned first so an
// element left unwritten fails. Tolerance: 4e-7 relative (the exp's ~2 ulp plus the
// division and products), or 1e-30 absolute where the true value is below any float
// that matters (silu(-100) = -3.7e-42; the kernel gives about -4e-37).
class ActivationIsaTest : public ::testing::TestWithParam<cpu::internal::Isa> {
 protected:
  void SetUp() override {
    if (!cpu::internal::IsaSupported(GetParam())) {
      GTEST_SKIP() << cpu::internal::IsaName(GetParam()) << " is not available on this CPU";
    }
    cpu::internal::ForceIsa(GetParam());
  }
  void TearDown() override { cpu::internal::ClearForcedIsa(); }
};

// `amplify`: how much the argument's own float rounding grows in the result (GELU
// computes z = sqrt(2/pi) (v + 0.044715 v^3) in float, and e^(-2z) turns z's relative
// error into |2z| times that: the scalar std::tanh version had the same).
void ExpectClose(float got, double want, const char* what, float arg, int64_t i, double amplify = 1.0) {
  if (std::abs(want) > 3.4028234663852886e38) want = std::copysign(INFINITY, want);  // overflows float
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << what << "(" << arg << ") at " << i << " = " << got;
    return;
  }
  if (std::isinf(want)) {
    EXPECT_EQ(got, want) << what << "(" << arg << ") at " << i;
    return;
  }
  EXPECT_LE(std::abs(got - want), 4e-7 * amplify * std::abs(want) + 1e-30)
      << what << "(" << arg << ") at " << i << ": got " << got << ", want " << want;
}

TEST_P(ActivationIsaTest, SwiGluAndGeluMatchReferencePerElement) {
  std::mt19937 rng(11);
  const float inf = INFINITY;
  const std::vector<float> extremes = {0.0f, -0.0f, 1e-40f, -1e-40f, 1e-20f, 80.0f, -80.0f, 87.5f, -87.5f,
                                       88.5f, -88.5f, 100.0f, -100.0f, 1e4f, -1e4f, 3e38f, -3e38f, inf,
                                       -inf, NAN};
  std::vector<std::vector<float>> inputs;
  for (int64_t n : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 1027}) inputs.push_back(Random(n, rng, 4.0f));
  inputs.push_back(extremes);
  for (const auto& g : inputs) {
    const int64_t n = static_cast<int64_t>(g.size());
    auto u = Random(n, rng);
    std::vector<float> got(n, 12345.0f);
    cpu::SwiGlu(g.data(), u.data(), n, got.data());
    for (int64_t i = 0; i < n; ++i) {
      // silu(g) * u in double (the formula: silu(-inf) = -inf / inf = NaN).
      const double gd = g[i];
      const double want = static_cast<double>(static_cast<float>(gd / (1.0 + std::exp(-gd)))) * u[i];
      ExpectClose(got[i], want, "silu*u", g[i], i);
    }
    std::fill(got.begin(), got.end(), 12345.0f);
    cpu::Gelu(g.data(), n, got.data());
    for (int64_t i = 0; i < n; ++i) {
      const double v = g[i];
      const double z = 0.79788456080286535587989211986876 * v * (1.0 + 0.044715 * v * v);
      ExpectClose(got[i], ref::Gelu(g[i]), "gelu", g[i], i, 1.0 + std::abs(2.0 * z));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, ActivationIsaTest,
                         ::testing::Values(cpu::internal::Isa::kScalar, cpu::internal::Isa::kAvx2,
                                           cpu::internal::Isa::kAvx512),
                         [](const auto& info) { return std::string(cpu::internal::IsaName(info.param)); });

}  // namespace
}  // namespace mesa
