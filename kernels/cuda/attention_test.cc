// cuda::Attention against ref::Attention (kernels/attention.h) on random data: every
// position mode and relative-position kind, odd query/key counts and tile tails,
// grouped-query heads, head dims 64/128/40 (and 8, 96, 256), log-n on and off, kv_pos0 > 0,
// kv_stride > n_kv (the rows past n_kv hold NaN: reading one fails), zero rows, the
// split-K decode path, positions past 128k, bad parameters.
//
// Tolerance: 1e-4 of the output scale (max |ref|). The kernel computes in f32 with
// angles reduced in double; its error against the double reference is ~1e-6 of the
// scale on these sizes, so 1e-4 catches any indexing, masking or rotation mistake
// (those move outputs by ~1e-2 or more) while leaving room for f32 accumulation.
// Outputs are poisoned (NaN) before every run; NaN never passes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cuda/cuda_test_util.h"
#include "kernels/cuda/ops.h"

namespace mesa::cuda {
namespace {

using testing::DeviceArray;
using Kind = RelativePosition::Kind;

struct Variant {
  const char* name;
  AttentionPositionMode mode;
  Kind kind;
};
void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

// Relative-position parameters small enough that the test sizes cross every boundary
// (near/far regions inside one key tile, stair levels of E keys).
RelativePosition Rel(Kind kind) {
  RelativePosition r;
  r.kind = kind;
  r.n = 20;
  r.e = 3;
  r.window = kind == Kind::kClamp ? 40 : 24;
  r.group = 4;
  return r;
}

struct Case {
  Variant var;
  int64_t n_q = 1, n_kv = 1, kv_stride = 1, kv_pos0 = 0;
  int64_t n_head = 4, n_head_kv = 4, head_dim = 64;
  int64_t logn = 0;
  int64_t rope_dims = -1;  // -1: head_dim
  bool neox = false;
  float freq_scale = 1.0f;
  RelativePosition rel;
  bool rel_set = false;
  std::vector<int64_t> q_pos;  // empty: the last n_q positions of the keys (+ gap)
  int64_t gap = 0;
};

std::string Describe(const Case& c) {
  return std::string(c.var.name) + " n_q=" + std::to_string(c.n_q) +
         " n_kv=" + std::to_string(c.n_kv) + " stride=" + std::to_string(c.kv_stride) +
         " pos0=" + std::to_string(c.kv_pos0) + " heads=" + std::to_string(c.n_head) + "/" +
         std::to_string(c.n_head_kv) + " hd=" + std::to_string(c.head_dim) +
         " logn=" + std::to_string(c.logn) + " neox=" + std::to_string(c.neox) +
         " rope_dims=" + std::to_string(c.rope_dims) + " gap=" + std::to_string(c.gap);
}

// Runs one case on the device and against the reference; returns the max error
// relative to the output scale (or +inf on any non-finite or mismatch bookkeeping).
void RunCase(const Case& c, uint64_t seed, int* splits_out = nullptr) {
  SCOPED_TRACE(Describe(c));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  const int64_t hd = c.head_dim;
  std::vector<float> q(c.n_q * c.n_head * hd), k(c.n_head_kv * c.kv_stride * hd),
      v(k.size());
  for (float& x : q) x = uni(rng);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t h = 0; h < c.n_head_kv; ++h) {
    for (int64_t j = 0; j < c.kv_stride; ++j) {
      for (int64_t d = 0; d < hd; ++d) {
        const int64_t at = (h * c.kv_stride + j) * hd + d;
        k[at] = j < c.n_kv ? uni(rng) : nan;  // rows past n_kv are never read
        v[at] = j < c.n_kv ? uni(rng) : nan;
      }
    }
  }
  std::vector<int64_t> q_pos = c.q_pos;
  if (q_pos.empty()) {
    for (int64_t i = 0; i < c.n_q; ++i) {
      q_pos.push_back(std::max<int64_t>(0, c.kv_pos0 + c.n_kv - c.n_q + i + c.gap));
    }
  }
  ASSERT_EQ(static_cast<int64_t>(q_pos.size()), c.n_q);
  std::vector<float> slopes(c.n_head);
  AlibiSlopes(c.n_head, 8.0f, slopes.data());

  AttentionParams p;
  p.n_q = c.n_q;
  p.n_kv = c.n_kv;
  p.kv_stride = c.kv_stride;
  p.kv_pos0 = c.kv_pos0;
  p.n_head = c.n_head;
  p.n_head_kv = c.n_head_kv;
  p.head_dim = hd;
  p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  p.mode = c.var.mode;
  p.rel = c.rel_set ? c.rel : Rel(c.var.kind);
  p.rope.head_dim = hd;
  p.rope.rope_dims = c.rope_dims < 0 ? hd : c.rope_dims;
  p.rope.freq_base = 10000.0f;
  p.rope.freq_scale = c.freq_scale;
  p.rope.neox = c.neox;
  p.logn_train_length = c.logn;

  std::vector<float> want(q.size(), nan);
  AttentionParams hp = p;
  hp.q = q.data();
  hp.k = k.data();
  hp.v = v.data();
  hp.out = want.data();
  hp.q_pos = q_pos.data();
  hp.alibi_slopes = slopes.data();
  ref::Attention(hp);

  DeviceArray<float> dq(q), dk(k), dv(v), dslopes(slopes), dout(q.size());
  DeviceArray<int64_t> dpos(q_pos);
  ASSERT_NE(dout.ptr, nullptr);
  AttentionParams dp = p;
  dp.q = dq.ptr;
  dp.k = dk.ptr;
  dp.v = dv.ptr;
  dp.out = dout.ptr;
  dp.q_pos = dpos.ptr;
  dp.alibi_slopes = dslopes.ptr;
  const size_t scratch_bytes = AttentionScratchBytes(dp);
  DeviceArray<uint8_t> scratch(std::max<size_t>(scratch_bytes, 1));
  if (splits_out) *splits_out = AttentionKeySplits(dp);
  EXPECT_EQ(scratch_bytes > 0, AttentionKeySplits(dp) > 1);
  dout.Poison();
  MESA_CUDA_OK(Attention(dp, scratch_bytes ? scratch.ptr : nullptr, nullptr));
  MESA_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> got = dout.ToHost();

  float scale = 0.0f;
  for (float x : want) scale = std::max(scale, std::fabs(x));
  const float tol = 1e-4f * std::max(scale, 1e-2f);
  int64_t bad = 0;
  float worst = 0.0f;
  for (size_t i = 0; i < got.size(); ++i) {
    const float err = std::fabs(got[i] - want[i]);
    if (!(err <= tol)) {
      if (bad < 5) {
        ADD_FAILURE() << "out[" << i << "] (query " << i / (c.n_head * hd) << ", head "
                      << (i / hd) % c.n_head << ", dim " << i % hd << ") = " << got[i]
                      << ", ref " << want[i] << ", tol " << tol;
      }
      ++bad;
    }
    if (err == err) worst = std::max(worst, err);
  }
  EXPECT_EQ(bad, 0) << "of " << got.size() << " outputs; worst error " << worst << " (scale "
                    << scale << ")";
}

const Variant kVariants[] = {
    {"none", AttentionPositionMode::kNone, Kind::kExact},
    {"alibi_exact", AttentionPositionMode::kAlibi, Kind::kExact},
    {"alibi_stair", AttentionPositionMode::kAlibi, Kind::kStair},
    {"alibi_clamp", AttentionPositionMode::kAlibi, Kind::kClamp},
    {"alibi_selfextend", AttentionPositionMode::kAlibi, Kind::kSelfExtend},
    {"rope_exact", AttentionPositionMode::kRopeRaw, Kind::kExact},
    {"rope_stair", AttentionPositionMode::kRopeRaw, Kind::kStair},
    {"rope_clamp", AttentionPositionMode::kRopeRaw, Kind::kClamp},
    {"rope_selfextend", AttentionPositionMode::kRopeRaw, Kind::kSelfExtend},
};

class CudaAttentionVariant : public ::testing::TestWithParam<Variant> {};

// Every n_q x n_kv of the brief; the other dimensions cycle so that each variant meets
// every head grouping, head dim, log-n setting, kv_pos0, stride and RoPE layout.
TEST_P(CudaAttentionVariant, MatchesReferenceOverSizes) {
  MESA_REQUIRE_GPU();
  const int64_t n_qs[] = {1, 3, 37, 130};
  const int64_t n_kvs[] = {1, 50, 300, 1000};
  const int64_t kv_heads[] = {4, 2, 1};
  const int64_t head_dims[] = {64, 128, 40};
  const int64_t pos0s[] = {0, 17, 1000};
  int counter = 0;
  for (int64_t n_q : n_qs) {
    for (int64_t n_kv : n_kvs) {
      Case c;
      c.var = GetParam();
      c.n_q = n_q;
      c.n_kv = n_kv;
      c.kv_stride = n_kv + (counter % 2 ? 7 : 0);
      c.kv_pos0 = pos0s[counter % 3];
      c.n_head = 4;
      c.n_head_kv = kv_heads[counter % 3];
      c.head_dim = head_dims[(counter / 3) % 3];
      c.logn = counter % 2 ? 0 : 64;
      c.neox = (counter / 2) % 2 == 1;
      c.rope_dims = counter % 4 == 3 ? c.head_dim / 2 : -1;
      c.gap = counter % 5 == 4 ? 9 : 0;
      RunCase(c, 1000 + counter);
      ++counter;
    }
  }
}

// Decode: one query over 5000 keys goes through the split-K path (partials + combine).
TEST_P(CudaAttentionVariant, DecodeSplitK) {
  MESA_REQUIRE_GPU();
  for (int64_t n_head_kv : {4, 1}) {
    Case c;
    c.var = GetParam();
    c.n_q = 1;
    c.n_kv = 5000;
    c.kv_stride = 5003;
    c.kv_pos0 = 3;
    c.n_head = 4;
    c.n_head_kv = n_head_kv;
    c.head_dim = 128;
    c.logn = 2048;
    int splits = 0;
    RunCase(c, 77 + n_head_kv, &splits);
    EXPECT_GT(splits, 1) << "decode did not take the split-K path";
  }
}

INSTANTIATE_TEST_SUITE_P(AllVariants, CudaAttentionVariant, ::testing::ValuesIn(kVariants),
                         [](const ::testing::TestParamInfo<Variant>& info) {
                           return std::string(info.param.name);
                         });

TEST(CudaAttention, HeadDims) {
  MESA_REQUIRE_GPU();
  for (int64_t hd : {8, 40, 64, 96, 128, 200, 256}) {
    for (const Variant& var : {kVariants[0], kVariants[6]}) {
      Case c;
      c.var = var;
      c.n_q = 37;
      c.n_kv = 300;
      c.kv_stride = 300;
      c.head_dim = hd;
      c.n_head = 4;
      c.n_head_kv = 2;
      RunCase(c, 5 + hd);
    }
  }
}

TEST(CudaAttention, GroupedQueryWideGroups) {
  MESA_REQUIRE_GPU();
  // 32 query heads over 8 kv heads (group 4) and 8 over 1 (group 8): prefill and decode.
  for (int64_t n_q : {1, 70}) {
    for (auto [nh, nkv] : {std::pair<int64_t, int64_t>{32, 8}, {8, 1}}) {
      Case c;
      c.var = kVariants[6];
      c.n_q = n_q;
      c.n_kv = 700;
      c.kv_stride = 710;
      c.n_head = nh;
      c.n_head_kv = nkv;
      c.head_dim = 64;
      c.logn = 100;
      RunCase(c, 11 * n_q + nh);
    }
  }
}

// Positions past 128k: the rotation angles must stay exact enough (double reduction).
TEST(CudaAttention, LargePositions) {
  MESA_REQUIRE_GPU();
  for (const Variant& var : kVariants) {
    if (var.mode == AttentionPositionMode::kNone) continue;
    Case c;
    c.var = var;
    c.n_q = 37;
    c.n_kv = 1000;
    c.kv_stride = 1000;
    c.kv_pos0 = 131000;
    c.head_dim = 128;
    c.logn = 4096;
    c.rel_set = true;
    c.rel = Rel(var.kind);
    c.rel.n = 512;
    c.rel.e = 50;
    c.rel.window = 512;
    c.rel.group = 8;
    // The queries sit 2000 past the keys, so Stair PE and Self-Extend use their far
    // forms for every key.
    c.gap = 2000;
    RunCase(c, 3);
    c.gap = 0;  // and across the boundary
    RunCase(c, 4);
  }
}

// Queries in any order, some before every key (zero rows), one seeing a single key.
TEST(CudaAttention, UnsortedPositionsAndZeroRows) {
  MESA_REQUIRE_GPU();
  for (const Variant& var : kVariants) {
    Case c;
    c.var = var;
    c.n_q = 9;
    c.n_kv = 90;
    c.kv_stride = 95;
    c.kv_pos0 = 100;
    c.n_head = 4;
    c.n_head_kv = 2;
    c.head_dim = 64;
    c.q_pos = {150, 3, 189, 99, 100, 120, 0, 400, 170};
    RunCase(c, 21);
  }
}

TEST(CudaAttention, EveryRowZeroWhenNoKeyIsVisible) {
  MESA_REQUIRE_GPU();
  for (int64_t n_kv : {0, 1000}) {
    Case c;
    c.var = kVariants[6];
    c.n_q = 3;
    c.n_kv = n_kv;
    c.kv_stride = 1000;
    c.kv_pos0 = 5000;
    c.q_pos = {0, 4999, 10};
    RunCase(c, 8);
  }
}

TEST(CudaAttention, RejectsBadParameters) {
  MESA_REQUIRE_GPU();
  DeviceArray<float> buf(4096);
  DeviceArray<int64_t> pos(std::vector<int64_t>{0, 1});
  AttentionParams good;
  good.q = good.k = good.v = buf.ptr;
  good.out = buf.ptr;
  good.q_pos = pos.ptr;
  good.n_q = 1;
  good.n_kv = 2;
  good.kv_stride = 2;
  good.n_head = 2;
  good.n_head_kv = 1;
  good.head_dim = 64;
  MESA_CUDA_OK(Attention(good, nullptr, nullptr));
  MESA_CUDA_OK(cudaDeviceSynchronize());

  auto expect_invalid = [&](AttentionParams p, const char* what) {
    EXPECT_EQ(Attention(p, nullptr, nullptr), cudaErrorInvalidValue) << what;
  };
  AttentionParams p = good;
  p.head_dim = 300;
  expect_invalid(p, "head_dim > 256");
  p = good;
  p.n_head = 3;
  p.n_head_kv = 2;
  expect_invalid(p, "n_head % n_head_kv");
  p = good;
  p.n_kv = 3;
  expect_invalid(p, "n_kv > kv_stride");
  p = good;
  p.mode = AttentionPositionMode::kAlibi;
  expect_invalid(p, "ALiBi without slopes");
  p = good;
  p.mode = AttentionPositionMode::kRopeRaw;
  p.rope.head_dim = 32;
  p.rope.rope_dims = 32;
  expect_invalid(p, "rope.head_dim != head_dim");
  p = good;
  p.rel.kind = Kind::kStair;
  p.rel.e = 0;
  expect_invalid(p, "stair e = 0");
  p = good;
  p.q_pos = nullptr;
  expect_invalid(p, "no positions");

  // The split-K path needs its scratch.
  AttentionParams big = good;
  big.n_kv = 5000;
  big.kv_stride = 5000;
  ASSERT_GT(AttentionKeySplits(big), 1);
  EXPECT_GT(AttentionScratchBytes(big), 0u);
  EXPECT_EQ(Attention(big, nullptr, nullptr), cudaErrorInvalidValue);

  // n_q == 0: nothing to do, nothing touched.
  p = good;
  p.n_q = 0;
  p.out = nullptr;
  EXPECT_EQ(Attention(p, nullptr, nullptr), cudaErrorInvalidValue);  // out is still required
  p.out = buf.ptr;
  MESA_CUDA_OK(Attention(p, nullptr, nullptr));
}

}  // namespace
}  // namespace mesa::cuda
