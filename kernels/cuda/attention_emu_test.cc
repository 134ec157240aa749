// The CUDA attention kernels (attention_kernels.cuh) run on the CPU and compared with
// ref::Attention, so their indexing, masking, rotations, online softmax, split-K and
// combine are checked on every build, with or without a GPU or the CUDA toolkit.
//
// Emulation (kernels/cuda/cuda_emu.h): every CUDA thread of a block is a fiber, barriers
// and shuffles switch fibers, shared memory is NaN-poisoned before every block.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cuda/cuda_emu.h"  // the CUDA names, before the kernels
#define MESA_ATTN_SMEM(name) float* name = ::mesa_emu::g_smem

#include "kernels/cuda/attention_kernels.cuh"
#include "kernels/cuda/attention_test_cases.h"

namespace mesa::cuda {
namespace {

using namespace attn_test;  // NOLINT: the shared cases

// A bf16 K/V element on the host: the kernels read it through ToF, i.e. as a float.
struct HostBf16 {
  uint16_t bits;
  operator float() const { return BF16ToF32(bits); }  // NOLINT: implicit, as __nv_bfloat16
};
static_assert(sizeof(HostBf16) == 2, "two bytes per element, as the cache stores them");

// attention.cu's Attention, with the launches emulated (KV: the K/V element type the
// kernel is instantiated for, as attention.cu picks it from p.kv_type).
template <typename KV = float>
std::vector<float> EmulatedAttention(const AttentionParams& p, int* splits_out) {
  using namespace attn;  // NOLINT
  std::vector<float> out(p.n_q * p.n_head * p.head_dim, std::numeric_limits<float>::quiet_NaN());
  AttentionParams dp = p;
  dp.out = out.data();
  EXPECT_TRUE(ValidParams(dp));
  const Plan plan = MakePlan(dp);
  *splits_out = static_cast<int>(plan.splits);
  std::vector<float> scratch(ScratchBytes(dp, plan) / sizeof(float) + 1,
                             std::numeric_limits<float>::quiet_NaN());
  const AttnArgs a = BuildArgs(dp, plan, scratch.data());
  const int hdp = p.head_dim <= 64 ? 64 : (p.head_dim <= 128 ? 128 : 256);
  const size_t smem = SmemBytes(hdp, a.q_slots, a.k_slots);
  const unsigned gx = static_cast<unsigned>((a.rows + kRows - 1) / kRows);
  mesa_emu::Launch(dim3(gx, static_cast<unsigned>(p.n_head_kv), plan.splits), kThreads, smem,
                   [&] {
                     if (hdp == 64) AttnKernel<KV, 2>(a);
                     else if (hdp == 128) AttnKernel<KV, 4>(a);
                     else AttnKernel<KV, 8>(a);
                   });
  if (plan.splits > 1) {
    const int64_t out_rows = p.n_q * p.n_head;
    mesa_emu::Launch(dim3(static_cast<unsigned>(out_rows)), 128, 0, [&] {
      AttnCombine(a.part_acc, a.part_ml, static_cast<int>(plan.splits), out_rows, a.head_dim,
                  dp.out);
    });
  }
  return out;
}

void RunCase(const Case& c, uint64_t seed, int* splits_out = nullptr) {
  SCOPED_TRACE(Describe(c));
  const Inputs in = MakeInputs(c, seed);
  const std::vector<float> want = Reference(in);
  int splits = 0;
  const std::vector<float> got = EmulatedAttention(in.params, &splits);
  if (splits_out) *splits_out = splits;
  ExpectClose(c, got, want);
}

class CudaAttentionEmu : public ::testing::TestWithParam<Variant> {};

// Small sizes (the emulation is slow): tile tails, a query block of mixed rows,
// grouped-query heads, log-n, kv_pos0 > 0, stride > n_kv, both RoPE layouts.
TEST_P(CudaAttentionEmu, MatchesReference) {
  struct Size {
    int64_t n_q, n_kv, n_head_kv, head_dim, pos0, logn;
    bool neox;
    int64_t rope_dims;
  };
  const Size sizes[] = {
      {3, 50, 2, 40, 0, 0, false, -1},
      {37, 70, 1, 64, 17, 40, true, -1},
      {1, 33, 4, 64, 5, 0, false, 32},
  };
  int counter = 0;
  for (const Size& s : sizes) {
    Case c;
    c.var = GetParam();
    c.n_q = s.n_q;
    c.n_kv = s.n_kv;
    c.kv_stride = s.n_kv + 3;
    c.kv_pos0 = s.pos0;
    c.n_head = 4;
    c.n_head_kv = s.n_head_kv;
    c.head_dim = s.head_dim;
    c.logn = s.logn;
    c.neox = s.neox;
    c.rope_dims = s.rope_dims;
    RunCase(c, 500 + counter++);
  }
}

// One query over 300 keys: two key splits, partials and the combine kernel.
TEST_P(CudaAttentionEmu, DecodeSplitK) {
  Case c;
  c.var = GetParam();
  c.n_q = 1;
  c.n_kv = 300;
  c.kv_stride = 300;
  c.kv_pos0 = 2;
  c.n_head = 2;
  c.n_head_kv = 1;
  c.head_dim = 64;
  c.logn = 100;
  int splits = 0;
  RunCase(c, 9, &splits);
  EXPECT_GT(splits, 1);
}

// bf16 K/V (the CUDA cache's default): the kernel reads 2-byte elements at the same
// indices. Against the reference on the same values rounded to bf16, the f32 tolerance
// holds (the arithmetic is f32 either way).
TEST_P(CudaAttentionEmu, Bf16KeysAndValues) {
  Case c;
  c.var = GetParam();
  c.n_q = 37;
  c.n_kv = 70;
  c.kv_stride = 75;
  c.kv_pos0 = 11;
  c.n_head = 4;
  c.n_head_kv = 2;
  c.head_dim = 40;
  c.logn = 40;
  SCOPED_TRACE(Describe(c));
  Inputs in = MakeInputs(c, 4242);
  std::vector<uint16_t> k16(in.k.size()), v16(in.v.size());
  for (size_t i = 0; i < in.k.size(); ++i) {
    k16[i] = F32ToBF16(in.k[i]);
    v16[i] = F32ToBF16(in.v[i]);
    in.k[i] = BF16ToF32(k16[i]);  // the reference sees the rounded values (rows past n_kv stay NaN)
    in.v[i] = BF16ToF32(v16[i]);
  }
  const std::vector<float> want = Reference(in);
  AttentionParams p = in.params;
  p.k = k16.data();
  p.v = v16.data();
  p.kv_type = DType::kBF16;
  int splits = 0;
  ExpectClose(c, EmulatedAttention<HostBf16>(p, &splits), want);
  // The decode path (split-K) with bf16 too.
  c.n_q = 1;
  c.n_kv = 300;
  c.kv_stride = 300;
  Inputs d = MakeInputs(c, 4343);
  std::vector<uint16_t> dk(d.k.size()), dv(d.v.size());
  for (size_t i = 0; i < d.k.size(); ++i) {
    dk[i] = F32ToBF16(d.k[i]);
    dv[i] = F32ToBF16(d.v[i]);
    d.k[i] = BF16ToF32(dk[i]);
    d.v[i] = BF16ToF32(dv[i]);
  }
  const std::vector<float> dwant = Reference(d);
  AttentionParams dp = d.params;
  dp.k = dk.data();
  dp.v = dv.data();
  dp.kv_type = DType::kBF16;
  ExpectClose(c, EmulatedAttention<HostBf16>(dp, &splits), dwant);
  EXPECT_GT(splits, 1);
}

INSTANTIATE_TEST_SUITE_P(AllVariants, CudaAttentionEmu, ::testing::ValuesIn(kVariants),
                         [](const ::testing::TestParamInfo<Variant>& info) {
                           return std::string(info.param.name);
                         });

TEST(CudaAttentionEmuShapes, WideHeadDimsAndZeroRows) {
  for (int64_t hd : {128, 256}) {
    Case c;
    c.var = kVariants[6];  // rope_stair: three query copies, two key copies
    c.n_q = 5;
    c.n_kv = 40;
    c.kv_stride = 40;
    c.kv_pos0 = 10;
    c.n_head = 2;
    c.n_head_kv = 1;
    c.head_dim = hd;
    c.q_pos = {60, 3, 49, 9, 10};  // 3 and 9 see no key: zero rows
    RunCase(c, 40 + hd);
  }
}

TEST(CudaAttentionEmuShapes, LargePositions) {
  for (const Variant& var : {kVariants[1], kVariants[2], kVariants[5], kVariants[6], kVariants[8]}) {
    Case c;
    c.var = var;
    c.n_q = 4;
    c.n_kv = 64;
    c.kv_stride = 64;
    c.kv_pos0 = 131000;
    c.n_head = 2;
    c.n_head_kv = 2;
    c.head_dim = 64;
    c.logn = 4096;
    c.gap = 700;
    c.rel_set = true;
    c.rel = Rel(var.kind);
    c.rel.n = 512;
    c.rel.e = 50;
    c.rel.window = 512;
    c.rel.group = 8;
    RunCase(c, 77);
  }
}

}  // namespace
}  // namespace mesa::cuda
