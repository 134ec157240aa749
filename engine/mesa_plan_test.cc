// Tests of the Mesa planner against MESA_SPEC.md section 1: the worked toy plan,
// the no-chunk rule, anchor shortening, margin and width cap, balanced middle chunks,
// auto-E (a property over a sweep of lengths) and rejection of bad options.
#include "engine/mesa_plan.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/toy_plan.h"

namespace mesa {
namespace {

using ::testing::HasSubstr;

using testing::ToyOptions;

void ExpectRange(const TokenRange& r, int64_t begin, int64_t end) {
  EXPECT_EQ(r.begin, begin);
  EXPECT_EQ(r.end, end);
}

// Structural invariants of every chunked plan.
void CheckCover(const MesaPlan& p) {
  ASSERT_TRUE(p.chunked);
  EXPECT_EQ(p.anchor.begin, 0);
  int64_t at = p.anchor.end;
  int64_t lo = INT64_MAX, hi = 0;
  for (const TokenRange& r : p.middle) {
    EXPECT_EQ(r.begin, at);
    EXPECT_GE(r.size(), 1);
    EXPECT_LE(r.size(), p.width_cap);
    lo = std::min(lo, r.size());
    hi = std::max(hi, r.size());
    at = r.end;
  }
  EXPECT_EQ(p.last.begin, at);
  EXPECT_EQ(p.last.end, p.n);
  EXPECT_GE(p.last.size(), 1);
  if (!p.middle.empty()) {
    EXPECT_LE(hi - lo, 1);
    EXPECT_LE(p.last.size(), lo) << "last chunk longer than a middle chunk";
    // The first (M mod k) chunks are the wider ones.
    for (size_t c = 1; c < p.middle.size(); ++c) EXPECT_LE(p.middle[c].size(), p.middle[c - 1].size());
  }
}

TEST(MesaPlanTest, WorkedToyPlan) {
  auto p = PlanMesa(60, 0, 32, ToyOptions());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->chunked);
  ExpectRange(p->anchor, 0, 4);
  ASSERT_EQ(p->middle.size(), 2u);
  ExpectRange(p->middle[0], 4, 28);
  ExpectRange(p->middle[1], 28, 52);
  ExpectRange(p->last, 52, 60);
  EXPECT_EQ(p->width_cap, 28);
  EXPECT_EQ(p->last_target, 8);
  EXPECT_EQ(p->stair_n, 16);
  EXPECT_EQ(p->stair_e, 3);
  EXPECT_THAT(::testing::PrintToString(p->notes), HasSubstr("E raised from 2 to 3"));
  // Section 5 item 5: relative positions seen by the last query t = 59.
  const int64_t t = 59;
  EXPECT_EQ(StairPosition(t - 0, p->stair_n, p->stair_e), 30);
  EXPECT_EQ(StairPosition(t - 1, p->stair_n, p->stair_e), 30);
  for (int64_t i = 44; i <= 59; ++i) EXPECT_EQ(StairPosition(t - i, p->stair_n, p->stair_e), t - i);
  for (int64_t i = 41; i <= 43; ++i) EXPECT_EQ(StairPosition(t - i, p->stair_n, p->stair_e), 16);
  CheckCover(*p);
}

TEST(MesaPlanTest, StairPositionMatchesFigureOne) {
  const int64_t want[] = {0, 1, 2, 3, 4, 4, 5, 5, 6, 6};
  for (int64_t d = 0; d < 10; ++d) EXPECT_EQ(StairPosition(d, 4, 2), want[d]) << d;
}

TEST(MesaPlanTest, NoChunkingWhenItFits) {
  MesaOptions o;
  for (auto [n, max_new] : {std::pair<int64_t, int64_t>{1, 0}, {512, 0}, {500, 12}, {1, 511}}) {
    auto p = PlanMesa(n, max_new, 512, o);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_FALSE(p->chunked) << n << "+" << max_new;
    EXPECT_TRUE(p->middle.empty());
    ExpectRange(p->last, 0, n);
    EXPECT_EQ(p->stair_e, 50);
  }
  auto p = PlanMesa(500, 13, 512, o);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->chunked);
  // N >= T is only an error when chunking.
  o.stair_n = 600;
  EXPECT_TRUE(PlanMesa(100, 0, 512, o).ok());
  auto bad = PlanMesa(1000, 0, 512, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("600"));
}

TEST(MesaPlanTest, TrainLengthOptionOverridesModel) {
  MesaOptions o;
  o.train_length = 256;
  auto p = PlanMesa(300, 0, 512, o);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->chunked);
  EXPECT_EQ(p->train_length, 256);
  EXPECT_EQ(p->stair_n, 128);
  EXPECT_FALSE(PlanMesa(10, 0, 0, MesaOptions{}).ok());  // T unknown
}

TEST(MesaPlanTest, DefaultN) {
  EXPECT_EQ(PlanMesa(5000, 0, 4096, MesaOptions{})->stair_n, 512);
  EXPECT_EQ(PlanMesa(5000, 0, 512, MesaOptions{})->stair_n, 256);
  EXPECT_EQ(PlanMesa(5000, 0, 511, MesaOptions{})->stair_n, 255);
}

TEST(MesaPlanTest, AnchorShortenedToNMinusOne) {
  MesaOptions o = ToyOptions();
  o.anchor = 100;
  auto p = PlanMesa(20, 40, 32, o);  // 20 + 40 > 32: chunked, but F >= n
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->chunked);
  ExpectRange(p->anchor, 0, 19);
  EXPECT_TRUE(p->middle.empty());
  ExpectRange(p->last, 19, 20);
  EXPECT_THAT(::testing::PrintToString(p->notes), HasSubstr("anchor shortened from 100 to 19"));
  // n = 1: an empty anchor and a one-token last chunk.
  auto one = PlanMesa(1, 100, 32, o);
  ASSERT_TRUE(one.ok()) << one.status();
  ExpectRange(one->anchor, 0, 0);
  ExpectRange(one->last, 0, 1);
}

TEST(MesaPlanTest, MarginLowersWidthCap) {
  MesaOptions o = ToyOptions();
  o.margin = 6;  // W_cap = 32 - 4 - 6 = 22
  auto p = PlanMesa(60, 0, 32, o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->width_cap, 22);
  // k = ceil((60 - 4 - 8) / 22) = 3; last = min(8, 56 / 4) = 8; M = 48 -> 16, 16, 16.
  ASSERT_EQ(p->middle.size(), 3u);
  ExpectRange(p->middle[0], 4, 20);
  ExpectRange(p->middle[2], 36, 52);
  ExpectRange(p->last, 52, 60);
  CheckCover(*p);
}

TEST(MesaPlanTest, MaxChunkCapsWidthAndLastTarget) {
  MesaOptions o = ToyOptions();
  o.max_chunk = 5;  // W_cap 28 -> 5; L_eff = min(8, 5) = 5
  auto p = PlanMesa(60, 0, 32, o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->width_cap, 5);
  EXPECT_EQ(p->last_target, 5);
  // k = ceil((60 - 4 - 5) / 5) = 11; last = min(5, 56 / 12 = 4) = 4; M = 52 -> 8 x 5, 3 x 4.
  ASSERT_EQ(p->middle.size(), 11u);
  EXPECT_EQ(p->last.size(), 4);
  for (int c = 0; c < 8; ++c) EXPECT_EQ(p->middle[c].size(), 5) << c;
  for (int c = 8; c < 11; ++c) EXPECT_EQ(p->middle[c].size(), 4) << c;
  const std::string notes = ::testing::PrintToString(p->notes);
  EXPECT_THAT(notes, HasSubstr("capped at 5"));
  EXPECT_THAT(notes, HasSubstr("last-chunk target lowered from 8 to 5"));
  EXPECT_THAT(notes, HasSubstr("last chunk shortened from 5 to 4"));
  CheckCover(*p);
  // A cap above the natural width changes nothing.
  o.max_chunk = 1000;
  auto q = PlanMesa(60, 0, 32, o);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->width_cap, 28);
}

TEST(MesaPlanTest, WidthCapBelowOneIsAnErrorNamingTheNumbers) {
  MesaOptions o = ToyOptions();
  o.anchor = 20;
  o.margin = 12;  // 32 - 20 - 12 = 0
  auto p = PlanMesa(60, 0, 32, o);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("32 - 20 - 12 = 0"));
  o.margin = 11;
  EXPECT_TRUE(PlanMesa(60, 0, 32, o).ok());
}

TEST(MesaPlanTest, BalancedChunksOverASweep) {
  for (int64_t t : {32, 64, 512}) {
    for (int64_t f : {0, 1, 4, 10}) {
      for (int64_t l : {1, 3, 8, 512}) {
        for (int64_t cap : {0, 7}) {
          MesaOptions o;
          o.anchor = f;
          o.last_chunk = l;
          o.margin = 2;
          o.max_chunk = cap;
          for (int64_t n = t - 5; n < 6 * t; n += 7) {
            auto p = PlanMesa(n, 3, t, o);
            ASSERT_TRUE(p.ok()) << p.status();
            if (!p->chunked) {
              EXPECT_LE(n + 3, t);
              continue;
            }
            SCOPED_TRACE(PlanToText(*p));
            CheckCover(*p);
            // k is as the spec says.
            const int64_t fa = p->anchor.end;
            const int64_t want_k = std::max<int64_t>(
                0, (n - fa - p->last_target + p->width_cap - 1) / p->width_cap);
            EXPECT_EQ(static_cast<int64_t>(p->middle.size()), want_k);
            if (want_k == 0) ExpectRange(p->last, fa, n);
          }
        }
      }
    }
  }
}

TEST(MesaPlanTest, AutoEIsMinimalAndKeepsPositionsInRange) {
  for (int64_t t : {32, 100, 512}) {
    for (int64_t e0 : {1, 2, 50}) {
      MesaOptions o;
      o.anchor = 4;
      o.margin = 0;
      o.last_chunk = 8;
      o.stair_e = e0;
      for (int64_t n = 1; n < 40 * t; n += 13) {
        for (int64_t max_new : {0, 5, 200}) {
          auto p = PlanMesa(n, max_new, t, o);
          ASSERT_TRUE(p.ok()) << p.status();
          const int64_t d_max = n + max_new - 1;
          const int64_t nn = p->stair_n;
          EXPECT_LE(StairPosition(d_max, nn, p->stair_e), t - 1) << n << " " << max_new;
          EXPECT_GE(p->stair_e, e0);
          if (p->stair_e > e0) {  // raised: the one below it must fail
            EXPECT_GT(StairPosition(d_max, nn, p->stair_e - 1), t - 1) << n << " " << max_new;
            EXPECT_EQ(p->stair_e, (d_max - nn) / (t - nn) + 1);
          }
        }
      }
    }
  }
}

TEST(MesaPlanTest, RejectsInvalidOptions) {
  struct Case {
    const char* field;
    void (*set)(MesaOptions&);
  };
  const Case cases[] = {
      {"anchor", [](MesaOptions& o) { o.anchor = -1; }},
      {"last_chunk", [](MesaOptions& o) { o.last_chunk = 0; }},
      {"margin", [](MesaOptions& o) { o.margin = -3; }},
      {"max_chunk", [](MesaOptions& o) { o.max_chunk = -1; }},
      {"stair_n", [](MesaOptions& o) { o.stair_n = -2; }},
      {"stair_e", [](MesaOptions& o) { o.stair_e = 0; }},
      {"train_length", [](MesaOptions& o) { o.train_length = -5; }},
  };
  for (const Case& c : cases) {
    MesaOptions o;
    c.set(o);
    auto p = PlanMesa(1000, 0, 512, o);
    ASSERT_FALSE(p.ok()) << c.field;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(p.status().message(), HasSubstr(c.field));
  }
  EXPECT_THAT(PlanMesa(0, 0, 512, MesaOptions{}).status().message(), HasSubstr("empty"));
  EXPECT_THAT(PlanMesa(10, -1, 512, MesaOptions{}).status().message(), HasSubstr("max_new_tokens"));
}

TEST(MesaPlanTest, JsonAndText) {
  auto p = PlanMesa(60, 0, 32, ToyOptions());
  ASSERT_TRUE(p.ok());
  nlohmann::json j = PlanToJson(*p);
  EXPECT_EQ(j["anchor"], nlohmann::json::array({0, 4}));
  EXPECT_EQ(j["middle"], nlohmann::json::parse("[[4,28],[28,52]]"));
  EXPECT_EQ(j["last"], nlohmann::json::array({52, 60}));
  EXPECT_EQ(j["stair_e"], 3);
  EXPECT_EQ(j["chunked"], true);
  EXPECT_EQ(j["notes"].size(), 1u);
  const std::string text = PlanToText(*p);
  EXPECT_THAT(text, HasSubstr("anchor:  [0, 4)  4 tokens"));
  EXPECT_THAT(text, HasSubstr("[28, 52)  24 tokens"));
  EXPECT_THAT(text, HasSubstr("last:    [52, 60)  8 tokens"));
  EXPECT_THAT(text, HasSubstr("N = 16, E = 3"));
  // Long chunk lists are elided in text.
  MesaOptions o = ToyOptions();
  o.max_chunk = 1;
  auto many = PlanMesa(200, 0, 32, o);
  ASSERT_TRUE(many.ok()) << many.status();
  EXPECT_THAT(PlanToText(*many), HasSubstr("more)"));
}

// Found by fuzz/rpc_fuzzer.cc: a job line's "max_tokens": 9223372036854775807 reached
// the planner, whose n + max_new_tokens overflowed (UBSan), and a chunk task's hostile
// prompt_length planned a chunk list that could not be allocated.
TEST(MesaPlanTest, HostileLengthsAreRefusedNotOverflowedOrAllocated) {
  MesaOptions o;
  auto r = PlanMesa(3001, INT64_MAX, 512, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("max_new_tokens"));
  EXPECT_FALSE(PlanMesa(INT64_MAX, 0, 512, o).ok());
  EXPECT_FALSE(PlanMesa(100, 0, INT64_MAX, o).ok());
  for (int64_t MesaOptions::*field : {&MesaOptions::anchor, &MesaOptions::last_chunk, &MesaOptions::margin,
                                      &MesaOptions::max_chunk, &MesaOptions::stair_n, &MesaOptions::stair_e,
                                      &MesaOptions::train_length}) {
    MesaOptions big;
    big.*field = INT64_MAX;
    EXPECT_EQ(PlanMesa(3001, 16, 512, big).status().code(), absl::StatusCode::kInvalidArgument);
  }
  // At the limits: accepted, arithmetic exact.
  auto edge = PlanMesa(kMaxPlanTokens, kMaxPlanTokens, 512, o);
  EXPECT_FALSE(edge.ok());  // T = 512 chunks 2^40 tokens into more than kMaxMiddleChunks
  EXPECT_THAT(edge.status().message(), HasSubstr("middle chunks"));
  MesaOptions wide;
  wide.train_length = kMaxPlanTokens;
  auto fits = PlanMesa(kMaxPlanTokens / 2, kMaxPlanTokens / 2, 512, wide);
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_FALSE(fits->chunked);
  // A 1-token width cap over a long prompt: refused before a million-entry plan.
  MesaOptions narrow;
  narrow.max_chunk = 1;
  auto many = PlanMesa(kMaxMiddleChunks + 1000, 0, 512, narrow);
  EXPECT_EQ(many.status().code(), absl::StatusCode::kInvalidArgument);
  auto ok = PlanMesa(kMaxMiddleChunks / 2, 0, 512, narrow);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_GT(static_cast<int64_t>(ok->middle.size()), kMaxMiddleChunks / 4);
}

}  // namespace
}  // namespace mesa
