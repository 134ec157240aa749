// The CUDA attention kernels (attention_kernels.cuh) run on the CPU and compared with
// ref::Attention, so their indexing, masking, rotations, online softmax, split-K and
// combine are checked on every build, with or without a GPU or the CUDA toolkit.
//
// Emulation: every CUDA thread of a block is a fiber (ucontext) on one OS thread, run
// round-robin; __syncthreads, __syncwarp and the warp shuffles are barriers that switch
// fibers, so the kernel's code runs unchanged with its real thread count and its real
// synchronization (a missing barrier shows as a wrong result or a reported deadlock).
// Shared memory is filled with NaN before every block: a read of an element the block
// never wrote poisons the output. Not emulated: memory-model races between barriers
// (fibers never interleave between two sync points), timing, resource limits.
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <vector>

// --- the CUDA names attention_kernels.cuh uses ---
struct EmuDim {
  unsigned x = 0, y = 0, z = 0;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
namespace mesa_emu {
inline float* g_smem = nullptr;
}  // namespace mesa_emu
inline EmuDim threadIdx, blockIdx, blockDim;
void __syncthreads();                                   // NOLINT: CUDA's name
void __syncwarp(unsigned mask = 0xffffffffu);           // NOLINT
float __shfl_xor_sync(unsigned mask, float v, int o);   // NOLINT
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __grid_constant__
#define MESA_ATTN_SMEM(name) float* name = ::mesa_emu::g_smem

#include "kernels/cuda/attention_kernels.cuh"
#include "kernels/cuda/attention_test_cases.h"

namespace mesa_emu {
namespace {

struct Group {
  int size = 0, count = 0;
  uint64_t gen = 0;
};

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  unsigned tid = 0;
  bool done = false;
};

constexpr size_t kStack = 256 * 1024;
std::vector<Fiber> g_fibers;
int g_cur = 0;
ucontext_t g_sched;
std::function<void()> g_body;
Group g_block;
std::vector<Group> g_warps;
std::vector<float> g_xch;
uint64_t g_progress = 0;

void Yield() { swapcontext(&g_fibers[g_cur].ctx, &g_sched); }

void Barrier(Group& g) {
  const uint64_t gen = g.gen;
  ++g_progress;
  if (++g.count == g.size) {
    g.count = 0;
    ++g.gen;
    return;
  }
  while (g.gen == gen) Yield();
}

void Entry() {
  g_body();
  g_fibers[g_cur].done = true;
  ++g_progress;
}  // returns to g_sched through uc_link

// Runs `body` as one block of n threads (a multiple of 32); aborts on a deadlock.
void RunBlock(int n, std::function<void()> body, size_t smem_bytes,
              std::vector<float>* smem) {
  smem->assign(smem_bytes / sizeof(float) + 16, std::numeric_limits<float>::quiet_NaN());
  g_smem = smem->data();
  g_body = std::move(body);
  g_fibers.resize(n);
  g_block = Group{n, 0, 0};
  g_warps.assign((n + 31) / 32, Group{32, 0, 0});
  g_xch.assign(g_warps.size() * 32, 0.0f);
  blockDim = EmuDim{static_cast<unsigned>(n), 1, 1};
  for (int i = 0; i < n; ++i) {
    Fiber& f = g_fibers[i];
    f.stack.resize(kStack);
    f.tid = i;
    f.done = false;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &g_sched;
    makecontext(&f.ctx, Entry, 0);
  }
  for (;;) {
    bool alive = false;
    const uint64_t before = g_progress;
    for (int i = 0; i < n; ++i) {
      if (g_fibers[i].done) continue;
      alive = true;
      g_cur = i;
      threadIdx = EmuDim{g_fibers[i].tid, 0, 0};
      swapcontext(&g_sched, &g_fibers[i].ctx);
    }
    if (!alive) break;
    if (g_progress == before) {
      std::fprintf(stderr, "emulated block (%u, %u, %u): deadlock at a barrier\n", blockIdx.x,
                   blockIdx.y, blockIdx.z);
      std::abort();
    }
  }
}

}  // namespace
}  // namespace mesa_emu

void __syncthreads() { mesa_emu::Barrier(mesa_emu::g_block); }
void __syncwarp(unsigned) { mesa_emu::Barrier(mesa_emu::g_warps[threadIdx.x / 32]); }
float __shfl_xor_sync(unsigned, float v, int o) {
  const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* x = mesa_emu::g_xch.data() + w * 32;
  x[lane] = v;
  mesa_emu::Barrier(mesa_emu::g_warps[w]);
  const float r = x[lane ^ static_cast<unsigned>(o)];
  mesa_emu::Barrier(mesa_emu::g_warps[w]);
  return r;
}

namespace mesa::cuda {
namespace {

using namespace attn_test;  // NOLINT: the shared cases

// attention.cu's Attention, with the launches emulated.
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
  std::vector<float> smem_buf;
  const unsigned gx = static_cast<unsigned>((a.rows + kRows - 1) / kRows);
  for (unsigned z = 0; z < plan.splits; ++z) {
    for (unsigned y = 0; y < p.n_head_kv; ++y) {
      for (unsigned x = 0; x < gx; ++x) {
        blockIdx = EmuDim{x, y, z};
        mesa_emu::RunBlock(
            kThreads,
            [&] {
              if (hdp == 64) AttnKernel<float, 2>(a);
              else if (hdp == 128) AttnKernel<float, 4>(a);
              else AttnKernel<float, 8>(a);
            },
            smem, &smem_buf);
      }
    }
  }
  if (plan.splits > 1) {
    const int64_t out_rows = p.n_q * p.n_head;
    for (int64_t x = 0; x < out_rows; ++x) {
      blockIdx = EmuDim{static_cast<unsigned>(x), 0, 0};
      mesa_emu::RunBlock(
          128,
          [&] {
            AttnCombine(a.part_acc, a.part_ml, static_cast<int>(plan.splits), out_rows,
                        a.head_dim, dp.out);
          },
          0, &smem_buf);
    }
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
