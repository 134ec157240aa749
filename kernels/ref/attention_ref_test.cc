// Properties of the attention reference itself (kernels/ref/attention_ref.cc) and of
// RelativePosition: the relative positions of MESA_SPEC section 3 and its worked toy
// plan (section 5 item 5), Self-Extend and ReRoPE values computed by hand, ALiBi
// biased by the woven position, log-n scaling, and Stair PE with E = 1 collapsing
// to exact attention (section 5 property 2). The fast kernels are checked against
// this reference elsewhere (kernels/cpu/attention_cpu_test.cc).
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/nn.h"

namespace mesa {
namespace {

using Kind = RelativePosition::Kind;

RelativePosition Stair(int64_t n, int64_t e) {
  RelativePosition r;
  r.kind = Kind::kStair;
  r.n = n;
  r.e = e;
  return r;
}

TEST(RelativePositionTest, StairMatchesPaperFigure) {
  // MESA_SPEC section 3: N = 4, E = 2 gives 0 1 2 3 4 4 5 5 6 6 for d = 0..9.
  const RelativePosition r = Stair(4, 2);
  const int64_t want[] = {0, 1, 2, 3, 4, 4, 5, 5, 6, 6};
  for (int64_t d = 0; d < 10; ++d) EXPECT_EQ(r(100, 100 - d), want[d]) << d;
}

TEST(RelativePositionTest, WorkedToyPlan) {
  // MESA_SPEC section 5 item 5: T = 32, N = 16, auto-E = 3; the last query t = 59.
  const RelativePosition r = Stair(16, 3);
  const int64_t t = 59;
  EXPECT_EQ(r(t, 0), 30);
  EXPECT_EQ(r(t, 1), 30);
  EXPECT_EQ(r(t, 2), 29);  // only keys 0-1 reach 30
  for (int64_t i = 41; i <= 43; ++i) EXPECT_EQ(r(t, i), 16) << i;
  EXPECT_EQ(r(t, 40), 17);
  for (int64_t i = 44; i <= 59; ++i) EXPECT_EQ(r(t, i), t - i) << i;
  // Auto-E's promise: no relative position reaches T.
  for (int64_t i = 0; i <= t; ++i) EXPECT_LE(r(t, i), 31);
}

TEST(RelativePositionTest, SelfExtendAndClampByHand) {
  RelativePosition se;
  se.kind = Kind::kSelfExtend;
  se.window = 4;
  se.group = 2;
  EXPECT_EQ(se(10, 7), 3);   // d = 3 < window: exact
  EXPECT_EQ(se(10, 6), 4);   // d = 4: 10/2 - 6/2 + 4 - 4/2 = 5 - 3 + 2
  EXPECT_EQ(se(10, 3), 6);   // 5 - 1 + 2
  EXPECT_EQ(se(11, 0), 7);   // 5 - 0 + 2
  EXPECT_EQ(se(11, 7), 4);   // d = 4: 5 - 3 + 2
  se.window = 5;
  se.group = 3;
  EXPECT_EQ(se(20, 15), 5);  // d = 5: 20/3 - 15/3 + 5 - 5/3 = 6 - 5 + 4
  EXPECT_EQ(se(20, 2), 10);  // 6 - 0 + 4
  RelativePosition cl;
  cl.kind = Kind::kClamp;
  cl.window = 5;
  EXPECT_EQ(cl(10, 7), 3);
  EXPECT_EQ(cl(10, 5), 5);
  EXPECT_EQ(cl(10, 4), 5);
  EXPECT_EQ(cl(1000, 0), 5);
  RelativePosition ex;
  EXPECT_EQ(ex(1000, 1), 999);
}

TEST(RelativePositionTest, NonDecreasingInDistance) {
  // cpu::Attention sizes its tables from rel(t, kv_pos0): every kind must peak there.
  std::vector<RelativePosition> rels = {Stair(7, 3), Stair(1, 1)};
  RelativePosition r;
  r.kind = Kind::kClamp;
  r.window = 9;
  rels.push_back(r);
  r.kind = Kind::kSelfExtend;
  for (int64_t g : {1, 2, 3, 8}) {
    r.group = g;
    r.window = 10;
    rels.push_back(r);
  }
  for (const RelativePosition& rel : rels) {
    for (int64_t t = 0; t < 80; ++t) {
      for (int64_t i = t; i > 0; --i) EXPECT_LE(rel(t, i), rel(t, i - 1)) << t << " " << i;
    }
  }
}

struct Small {
  int64_t n = 12, n_head = 2, hd = 8;
  std::vector<float> q, k, v, slopes;
  std::vector<int64_t> pos;
  explicit Small(uint32_t seed, bool zero_q = false) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    q.resize(n * n_head * hd);
    k.resize(n_head * n * hd);
    v.resize(k.size());
    for (auto& x : q) x = zero_q ? 0.0f : d(rng);
    for (auto& x : k) x = d(rng);
    for (auto& x : v) x = d(rng);
    pos.resize(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = i;
    slopes = {0.5f, 0.125f};
  }
  AttentionParams Params(float* out) {
    AttentionParams p;
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.out = out;
    p.n_q = n;
    p.n_kv = n;
    p.kv_stride = n;
    p.q_pos = pos.data();
    p.n_head = n_head;
    p.n_head_kv = n_head;
    p.head_dim = hd;
    p.scale = 0.35f;
    p.alibi_slopes = slopes.data();
    p.rope.head_dim = hd;
    p.rope.rope_dims = hd;
    return p;
  }
};

TEST(AttentionRefTest, AlibiWithStairUsesWovenPosition) {
  // q = 0 leaves only the bias: weights are exp(-slope * R(d)), normalized.
  Small s(3, /*zero_q=*/true);
  std::vector<float> out(s.q.size());
  AttentionParams p = s.Params(out.data());
  p.mode = AttentionPositionMode::kAlibi;
  p.rel = Stair(3, 2);
  ref::Attention(p);
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t h = 0; h < s.n_head; ++h) {
      std::vector<double> want(s.hd, 0.0);
      double sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        const double w = std::exp(-static_cast<double>(s.slopes[h]) * p.rel(i, j));
        sum += w;
        for (int64_t d = 0; d < s.hd; ++d) want[d] += w * s.v[(h * s.n + j) * s.hd + d];
      }
      for (int64_t d = 0; d < s.hd; ++d) {
        EXPECT_NEAR(out[(i * s.n_head + h) * s.hd + d], want[d] / sum, 1e-6);
      }
    }
  }
}

TEST(AttentionRefTest, StairWithUnitStepEqualsExact) {
  // MESA_SPEC 5.2: E = 1 (or N beyond every distance) and log-n off is exact attention.
  Small s(4);
  for (AttentionPositionMode mode : {AttentionPositionMode::kRopeRaw,
                                     AttentionPositionMode::kAlibi}) {
    std::vector<float> exact(s.q.size()), stair(s.q.size());
    AttentionParams p = s.Params(exact.data());
    p.mode = mode;
    ref::Attention(p);
    for (auto [n, e] : {std::pair<int64_t, int64_t>{2, 1}, {100, 5}}) {
      p.out = stair.data();
      p.rel = Stair(n, e);
      ref::Attention(p);
      EXPECT_EQ(stair, exact);
    }
    p.rel = Stair(2, 3);  // and a real stair is not exact
    ref::Attention(p);
    EXPECT_NE(stair, exact);
  }
}

TEST(AttentionRefTest, RopeRawRotatesQueryByRelativePosition) {
  // One query, one key: the logit is irrelevant to the output (a single key gets
  // weight 1), so use two keys and compare the weight split with a hand computation.
  Small s(5);
  s.n = 2;
  s.n_head = 1;
  std::vector<float> out(s.hd);
  AttentionParams p = s.Params(out.data());
  p.n_q = 1;
  p.n_kv = 2;
  p.kv_stride = 2;
  const int64_t t = 40;
  p.q_pos = &t;
  p.kv_pos0 = 30;  // keys at 30 and 31, d = 10 and 9
  p.mode = AttentionPositionMode::kRopeRaw;
  p.rope.neox = true;
  p.rel.kind = Kind::kClamp;
  p.rel.window = 9;  // both keys at rel 9
  ref::Attention(p);
  std::vector<float> qr(s.q.begin(), s.q.begin() + s.hd);
  ref::Rope(p.rope, 9.0, 1, qr.data());
  double logit[2];
  for (int j = 0; j < 2; ++j) {
    logit[j] = 0;
    for (int64_t d = 0; d < s.hd; ++d) logit[j] += double(qr[d]) * s.k[j * s.hd + d];
    logit[j] *= p.scale;
  }
  const double w1 = 1.0 / (1.0 + std::exp(logit[0] - logit[1]));
  for (int64_t d = 0; d < s.hd; ++d) {
    EXPECT_NEAR(out[d], (1 - w1) * s.v[d] + w1 * s.v[s.hd + d], 1e-5);
  }
}

TEST(AttentionRefTest, LognScalesOnlyQueriesPastTrainLength) {
  EXPECT_EQ(LognFactor(5, 0), 1.0);
  EXPECT_EQ(LognFactor(15, 16), 1.0);
  EXPECT_DOUBLE_EQ(LognFactor(16, 16), std::log(17.0) / std::log(16.0));
  EXPECT_DOUBLE_EQ(LognFactor(1000, 16), std::log(1001.0) / std::log(16.0));
  // Query scaling equals attention with a query scaled by hand.
  Small s(6);
  std::vector<float> got(s.q.size()), want(s.q.size());
  AttentionParams p = s.Params(got.data());
  p.mode = AttentionPositionMode::kAlibi;
  p.logn_train_length = 4;
  ref::Attention(p);
  Small scaled(6);
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t x = 0; x < s.n_head * s.hd; ++x) {
      scaled.q[i * s.n_head * s.hd + x] =
          static_cast<float>(scaled.q[i * s.n_head * s.hd + x] * LognFactor(i, 4));
    }
  }
  AttentionParams ps = scaled.Params(want.data());
  ps.mode = AttentionPositionMode::kAlibi;
  ref::Attention(ps);
  for (size_t x = 0; x < got.size(); ++x) EXPECT_NEAR(got[x], want[x], 1e-5);
}

}  // namespace
}  // namespace mesa
