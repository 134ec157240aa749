// A CPU emulator of CUDA thread blocks, so that kernels kept in headers
// (attention_kernels.cuh, ops_basic_kernels.cuh, ops_kv_kernels.cuh) run unchanged in the
// default (unit) tests, with or without a GPU or the CUDA toolkit. Include it BEFORE the
// kernel header; never in a .cu file.
//
// Emulation: every CUDA thread of a block is a fiber (ucontext) on one OS thread, run
// round-robin; __syncthreads, __syncwarp and the warp shuffles are barriers that switch
// fibers, so the kernel's code runs with its real thread count and its real
// synchronization (a missing barrier shows as a wrong result or a reported deadlock).
// Dynamic shared memory is filled with NaN before every block: a read of an element the
// block never wrote poisons the output. Static __shared__ arrays are function statics
// (shared by the block's fibers, as on the GPU, but not poisoned and kept between blocks).
// Blocks are 1-D (blockDim.x threads); grids are 3-D, run block after block.
// Not emulated: memory-model races between barriers (fibers never interleave between two
// sync points), timing, resource limits, partial shuffle masks.
//
// API: mesa_emu::Launch(grid, block_threads, smem_bytes, body) runs body() once per
// thread of every block; inside, threadIdx/blockIdx/blockDim/gridDim hold the CUDA values
// and the kernel reaches its dynamic shared memory through mesa_emu::g_smem.
#pragma once

#ifdef __CUDACC__
#error "cuda_emu.h is for host tests only"
#endif

#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

// --- the CUDA names kernels use ---
struct dim3 {  // NOLINT: CUDA's name
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
using EmuDim = dim3;
struct alignas(16) float4 {  // NOLINT: CUDA's name
  float x, y, z, w;
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;  // NOLINT: CUDA's names
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static
#define __align__(n) alignas(n)

namespace mesa_emu {

inline float* g_smem = nullptr;  // the block's dynamic shared memory

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
constexpr int kWarp = 32;
inline std::vector<Fiber> g_fibers;
inline int g_cur = 0;
inline ucontext_t g_sched;
inline std::function<void()> g_body;
inline Group g_block;
inline std::vector<Group> g_warps;
inline std::vector<uint64_t> g_xch;  // one slot per thread for the shuffles
inline uint64_t g_progress = 0;

inline void Yield() { swapcontext(&g_fibers[g_cur].ctx, &g_sched); }

inline void Barrier(Group& g) {
  const uint64_t gen = g.gen;
  ++g_progress;
  if (++g.count == g.size) {
    g.count = 0;
    ++g.gen;
    return;
  }
  while (g.gen == gen) Yield();
}

inline void Entry() {
  g_body();
  g_fibers[g_cur].done = true;
  ++g_progress;
}  // returns to g_sched through uc_link

// Runs `body` as one block of n threads (a multiple of 32) at the current blockIdx;
// aborts on a deadlock. `smem` receives smem_bytes of NaN-filled dynamic shared memory.
inline void RunBlock(int n, std::function<void()> body, size_t smem_bytes,
                     std::vector<float>* smem) {
  if (n <= 0 || n % kWarp != 0 || n > 1024) {
    std::fprintf(stderr, "emulated block of %d threads: not a multiple of 32 in [32, 1024]\n", n);
    std::abort();
  }
  smem->assign(smem_bytes / sizeof(float) + 16, std::numeric_limits<float>::quiet_NaN());
  g_smem = smem->data();
  g_body = std::move(body);
  g_fibers.resize(n);
  g_block = Group{n, 0, 0};
  g_warps.assign(n / kWarp, Group{kWarp, 0, 0});
  g_xch.assign(n, 0);
  blockDim = dim3(static_cast<unsigned>(n), 1, 1);
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
      threadIdx = dim3(g_fibers[i].tid, 0, 0);
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

// kernel<<<grid, threads, smem_bytes>>>: body() per thread of every block, blocks in
// x-fastest order.
inline void Launch(dim3 grid, int threads, size_t smem_bytes, const std::function<void()>& body) {
  std::vector<float> smem;
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        RunBlock(threads, body, smem_bytes, &smem);
      }
}

// Every lane of the warp publishes v, then reads lane `src(lane)` (its own v where src is
// out of the warp).
template <typename T, typename Src>
T Exchange(T v, Src src) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  const unsigned w = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  uint64_t* x = g_xch.data() + w * kWarp;
  std::memcpy(&x[lane], &v, sizeof(T));
  Barrier(g_warps[w]);
  const unsigned s = src(lane);
  T r = v;
  if (s < static_cast<unsigned>(kWarp)) std::memcpy(&r, &x[s], sizeof(T));
  Barrier(g_warps[w]);
  return r;
}

}  // namespace mesa_emu

inline void __syncthreads() { mesa_emu::Barrier(mesa_emu::g_block); }  // NOLINT
inline void __syncwarp(unsigned = 0xffffffffu) {                      // NOLINT
  mesa_emu::Barrier(mesa_emu::g_warps[threadIdx.x / mesa_emu::kWarp]);
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int o, int width = 32) {  // NOLINT
  return mesa_emu::Exchange(v, [&](unsigned lane) {
    const unsigned base = lane / width * width;
    const unsigned s = lane ^ static_cast<unsigned>(o);
    return s >= base + static_cast<unsigned>(width) ? lane : s;
  });
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {  // NOLINT
  return mesa_emu::Exchange(v, [&](unsigned lane) {
    const unsigned base = lane / width * width;
    return lane + delta >= base + static_cast<unsigned>(width) ? lane : lane + delta;
  });
}
template <typename T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {  // NOLINT
  return mesa_emu::Exchange(v, [&](unsigned lane) {
    const unsigned base = lane / width * width;
    return base + static_cast<unsigned>(src) % static_cast<unsigned>(width);
  });
}
