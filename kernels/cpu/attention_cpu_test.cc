// cpu::Attention against ref::Attention: random q/k/v, odd sizes, grouped-query heads,
// causal offsets (queries after a cached prefix), ALiBi, several thread counts.
#include <cmath>
#include <random>
#include <vector>

#include "common/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"

namespace mesa {
namespace {

struct Case {
  int64_t n_q, n_past, n_head, n_head_kv, head_dim, slack;
  bool alibi;
};

void RunCase(const Case& c, int threads) {
  std::mt19937 rng(static_cast<uint32_t>(c.n_q * 131 + c.n_past * 7 + c.head_dim + threads));
  std::normal_distribution<float> d(0.0f, 1.0f);
  const int64_t n_kv = c.n_past + c.n_q;
  const int64_t stride = n_kv + c.slack;
  std::vector<float> q(c.n_q * c.n_head * c.head_dim), k(c.n_head_kv * stride * c.head_dim),
      v(k.size());
  for (auto& x : q) x = d(rng);
  for (auto& x : k) x = d(rng);
  for (auto& x : v) x = d(rng);
  std::vector<int64_t> pos(c.n_q);
  for (int64_t i = 0; i < c.n_q; ++i) pos[i] = c.n_past + i;
  std::vector<float> slopes(c.n_head);
  AlibiSlopes(c.n_head, 8.0f, slopes.data());
  AttentionParams p;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.n_q = c.n_q;
  p.n_kv = n_kv;
  p.kv_stride = stride;
  p.kv_pos0 = 0;
  p.q_pos = pos.data();
  p.n_head = c.n_head;
  p.n_head_kv = c.n_head_kv;
  p.head_dim = c.head_dim;
  p.scale = 1.0f / std::sqrt(float(c.head_dim));
  p.mode = c.alibi ? AttentionPositionMode::kAlibi : AttentionPositionMode::kNone;
  p.alibi_slopes = slopes.data();
  std::vector<float> got(q.size(), NAN), want(q.size(), NAN);
  p.out = want.data();
  ref::Attention(p);
  p.out = got.data();
  ThreadPool pool(threads);
  cpu::Attention(p, pool);
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << "unwritten output " << i;
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-5)
      << "n_q=" << c.n_q << " past=" << c.n_past << " heads=" << c.n_head << "/" << c.n_head_kv
      << " dim=" << c.head_dim << " alibi=" << c.alibi;
}

TEST(AttentionTest, CpuMatchesReference) {
  const Case cases[] = {
      {1, 0, 1, 1, 8, 0, false},   {1, 9, 4, 2, 16, 3, false},   {7, 0, 8, 4, 64, 0, false},
      {5, 13, 6, 3, 20, 5, false}, {33, 2, 4, 1, 128, 1, false}, {3, 4, 8, 8, 64, 0, true},
      {17, 0, 12, 4, 64, 7, true}, {1, 40, 5, 5, 24, 0, true},
  };
  for (const Case& c : cases) {
    for (int threads : {1, 3}) RunCase(c, threads);
  }
}

TEST(AttentionTest, AlibiSlopesForPowerOfTwoAndOtherHeadCounts) {
  std::vector<float> s(8);
  AlibiSlopes(8, 8.0f, s.data());
  for (int h = 0; h < 8; ++h) EXPECT_FLOAT_EQ(s[h], std::pow(2.0f, -(h + 1.0f)));
  std::vector<float> s12(12);
  AlibiSlopes(12, 8.0f, s12.data());
  for (int h = 0; h < 8; ++h) EXPECT_FLOAT_EQ(s12[h], s[h]);
  EXPECT_FLOAT_EQ(s12[8], std::pow(2.0f, -0.5f));
  EXPECT_FLOAT_EQ(s12[9], std::pow(2.0f, -1.5f));
}

}  // namespace
}  // namespace mesa
