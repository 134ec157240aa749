// kernels/attention_variant.h: the run form and the far-region split that the CPU
// kernel (and the CUDA kernels) use instead of rel(t, i) per pair give exactly
// operator()'s values over many (t, i, kind) cases; the definitions are constexpr.
#include "kernels/attention_variant.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace mesa {
namespace {

using Kind = RelativePosition::Kind;

constexpr RelativePosition Make(Kind kind, int64_t n, int64_t e, int64_t window, int64_t group) {
  RelativePosition r;
  r.kind = kind;
  r.n = n;
  r.e = e;
  r.window = window;
  r.group = group;
  return r;
}

// Usable in constant expressions (so in device code under nvcc as well).
static_assert(StairPosition(9, 4, 2) == 6);
static_assert(Make(Kind::kStair, 4, 2, 0, 1)(9, 0) == 6);
static_assert(Make(Kind::kClamp, 0, 1, 5, 1)(100, 3) == 5);
static_assert(Make(Kind::kSelfExtend, 0, 1, 4, 2)(10, 0) == 10 / 2 - 0 + 4 - 4 / 2);
static_assert(Make(Kind::kExact, 0, 1, 0, 1)(7, 2) == 5);

std::string Describe(const RelativePosition& r) {
  static const char* kKinds[] = {"exact", "stair", "clamp", "self_extend"};
  return std::string(kKinds[static_cast<int>(r.kind)]) + " n=" + std::to_string(r.n) +
         " e=" + std::to_string(r.e) + " window=" + std::to_string(r.window) +
         " group=" + std::to_string(r.group);
}

std::vector<RelativePosition> Settings() {
  std::vector<RelativePosition> out = {Make(Kind::kExact, 0, 1, 0, 1)};
  for (int64_t n : {0, 1, 3, 16, 90}) {
    for (int64_t e : {1, 2, 3, 17, 1000}) out.push_back(Make(Kind::kStair, n, e, 0, 1));
  }
  for (int64_t window : {0, 1, 7, 100}) out.push_back(Make(Kind::kClamp, 0, 1, window, 1));
  for (int64_t window : {0, 1, 6, 80}) {
    for (int64_t group : {1, 2, 3, 4, 16}) {
      out.push_back(Make(Kind::kSelfExtend, 0, 1, window, group));
    }
  }
  return out;
}

// Query positions: every one up to 260 (all the small-position corners), then a sample
// of large ones (long documents).
std::vector<int64_t> QueryPositions() {
  std::vector<int64_t> out;
  for (int64_t t = 0; t <= 260; ++t) out.push_back(t);
  std::mt19937_64 rng(7);
  for (int k = 0; k < 12; ++k) out.push_back(1000 + static_cast<int64_t>(rng() % 2000000));
  return out;
}

// Walking keys 0..t in runs, as the kernels do, gives rel(t, i) for every key, and each
// run stays inside 0..t.
TEST(AttentionVariantTest, RunsGiveRelForEveryKey) {
  int64_t pairs = 0;
  for (const RelativePosition& r : Settings()) {
    for (int64_t t : QueryPositions()) {
      const int64_t tg = r.kind == Kind::kSelfExtend ? t / r.group : t;
      // Large t: only the keys near both ends and a stretch in the middle.
      const int64_t stride = t > 300 ? t / 3 : t + 1;
      for (int64_t start = 0; start <= t; start += stride) {
        const int64_t stop = t > 300 ? std::min(t + 1, start + 300) : t + 1;
        for (int64_t i = start; i < stop;) {
          int64_t len = -1;
          const int64_t rel = r.Run(t, tg, i, &len);
          ASSERT_GE(len, 1) << Describe(r) << " t=" << t << " i=" << i;
          ASSERT_LE(i + len - 1, t) << Describe(r) << " t=" << t << " i=" << i;
          for (int64_t k = i; k < i + len && k < stop; ++k, ++pairs) {
            ASSERT_EQ(rel, r(t, k)) << Describe(r) << " t=" << t << " run from " << i
                                    << " len " << len << " key " << k;
          }
          i += len;
        }
      }
    }
  }
  EXPECT_GT(pairs, 1000000);
}

// Runs are as long as the values allow for the kinds whose runs are levels (exact,
// stair, clamp): the next key after a run has another rel.
TEST(AttentionVariantTest, RunsAreMaximalForStairAndClamp) {
  for (const RelativePosition& r : Settings()) {
    if (r.kind == Kind::kSelfExtend) continue;  // a group may end on the same rel
    for (int64_t t = 0; t <= 200; ++t) {
      for (int64_t i = 0; i <= t; ++i) {
        int64_t len = 0;
        const int64_t rel = r.Run(t, t, i, &len);
        if (i + len <= t) {
          ASSERT_NE(r(t, i + len), rel) << Describe(r) << " t=" << t << " i=" << i;
        }
      }
    }
  }
}

// The far-region split: rel(t, i) = FarQuery(t) - FarKey(i) - [phase(t) < phase(i)] for
// every pair with d >= FarFrom().
TEST(AttentionVariantTest, FarSplitEqualsRel) {
  int64_t pairs = 0;
  for (const RelativePosition& r : Settings()) {
    for (int64_t t : QueryPositions()) {
      const int64_t last = t - r.FarFrom();  // keys 0..last are far
      const int64_t stride = last > 300 ? last / 3 : last + 1;
      for (int64_t start = 0; start <= last; start += std::max<int64_t>(1, stride)) {
        const int64_t stop = last > 300 ? std::min(last + 1, start + 300) : last + 1;
        for (int64_t i = start; i < stop; ++i, ++pairs) {
          const int64_t borrow = r.FarQueryPhase(t) < r.FarKeyPhase(i) ? 1 : 0;
          ASSERT_EQ(r.FarQuery(t) - r.FarKey(i) - borrow, r(t, i))
              << Describe(r) << " t=" << t << " i=" << i;
        }
      }
    }
  }
  EXPECT_GT(pairs, 500000);
}

// Below FarFrom() every kind is plain distance (the kernels' exact windows).
TEST(AttentionVariantTest, NearRegionIsDistance) {
  for (const RelativePosition& r : Settings()) {
    for (int64_t t = 0; t <= 300; ++t) {
      for (int64_t i = std::max<int64_t>(0, t - r.FarFrom() + 1); i <= t; ++i) {
        ASSERT_EQ(r(t, i), t - i) << Describe(r) << " t=" << t << " i=" << i;
      }
    }
  }
}

TEST(AttentionVariantTest, StairPositionMatchesPaperFigure) {
  const int64_t want[] = {0, 1, 2, 3, 4, 4, 5, 5, 6, 6};
  for (int64_t d = 0; d < 10; ++d) EXPECT_EQ(StairPosition(d, 4, 2), want[d]) << d;
}

TEST(AttentionVariantTest, LognFactor) {
  EXPECT_EQ(LognFactor(5, 0), 1.0);
  EXPECT_EQ(LognFactor(0, 512), 1.0);
  EXPECT_EQ(LognFactor(511, 512), 1.0);
  EXPECT_EQ(LognFactor(100, 1), 1.0);  // T = 1: off (ln 1 = 0)
  EXPECT_DOUBLE_EQ(LognFactor(512, 512), std::log(513.0) / std::log(512.0));
  EXPECT_DOUBLE_EQ(LognFactor(4095, 512), std::log(4096.0) / std::log(512.0));
  for (int64_t t = 2; t < 5000; t += 7) EXPECT_GE(LognFactor(t, 2), 1.0) << t;
}

}  // namespace
}  // namespace mesa
