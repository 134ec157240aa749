// cpu::Attention against ref::Attention on random data: every position mode x every
// relative-position kind x log-n on/off, odd sizes and tails (queries, keys, head
// dims off the vector width), grouped-query heads, both RoPE styles and partial
// rotary dims, decode-shaped calls that split keys across threads, a long prefill,
// and thread counts 1 and 3. Outputs start NaN-poisoned so an unwritten row fails.
// Every test runs once per ISA variant of the kernel this machine can execute
// (AVX-512, AVX2, portable), forced through attn_internal::OverrideIsa.
#include <cmath>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cpu/attention_cpu_internal.h"
#include "kernels/cpu/matmul_cpu_internal.h"
#include "kernels/nn.h"

namespace mesa::cpu::internal {
// Test names and ctest listings show the ISA by name.
static void PrintTo(Isa isa, std::ostream* os) { *os << IsaName(isa); }
}  // namespace mesa::cpu::internal

namespace mesa {
namespace {

using Kind = RelativePosition::Kind;
using cpu::internal::Isa;

// Runs the test body with attention forced to GetParam(); skips ISAs this CPU lacks.
class AttentionTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!cpu::internal::IsaSupported(GetParam())) {
      GTEST_SKIP() << cpu::internal::IsaName(GetParam()) << " not supported here";
    }
    cpu::attn_internal::OverrideIsa(static_cast<int>(GetParam()));
    ASSERT_EQ(cpu::attn_internal::ActiveIsa(), GetParam());
  }
  void TearDown() override { cpu::attn_internal::OverrideIsa(-1); }
};

struct Shape {
  int64_t n_q, n_past, n_head, n_head_kv, head_dim, slack, kv_pos0;
};

// One random attention problem; params() points into the owned buffers.
class Problem {
 public:
  Problem(const Shape& s, uint32_t seed) : s_(s) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    n_kv_ = s.n_past + s.n_q;
    stride_ = n_kv_ + s.slack;
    q_.resize(s.n_q * s.n_head * s.head_dim);
    k_.resize(s.n_head_kv * stride_ * s.head_dim);
    v_.resize(k_.size());
    for (auto& x : q_) x = d(rng);
    for (auto& x : k_) x = d(rng);
    for (auto& x : v_) x = d(rng);
    pos_.resize(s.n_q);
    for (int64_t i = 0; i < s.n_q; ++i) pos_[i] = s.kv_pos0 + s.n_past + i;
    slopes_.resize(s.n_head);
    AlibiSlopes(s.n_head, 8.0f, slopes_.data());
  }

  AttentionParams params() {
    AttentionParams p;
    p.q = q_.data();
    p.k = k_.data();
    p.v = v_.data();
    p.n_q = s_.n_q;
    p.n_kv = n_kv_;
    p.kv_stride = stride_;
    p.kv_pos0 = s_.kv_pos0;
    p.q_pos = pos_.data();
    p.n_head = s_.n_head;
    p.n_head_kv = s_.n_head_kv;
    p.head_dim = s_.head_dim;
    p.scale = 1.0f / std::sqrt(static_cast<float>(s_.head_dim));
    p.alibi_slopes = slopes_.data();
    p.rope.head_dim = s_.head_dim;
    p.rope.rope_dims = s_.head_dim;
    return p;
  }
  std::vector<float>& q() { return q_; }
  std::vector<float>& k() { return k_; }
  std::vector<int64_t>& pos() { return pos_; }
  size_t out_size() const { return q_.size(); }

 private:
  Shape s_;
  int64_t n_kv_, stride_;
  std::vector<float> q_, k_, v_, slopes_;
  std::vector<int64_t> pos_;
};

// ||got - want|| / ||want||, failing on any NaN (an unwritten output).
double RelErr(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) || std::isnan(want[i])) return INFINITY;
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::vector<float> RunRef(AttentionParams p, size_t n) {
  std::vector<float> out(n, NAN);
  p.out = out.data();
  ref::Attention(p);
  return out;
}

std::vector<float> RunCpu(AttentionParams p, size_t n, int threads) {
  std::vector<float> out(n, NAN);
  p.out = out.data();
  ThreadPool pool(threads);
  cpu::Attention(p, pool);
  return out;
}

std::string Describe(const AttentionParams& p) {
  static const char* kModes[] = {"none", "alibi", "rope_raw"};
  static const char* kKinds[] = {"exact", "stair", "clamp", "self_extend"};
  return std::string("mode=") + kModes[static_cast<int>(p.mode)] +
         " rel=" + kKinds[static_cast<int>(p.rel.kind)] + " n=" + std::to_string(p.rel.n) +
         " e=" + std::to_string(p.rel.e) + " window=" + std::to_string(p.rel.window) +
         " group=" + std::to_string(p.rel.group) +
         " logn=" + std::to_string(p.logn_train_length) + " n_q=" + std::to_string(p.n_q) +
         " n_kv=" + std::to_string(p.n_kv) + " heads=" + std::to_string(p.n_head) + "/" +
         std::to_string(p.n_head_kv) + " dim=" + std::to_string(p.head_dim) +
         " rope_dims=" + std::to_string(p.rope.rope_dims) + " neox=" + std::to_string(p.rope.neox);
}

// Relative-position settings per kind: small ones put most pairs in the far region
// (woven / clamped / grouped), large ones keep whole tiles in the exact window.
std::vector<RelativePosition> RelSettings() {
  std::vector<RelativePosition> out;
  auto add = [&](Kind kind, int64_t n, int64_t e, int64_t window, int64_t group) {
    RelativePosition r;
    r.kind = kind;
    r.n = n;
    r.e = e;
    r.window = window;
    r.group = group;
    out.push_back(r);
  };
  add(Kind::kExact, 0, 1, 0, 1);
  add(Kind::kStair, 5, 3, 0, 1);
  add(Kind::kStair, 90, 17, 0, 1);
  add(Kind::kClamp, 0, 1, 7, 1);
  add(Kind::kClamp, 0, 1, 100, 1);
  add(Kind::kSelfExtend, 0, 1, 6, 3);
  add(Kind::kSelfExtend, 0, 1, 80, 4);
  return out;
}

TEST_P(AttentionTest, CpuMatchesReferenceEveryVariant) {
  const Shape shapes[] = {
      // n_q, n_past, heads, kv heads, dim, slack, kv_pos0
      {37, 150, 4, 2, 40, 3, 5},  // blocks with tails, padded dim, far tiles, GQA
      {2, 190, 3, 3, 64, 0, 0},   // decode-like: per-key dot path
      {70, 0, 2, 1, 16, 1, 0},    // prefill from zero, several query blocks
      {1, 1500, 2, 1, 32, 0, 9},  // decode over a long cache: keys split across threads
      // Register-tile tails of every variant (16 / 8 / 4 lanes, 6- to 16-wide tiles):
      {5, 77, 8, 2, 20, 1, 0},    // 20 rows per unit (2.5 AVX2 vectors), dim 20
      {3, 101, 12, 3, 12, 0, 2},  // 12 rows, dim 12, GQA 4
      {1, 300, 8, 1, 8, 0, 0},    // decode with GQA 8: the block path at 8 rows, dim 8
      {2, 131, 6, 2, 80, 2, 1},   // decode rows 6, dim 80 (5 x 16, 10 x 8)
      {9, 66, 4, 1, 72, 0, 0},    // 36 rows: two units, the second with 4 rows, dim 72
  };
  const AttentionPositionMode modes[] = {AttentionPositionMode::kNone,
                                         AttentionPositionMode::kAlibi,
                                         AttentionPositionMode::kRopeRaw};
  uint32_t seed = 1;
  for (const Shape& shape : shapes) {
    Problem prob(shape, seed++);
    for (AttentionPositionMode mode : modes) {
      for (const RelativePosition& rel : RelSettings()) {
        for (int64_t logn : {int64_t{0}, int64_t{20}}) {
          // Rope variants: style x full or partial rotary dims.
          const int rope_variants = mode == AttentionPositionMode::kRopeRaw ? 4 : 1;
          for (int rv = 0; rv < rope_variants; ++rv) {
            AttentionParams p = prob.params();
            p.mode = mode;
            p.rel = rel;
            p.logn_train_length = logn;
            p.rope.neox = (rv & 1) != 0;
            if (rv & 2) p.rope.rope_dims = shape.head_dim / 2 - (shape.head_dim / 2) % 2;
            p.rope.freq_base = rv & 2 ? 500.0f : 10000.0f;
            const std::vector<float> want = RunRef(p, prob.out_size());
            for (int threads : {1, 3}) {
              const std::vector<float> got = RunCpu(p, prob.out_size(), threads);
              ASSERT_LT(RelErr(got, want), 1e-5) << Describe(p) << " threads=" << threads;
            }
          }
        }
      }
    }
  }
}

// Units of 128 rows (attn_internal::BlockRows: K/V per kv head past about 1 MiB):
// several blocks with a tail, the causal diagonal inside large blocks, and split units
// whose partial states merge over 128-row blocks.
TEST_P(AttentionTest, LargeRowBlocksMatchReference) {
  const Shape shapes[] = {
      // n_q, n_past, heads, kv heads, dim, slack, kv_pos0
      {150, 1950, 4, 1, 128, 0, 0},  // 600 rows: four 128-row blocks and an 88-row tail
      {20, 2100, 8, 2, 64, 1, 3},    // 80 rows per kv head: too few units, keys split
  };
  uint32_t seed = 300;
  for (const Shape& shape : shapes) {
    Problem prob(shape, seed++);
    AttentionParams base = prob.params();
    ASSERT_EQ(cpu::attn_internal::BlockRows(base, shape.n_head / shape.n_head_kv), cpu::attn_internal::kQb)
        << Describe(base);
    RelativePosition stair;
    stair.kind = Kind::kStair;
    stair.n = 90;
    stair.e = 17;
    const std::pair<AttentionPositionMode, RelativePosition> cases[] = {
        {AttentionPositionMode::kNone, RelativePosition{}},
        {AttentionPositionMode::kRopeRaw, stair},
        {AttentionPositionMode::kAlibi, RelativePosition{}},
    };
    for (const auto& [mode, rel] : cases) {
      AttentionParams p = base;
      p.mode = mode;
      p.rel = rel;
      const std::vector<float> want = RunRef(p, prob.out_size());
      for (int threads : {1, 3}) {
        const std::vector<float> got = RunCpu(p, prob.out_size(), threads);
        ASSERT_LT(RelErr(got, want), 1e-5) << Describe(p) << " threads=" << threads;
      }
    }
  }
}

// Ordinary RoPE attention two ways: raw q/k with kRopeRaw + kExact, and q/k rotated at
// their own positions beforehand with kNone. Proves the raw-key path.
TEST_P(AttentionTest, RopeRawExactEqualsPrerotatedKeys) {
  const Shape shape = {45, 100, 4, 2, 48, 2, 3};
  for (bool neox : {false, true}) {
    for (int64_t rope_dims : {int64_t{48}, int64_t{32}}) {
      Problem raw(shape, 77);
      AttentionParams p = raw.params();
      p.mode = AttentionPositionMode::kRopeRaw;
      p.rope.neox = neox;
      p.rope.rope_dims = rope_dims;
      p.rope.freq_scale = 0.5f;
      Problem rotated(shape, 77);
      AttentionParams pr = rotated.params();
      for (int64_t i = 0; i < shape.n_q; ++i) {
        ref::Rope(p.rope, static_cast<double>(raw.pos()[i]), shape.n_head,
                  rotated.q().data() + i * shape.n_head * shape.head_dim);
      }
      for (int64_t h = 0; h < shape.n_head_kv; ++h) {
        for (int64_t j = 0; j < pr.n_kv; ++j) {
          ref::Rope(p.rope, static_cast<double>(shape.kv_pos0 + j), 1,
                    rotated.k().data() + (h * pr.kv_stride + j) * shape.head_dim);
        }
      }
      const std::vector<float> want = RunRef(pr, raw.out_size());
      EXPECT_LT(RelErr(RunRef(p, raw.out_size()), want), 1e-5) << "ref neox=" << neox;
      for (int threads : {1, 3}) {
        EXPECT_LT(RelErr(RunCpu(p, raw.out_size(), threads), want), 1e-5)
            << "cpu neox=" << neox << " rope_dims=" << rope_dims;
        EXPECT_LT(RelErr(RunCpu(pr, raw.out_size(), threads), want), 1e-5);
      }
    }
  }
}

// MESA_SPEC 5.2 on the fast kernel: Stair PE with E = 1 (any N), or with N beyond
// every distance, and log-n off, is ordinary attention.
TEST_P(AttentionTest, StairWithUnitStepIsExactAttention) {
  const Shape shape = {40, 90, 4, 4, 32, 0, 0};
  Problem prob(shape, 5);
  for (AttentionPositionMode mode :
       {AttentionPositionMode::kRopeRaw, AttentionPositionMode::kAlibi}) {
    AttentionParams exact = prob.params();
    exact.mode = mode;
    const std::vector<float> want = RunRef(exact, prob.out_size());
    for (auto [n, e] : {std::pair<int64_t, int64_t>{3, 1}, {1000, 7}}) {
      AttentionParams stair = exact;
      stair.rel.kind = Kind::kStair;
      stair.rel.n = n;
      stair.rel.e = e;
      EXPECT_LT(RelErr(RunCpu(stair, prob.out_size(), 3), want), 1e-5) << n << " " << e;
    }
  }
}

// Queries that see no key (positions before the cache) get zero rows; positions need
// not be consecutive (the last chunk and decode steps after a gap).
TEST_P(AttentionTest, InvisibleQueriesAndGappedPositions) {
  const Shape shape = {9, 30, 2, 1, 24, 0, 20};
  Problem prob(shape, 11);
  std::vector<int64_t>& pos = prob.pos();
  for (int64_t i = 0; i < shape.n_q; ++i) pos[i] = 5 + 7 * i;  // 5..61, some before 20
  for (AttentionPositionMode mode :
       {AttentionPositionMode::kNone, AttentionPositionMode::kRopeRaw}) {
    AttentionParams p = prob.params();
    p.mode = mode;
    p.rel.kind = Kind::kStair;
    p.rel.n = 4;
    p.rel.e = 2;
    const std::vector<float> want = RunRef(p, prob.out_size());
    for (int64_t x = 0; x < 2 * shape.n_head * shape.head_dim; ++x) EXPECT_EQ(want[x], 0.0f);
    for (int threads : {1, 3}) {
      EXPECT_LT(RelErr(RunCpu(p, prob.out_size(), threads), want), 1e-5);
    }
  }
}

// A long prefill catches blocking and tail bugs the small cases cannot reach: many
// query blocks and key tiles, exact-window tiles and woven tiles, log-n past T.
TEST_P(AttentionTest, LongPrefillMatchesReference) {
  const Shape shape = {2001, 0, 4, 2, 32, 5, 0};
  Problem prob(shape, 21);
  AttentionParams p = prob.params();
  p.mode = AttentionPositionMode::kRopeRaw;
  p.rope.neox = true;
  p.rel.kind = Kind::kStair;
  p.rel.n = 300;
  p.rel.e = 7;
  p.logn_train_length = 1000;
  const std::vector<float> want = RunRef(p, prob.out_size());
  EXPECT_LT(RelErr(RunCpu(p, prob.out_size(), 3), want), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Isa, AttentionTest,
                         ::testing::Values(Isa::kAvx512, Isa::kAvx2, Isa::kScalar),
                         [](const ::testing::TestParamInfo<Isa>& info) {
                           return std::string(cpu::internal::IsaName(info.param));
                         });

TEST(AttentionSlopesTest, AlibiSlopesForPowerOfTwoAndOtherHeadCounts) {
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
