// cuda::Attention against ref::Attention (kernels/attention.h) on random data: every
// position mode and relative-position kind, odd query/key counts and tile tails,
// grouped-query heads, head dims 64/128/40 (and 8, 96, 200, 256), log-n on and off,
// kv_pos0 > 0, kv_stride > n_kv (the rows past n_kv hold NaN: reading one fails), zero
// rows, the split-K decode path, positions past 128k, bad parameters. Cases, inputs and
// the tolerance (1e-4 of the output scale) are in attention_test_cases.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cuda/attention_test_cases.h"
#include "kernels/cuda/cuda_test_util.h"
#include "kernels/cuda/ops.h"

namespace mesa::cuda {
namespace {

using testing::DeviceArray;
using namespace attn_test;  // NOLINT: the shared cases

// Runs one case on the device and compares it with the reference.
void RunCase(const Case& c, uint64_t seed, int* splits_out = nullptr) {
  SCOPED_TRACE(Describe(c));
  const Inputs in = MakeInputs(c, seed);
  ASSERT_EQ(static_cast<int64_t>(in.q_pos.size()), c.n_q);
  const std::vector<float> want = Reference(in);

  DeviceArray<float> dq(in.q), dk(in.k), dv(in.v), dslopes(in.slopes), dout(in.q.size());
  DeviceArray<int64_t> dpos(in.q_pos);
  ASSERT_NE(dout.ptr, nullptr);
  AttentionParams dp = in.params;
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
  ExpectClose(c, dout.ToHost(), want);
}

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
  good.q = buf.ptr;
  good.k = good.v = buf.ptr;
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

  // n_q == 0: nothing to do (ops.h: cudaSuccess when n == 0).
  p = good;
  p.n_q = 0;
  MESA_CUDA_OK(Attention(p, nullptr, nullptr));
}

}  // namespace
}  // namespace mesa::cuda
