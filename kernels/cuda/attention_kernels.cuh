// The CUDA attention kernels behind ops.h's Attention (launchers in attention.cu), the
// twin of ref::Attention (kernels/attention.h is the specification: layouts, causal
// rule, every variant). A header so that the host emulation test
// (attention_emu_test.cc) runs this very code on a CPU without a device; it provides
// the CUDA names (threads as fibers, shared memory, warp shuffles) before including it.
//
// One flash-style kernel family (online softmax, K/V tiles in shared memory, no n_q x
// n_kv matrix), templated on the K/V element type and the padded head dim:
//   AttnKernel   a block takes kRows rows of the flattened (query, head-in-group) space
//                of one kv head, so the query heads that share a kv head (grouped-
//                query) read each K/V tile once; it walks the keys of its split in tiles
//                of kKeys. Prefill: one split, the kernel writes `out`. Decode (few rows,
//                many keys): the keys are split over gridDim.z blocks, each writes its
//                partial (m, l, unnormalized acc) into the scratch,
//   AttnCombine  merges the partials of every output row.
//
// Threads: 4 warps; warp w owns the rows w, w + 4, ..., w + 28 of the block for the
// scores, the softmax statistics and the output accumulators, so a row's state never
// leaves its warp (the softmax needs warp shuffles only, P is exchanged in shared memory
// under __syncwarp). In QK^T lane l computes the scores of key l of the tile; in PV lane
// l owns the dims l, l + 32, ... of the head.
//
// Positions. Every relative position kind is, per (query t, key p) pair, either the
// near form rel = d = t - p (d < thr) or a far form rel = A(t) - B(p) - delta:
//   kExact      thr = inf (never far)
//   kStair      thr = n, A = n + floor((t-n)/E), B = floor(p/E),
//               delta = [(t-n) mod E < p mod E]   (floor((a-b)/E) = floor(a/E) -
//               floor(b/E) - [a mod E < b mod E])
//   kClamp      thr = window, A = window, B = 0, delta = 0
//   kSelfExtend thr = window, A = t/g + window - window/g, B = p/g, delta = 0
// With raw RoPE keys Rot(rel) q . k = Rot(A - delta) q . Rot(B) k, so the kernel keeps
// per block up to three rotated copies of its query rows (near: Rot(t); far: Rot(A);
// Stair PE's second far copy: Rot(A - 1)) and, per key tile, up to two rotated copies
// of the keys (near: Rot(p); far: Rot(B), raw for kClamp). A tile computes the near
// and/or far products only where some pair of the tile needs them (decided for the
// whole block from the rows' min/max position) and picks per pair. ALiBi uses the same
// decomposition for its bias. Rotation angles: v * freq_scale * inv_freq with inv_freq
// in double (as ref), reduced mod 2 pi in double, then sincosf of the reduced angle:
// accurate for positions far past 128k.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define MESA_ATTN_SMEM(name) extern __shared__ __align__(16) float name[]
#define MESA_ATTN_UNROLL _Pragma("unroll")
#define MESA_ATTN_UNROLL2 _Pragma("unroll 2")
#else
#define MESA_ATTN_UNROLL
#define MESA_ATTN_UNROLL2
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/attention.h"

namespace mesa::cuda::attn {

constexpr int kRows = 32;     // rows (query, head) per block
constexpr int kKeys = 32;     // keys per tile (one per lane)
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRowsPerWarp = kRows / kWarps;  // 8
constexpr int kMaxHeadDim = 256;
constexpr int kMaxPairs = kMaxHeadDim / 2;
// Split-K: aim for about two blocks per SM of an H100/H200 (132 SMs); a split covers
// at least kMinTilesPerSplit tiles. The rule depends on the parameters only (not on
// the device), so AttentionScratchBytes and Attention always agree.
constexpr int64_t kTargetBlocks = 264;
constexpr int64_t kMinTilesPerSplit = 4;
constexpr int64_t kMaxSplits = 64;

enum Mode : int { kModeNone = 0, kModeAlibi = 1, kModeRope = 2 };
enum Kind : int { kKindExact = 0, kKindStair = 1, kKindClamp = 2, kKindSelfExtend = 3 };

struct AttnArgs {
  const float* q;
  const void* k;
  const void* v;
  float* out;
  const int64_t* q_pos;
  const float* slopes;
  float* part_acc;  // [n_split][n_q * n_head][head_dim]; null: one split, write out
  float* part_ml;   // [n_split][n_q * n_head][2] (running max, sum)
  int64_t n_q, n_kv, kv_stride, kv_pos0;
  int64_t rows;  // n_q * group: the flattened (query, head-in-group) rows of a kv head
  int n_head, n_head_kv, group, head_dim;
  float scale;
  int mode, kind;
  int64_t rel_n, rel_e, window, rel_g;
  int64_t thr;      // d >= thr: far form (INT64_MAX: never)
  int64_t logn_t;   // logn_train_length
  int rope_dims, neox;
  int q_slots, k_slots, kfar_rotate;
  int64_t keys_per_split;
  double finv[kMaxPairs];  // freq_scale * freq_base^(-2i/rope_dims)
};

// Shared memory: metadata, then the float areas (all offsets multiples of 16 floats).
// int64: 5 per row, 2 per key; double: kMaxPairs; float: 2 per row.
constexpr int kMetaFloats = (5 * kRows + 2 * kKeys + kMaxPairs) * 2 + 2 * kRows;
static_assert(kMetaFloats % 16 == 0, "metadata keeps the float areas 64-byte aligned");
__host__ __device__ constexpr int QSlotStride(int hdp) { return kRows * hdp + 16; }
__host__ __device__ constexpr int KSlotStride(int hdp) { return kKeys * (hdp + 1); }
inline size_t SmemBytes(int hdp, int q_slots, int k_slots) {
  const size_t floats = kMetaFloats + static_cast<size_t>(q_slots) * QSlotStride(hdp) +
                        static_cast<size_t>(k_slots) * KSlotStride(hdp) +
                        static_cast<size_t>(kKeys) * hdp + kRows * kKeys;
  return floats * sizeof(float);
}

// K/V element to f32 (f32 today; f16/bf16 caches instantiate the same kernel).
template <typename T>
__device__ __forceinline__ float ToF(T x) {
#ifdef __CUDACC__
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(x);
  } else {
    return static_cast<float>(x);
  }
#else
  return static_cast<float>(x);
#endif
}

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// cos and sin of v * finv, the angle reduced mod 2 pi in double.
__device__ __forceinline__ void CosSin(int64_t v, double finv, float* c, float* s) {
  constexpr double kTwoPiHi = 6.283185307179586232;       // double(2 pi)
  constexpr double kTwoPiLo = 2.4492935982947064e-16;     // 2 pi - kTwoPiHi
  constexpr double kInvTwoPi = 0.15915494309189533577;
  const double a = static_cast<double>(v) * finv;
  const double k = rint(a * kInvTwoPi);
  double r = fma(-k, kTwoPiHi, a);
  r = fma(-k, kTwoPiLo, r);
  sincosf(static_cast<float>(r), s, c);
}

// A(t) of the far form (and (t - n) mod E for Stair PE).
__device__ __forceinline__ int64_t RowFar(const AttnArgs& a, int64_t t, int64_t* amod) {
  *amod = 0;
  switch (a.kind) {
    case kKindStair: {
      const int64_t x = t - a.rel_n;
      const int64_t f = FloorDiv(x, a.rel_e);
      *amod = x - f * a.rel_e;
      return a.rel_n + f;
    }
    case kKindClamp: return a.window;
    case kKindSelfExtend: return t / a.rel_g + a.window - a.window / a.rel_g;
    default: return t;
  }
}

// B(p) of the far form (and p mod E for Stair PE).
__device__ __forceinline__ int64_t KeyFar(const AttnArgs& a, int64_t p, int64_t* kmod) {
  *kmod = 0;
  switch (a.kind) {
    case kKindStair: {
      const int64_t f = FloorDiv(p, a.rel_e);
      *kmod = p - f * a.rel_e;
      return f;
    }
    case kKindClamp: return 0;
    case kKindSelfExtend: return p / a.rel_g;
    default: return p;
  }
}

// rel(t, p) exactly as RelativePosition::operator() (once per row).
__device__ __forceinline__ int64_t RelOf(const AttnArgs& a, int64_t t, int64_t p) {
  const int64_t d = t - p;
  switch (a.kind) {
    case kKindStair: return d < a.rel_n ? d : a.rel_n + (d - a.rel_n) / a.rel_e;
    case kKindClamp: return d < a.window ? d : a.window;
    case kKindSelfExtend:
      return d < a.window ? d : t / a.rel_g - p / a.rel_g + a.window - a.window / a.rel_g;
    default: return d;
  }
}

__device__ __forceinline__ float WarpMax(float v) {
MESA_ATTN_UNROLL
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float WarpSum(float v) {
MESA_ATTN_UNROLL
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// out[m] = q row (smem + qoff[m]) . key row (smem + koff) over HDP dims, m < nm.
template <int NC>
__device__ __forceinline__ void Dots(const float* smem, const int (&qoff)[kRowsPerWarp],
                                     int koff, int nm, float (&out)[kRowsPerWarp]) {
  constexpr int kHdp = 32 * NC;
MESA_ATTN_UNROLL
  for (int m = 0; m < kRowsPerWarp; ++m) out[m] = 0.0f;
MESA_ATTN_UNROLL2
  for (int d = 0; d < kHdp; d += 4) {
    const float k0 = smem[koff + d], k1 = smem[koff + d + 1];
    const float k2 = smem[koff + d + 2], k3 = smem[koff + d + 3];
MESA_ATTN_UNROLL
    for (int m = 0; m < kRowsPerWarp; ++m) {
      if (m < nm) {
        const float4 qv = *reinterpret_cast<const float4*>(smem + qoff[m] + d);
        float s = out[m];
        s = fmaf(qv.x, k0, s);
        s = fmaf(qv.y, k1, s);
        s = fmaf(qv.z, k2, s);
        s = fmaf(qv.w, k3, s);
        out[m] = s;
      }
    }
  }
}

template <typename KV, int NC>
__global__ void __launch_bounds__(kThreads) AttnKernel(const __grid_constant__ AttnArgs a) {
  constexpr int kHdp = 32 * NC;  // head dim padded (zeros past head_dim)
  constexpr int kKs = kHdp + 1;  // key row stride: lane l reads row l conflict-free
  constexpr int kQss = QSlotStride(kHdp);
  constexpr int kKss = KSlotStride(kHdp);
  MESA_ATTN_SMEM(smem);
  int64_t* s_t = reinterpret_cast<int64_t*>(smem);  // row position (INT64_MIN: no row)
  int64_t* s_a = s_t + kRows;                        // row A(t)
  int64_t* s_amod = s_a + kRows;                     // row (t - n) mod E
  int64_t* s_oi = s_amod + kRows;                    // row index i * n_head + h
  int64_t* s_r0 = s_oi + kRows;                      // row ALiBi rel of its nearest key
  int64_t* s_kb = s_r0 + kRows;                      // key B(p)
  int64_t* s_kmod = s_kb + kKeys;                    // key p mod E
  double* s_finv = reinterpret_cast<double*>(s_kmod + kKeys);  // freq_scale * inv_freq
  float* s_scale = reinterpret_cast<float*>(s_finv + kMaxPairs);
  float* s_slope = s_scale + kRows;
  float* sq = smem + kMetaFloats;       // q_slots x [kRows][kHdp]
  float* sk = sq + a.q_slots * kQss;    // k_slots x [kKeys][kKs]
  float* sv = sk + a.k_slots * kKss;    // [kKeys][kHdp]
  float* sp = sv + kKeys * kHdp;        // [kRows][kKeys] probabilities
  const int q_base = kMetaFloats;
  const int k_base = q_base + a.q_slots * kQss;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kvh = blockIdx.y;
  const int split = blockIdx.z;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int hd = a.head_dim;
  const bool rope = a.mode == kModeRope;
  const bool alibi = a.mode == kModeAlibi;
  const bool stair = a.kind == kKindStair;
  const int rd = rope ? a.rope_dims : 0;
  const int half = rd / 2;

  // 1. Row metadata.
  if (tid < kRows) {
    const int64_t r = r0 + tid;
    int64_t t = INT64_MIN, A = 0, amod = 0, oi = 0, r0 = 0;
    float qscale = 0.0f, slope = 0.0f;
    if (r < a.rows) {
      const int64_t i = r / a.group;
      const int h = kvh * a.group + static_cast<int>(r % a.group);
      t = a.q_pos[i];
      oi = i * a.n_head + h;
      double lf = 1.0;
      if (a.logn_t > 1 && t >= a.logn_t) {
        lf = log(static_cast<double>(t) + 1.0) / log(static_cast<double>(a.logn_t));
      }
      qscale = static_cast<float>(static_cast<double>(a.scale) * lf);
      A = RowFar(a, t, &amod);
      if (alibi) {
        slope = a.slopes[h];
        // The bias is taken relative to the row's nearest key (softmax is shift-invariant
        // per row, and every split of the row uses the same shift): f32 keeps the biases
        // that matter small and exact instead of slope * 100k-ish values.
        const int64_t pl = Min64(t, a.kv_pos0 + a.n_kv - 1);
        if (pl >= a.kv_pos0) r0 = RelOf(a, t, pl);
      }
    }
    s_t[tid] = t;
    s_a[tid] = A;
    s_amod[tid] = amod;
    s_oi[tid] = oi;
    s_r0[tid] = r0;
    s_scale[tid] = qscale;
    s_slope[tid] = slope;
  }
  for (int i = tid; i < kMaxPairs; i += kThreads) s_finv[i] = i < half ? a.finv[i] : 0.0;
  __syncthreads();

  const int nrows = static_cast<int>(Min64(kRows, a.rows - r0));
  const int nm = nrows > warp ? (nrows - warp + kWarps - 1) / kWarps : 0;  // this warp's rows
  int64_t tmin = INT64_MAX, tmax = INT64_MIN;
  for (int r = 0; r < nrows; ++r) {
    tmin = Min64(tmin, s_t[r]);
    tmax = Max64(tmax, s_t[r]);
  }

  // 2. Query slots: 0 = raw (kNone, kAlibi) or Rot(t); 1 = Rot(A); 2 = Rot(A - 1).
  for (int slot = 0; slot < a.q_slots; ++slot) {
    float* dst = sq + slot * kQss;
    for (int idx = tid; idx < kRows * kHdp; idx += kThreads) {
      const int row = idx / kHdp, d = idx % kHdp;
      if (d < rd) continue;  // rotated below
      float x = 0.0f;
      if (row < nrows && d < hd) x = a.q[s_oi[row] * hd + d];
      dst[row * kHdp + d] = x;
    }
    for (int idx = tid; idx < kRows * half; idx += kThreads) {
      const int row = idx / half, i = idx % half;
      const int ia = a.neox ? i : 2 * i;
      const int ib = a.neox ? i + half : 2 * i + 1;
      float oa = 0.0f, ob = 0.0f;
      if (row < nrows) {
        const float* qr = a.q + s_oi[row] * hd;
        const float xa = qr[ia], xb = qr[ib];
        const int64_t v = slot == 0 ? s_t[row] : (slot == 1 ? s_a[row] : s_a[row] - 1);
        float c, s;
        CosSin(v, s_finv[i], &c, &s);
        oa = xa * c - xb * s;
        ob = xa * s + xb * c;
      }
      dst[row * kHdp + ia] = oa;
      dst[row * kHdp + ib] = ob;
    }
  }

  float acc[kRowsPerWarp][NC];
  float row_m[kRowsPerWarp], row_l[kRowsPerWarp];
MESA_ATTN_UNROLL
  for (int m = 0; m < kRowsPerWarp; ++m) {
    row_m[m] = -INFINITY;
    row_l[m] = 0.0f;
MESA_ATTN_UNROLL
    for (int c = 0; c < NC; ++c) acc[m][c] = 0.0f;
  }
  int qoff_near[kRowsPerWarp];
MESA_ATTN_UNROLL
  for (int m = 0; m < kRowsPerWarp; ++m) qoff_near[m] = q_base + (warp + kWarps * m) * kHdp;

  // 3. Key tiles of this split, up to the last key any row of the block sees.
  const KV* kbase = static_cast<const KV*>(a.k) + static_cast<int64_t>(kvh) * a.kv_stride * hd;
  const KV* vbase = static_cast<const KV*>(a.v) + static_cast<int64_t>(kvh) * a.kv_stride * hd;
  const int64_t ja = static_cast<int64_t>(split) * a.keys_per_split;
  int64_t jb = Min64(a.n_kv, ja + a.keys_per_split);
  if (tmax != INT64_MIN) jb = Min64(jb, tmax - a.kv_pos0 + 1);
  for (int64_t j0 = ja; j0 < jb; j0 += kKeys) {
    const int kn = static_cast<int>(Min64(kKeys, jb - j0));
    const int64_t p0 = a.kv_pos0 + j0, plast = p0 + kn - 1;
    // Which products the tile needs (some pair with d < thr; some pair with d >= thr).
    const bool need_near = !rope || tmin - plast < a.thr;
    const bool need_far = rope && a.thr != INT64_MAX && tmax - p0 >= a.thr;
    __syncthreads();  // the previous tile's K, V, P and key metadata are consumed
    if (tid < kKeys) {
      int64_t kmod;
      s_kb[tid] = KeyFar(a, p0 + tid, &kmod);
      s_kmod[tid] = kmod;
    }
    __syncthreads();
    // Unrotated dims (all of them without RoPE), padding and tail keys (zeros), and V.
    for (int idx = tid; idx < kKeys * kHdp; idx += kThreads) {
      const int kj = idx / kHdp, d = idx % kHdp;
      const bool in = kj < kn && d < hd;
      const int64_t g = (j0 + kj) * hd + d;
      sv[kj * kHdp + d] = in ? ToF(vbase[g]) : 0.0f;
      if (d >= rd) {
        const float x = in ? ToF(kbase[g]) : 0.0f;
        for (int slot = 0; slot < a.k_slots; ++slot) sk[slot * kKss + kj * kKs + d] = x;
      }
    }
    // Rotated pairs: slot 0 = Rot(p), slot 1 = Rot(B(p)) (raw for kClamp).
    for (int idx = tid; idx < kKeys * half; idx += kThreads) {
      const int kj = idx / half, i = idx % half;
      const int ia = a.neox ? i : 2 * i;
      const int ib = a.neox ? i + half : 2 * i + 1;
      float xa = 0.0f, xb = 0.0f;
      if (kj < kn) {
        const KV* kr = kbase + (j0 + kj) * hd;
        xa = ToF(kr[ia]);
        xb = ToF(kr[ib]);
      }
      if (need_near) {
        float c, s;
        CosSin(p0 + kj, s_finv[i], &c, &s);
        sk[kj * kKs + ia] = xa * c - xb * s;
        sk[kj * kKs + ib] = xa * s + xb * c;
      }
      if (need_far) {
        float oa = xa, ob = xb;
        if (a.kfar_rotate) {
          float c, s;
          CosSin(s_kb[kj], s_finv[i], &c, &s);
          oa = xa * c - xb * s;
          ob = xa * s + xb * c;
        }
        sk[kKss + kj * kKs + ia] = oa;
        sk[kKss + kj * kKs + ib] = ob;
      }
    }
    __syncthreads();

    // Scores of key `lane` against this warp's rows.
    const int64_t p = p0 + lane;
    const bool key_in = lane < kn;
    const int64_t kb = s_kb[lane], kmod = s_kmod[lane];
    float sn[kRowsPerWarp], sf[kRowsPerWarp];
MESA_ATTN_UNROLL
    for (int m = 0; m < kRowsPerWarp; ++m) sn[m] = sf[m] = 0.0f;
    if (need_near) Dots<NC>(smem, qoff_near, k_base + lane * kKs, nm, sn);
    if (need_far) {
      int qoff_far[kRowsPerWarp];
MESA_ATTN_UNROLL
      for (int m = 0; m < kRowsPerWarp; ++m) {
        const int row = warp + kWarps * m;
        const bool second = stair && m < nm && s_amod[row] < kmod;
        qoff_far[m] = qoff_near[m] + (second ? 2 : 1) * kQss;
      }
      Dots<NC>(smem, qoff_far, k_base + kKss + lane * kKs, nm, sf);
    }

    // Online softmax per row (warp-wide), P into shared memory for PV.
MESA_ATTN_UNROLL
    for (int m = 0; m < kRowsPerWarp; ++m) {
      if (m < nm) {
        const int row = warp + kWarps * m;
        const int64_t t = s_t[row];
        float s = -INFINITY;
        if (key_in && p <= t) {
          const int64_t d = t - p;
          const bool far = d >= a.thr;
          s = ((rope && far) ? sf[m] : sn[m]) * s_scale[row];
          if (alibi) {
            const int64_t rel =
                far ? s_a[row] - kb - ((stair && s_amod[row] < kmod) ? 1 : 0) : d;
            s -= s_slope[row] * static_cast<float>(rel - s_r0[row]);
          }
        }
        const float m_new = fmaxf(row_m[m], WarpMax(s));
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing seen yet
        const float e = expf(s - m_use);                        // masked: exp(-inf) = 0
        const float corr = expf(row_m[m] - m_use);              // first keys: 0
        row_l[m] = row_l[m] * corr + WarpSum(e);
        row_m[m] = m_new;
        sp[row * kKeys + lane] = e;
MESA_ATTN_UNROLL
        for (int c = 0; c < NC; ++c) acc[m][c] *= corr;
      }
    }
    __syncwarp();  // a warp reads only the P rows it wrote

    // acc += P V (keys past kn have P = 0 and V = 0).
    for (int kj = 0; kj < kn; kj += 4) {
      float vv[4][NC];
MESA_ATTN_UNROLL
      for (int u = 0; u < 4; ++u) {
MESA_ATTN_UNROLL
        for (int c = 0; c < NC; ++c) vv[u][c] = sv[(kj + u) * kHdp + lane + 32 * c];
      }
MESA_ATTN_UNROLL
      for (int m = 0; m < kRowsPerWarp; ++m) {
        if (m < nm) {
          const float4 pv = *reinterpret_cast<const float4*>(sp + (warp + kWarps * m) * kKeys + kj);
MESA_ATTN_UNROLL
          for (int c = 0; c < NC; ++c) {
            float x = acc[m][c];
            x = fmaf(pv.x, vv[0][c], x);
            x = fmaf(pv.y, vv[1][c], x);
            x = fmaf(pv.z, vv[2][c], x);
            x = fmaf(pv.w, vv[3][c], x);
            acc[m][c] = x;
          }
        }
      }
    }
  }

  // 4. Output rows (a row that saw no key: l = 0, acc = 0, a zero row) or partials.
MESA_ATTN_UNROLL
  for (int m = 0; m < kRowsPerWarp; ++m) {
    if (m < nm) {
      const int64_t oi = s_oi[warp + kWarps * m];
      if (a.part_acc == nullptr) {
        const float inv = row_l[m] > 0.0f ? 1.0f / row_l[m] : 0.0f;
        float* o = a.out + oi * hd;
MESA_ATTN_UNROLL
        for (int c = 0; c < NC; ++c) {
          const int d = lane + 32 * c;
          if (d < hd) o[d] = acc[m][c] * inv;
        }
      } else {
        const int64_t pi = static_cast<int64_t>(split) * a.n_q * a.n_head + oi;
        float* o = a.part_acc + pi * hd;
MESA_ATTN_UNROLL
        for (int c = 0; c < NC; ++c) {
          const int d = lane + 32 * c;
          if (d < hd) o[d] = acc[m][c];
        }
        if (lane == 0) {
          a.part_ml[2 * pi] = row_m[m];
          a.part_ml[2 * pi + 1] = row_l[m];
        }
      }
    }
  }
}

// out row = sum_s w_s acc_s / sum_s w_s l_s with w_s = exp(m_s - max m); zero row when
// no split saw a key.
__global__ void __launch_bounds__(128) AttnCombine(const float* part_acc, const float* part_ml,
                                                   int n_split, int64_t n_out_rows, int hd,
                                                   float* out) {
  const int64_t oi = blockIdx.x;
  if (oi >= n_out_rows) return;
  float mx = -INFINITY;
  for (int s = 0; s < n_split; ++s) mx = fmaxf(mx, part_ml[2 * (s * n_out_rows + oi)]);
  float l = 0.0f;
  for (int s = 0; s < n_split; ++s) {
    const float ms = part_ml[2 * (s * n_out_rows + oi)];
    if (ms != -INFINITY) l += expf(ms - mx) * part_ml[2 * (s * n_out_rows + oi) + 1];
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float sum = 0.0f;
    for (int s = 0; s < n_split; ++s) {
      const float ms = part_ml[2 * (s * n_out_rows + oi)];
      if (ms != -INFINITY) sum += expf(ms - mx) * part_acc[(s * n_out_rows + oi) * hd + d];
    }
    out[oi * hd + d] = sum * inv;
  }
}

inline bool ValidParams(const AttentionParams& p) {
  if (p.n_q < 0 || p.n_kv < 0 || p.n_kv > p.kv_stride) return false;
  if (p.n_head <= 0 || p.n_head_kv <= 0 || p.n_head % p.n_head_kv != 0) return false;
  if (p.n_head > INT32_MAX || p.n_head_kv > 65535) return false;
  if (p.head_dim <= 0 || p.head_dim > kMaxHeadDim) return false;
  if (p.q == nullptr || p.out == nullptr || p.q_pos == nullptr) return false;
  if (p.n_kv > 0 && (p.k == nullptr || p.v == nullptr)) return false;
  if (p.kv_type != DType::kF32 && p.kv_type != DType::kF16 && p.kv_type != DType::kBF16) return false;
  if (p.mode == AttentionPositionMode::kAlibi && p.alibi_slopes == nullptr) return false;
  if (p.rel.kind == RelativePosition::Kind::kStair && p.rel.e < 1) return false;
  if (p.rel.kind == RelativePosition::Kind::kSelfExtend && p.rel.group < 1) return false;
  if (p.mode == AttentionPositionMode::kRopeRaw) {
    if (p.rope.head_dim != p.head_dim) return false;
    if (p.rope.rope_dims < 0 || p.rope.rope_dims % 2 != 0 || p.rope.rope_dims > p.head_dim) {
      return false;
    }
  }
  const int64_t group = p.n_head / p.n_head_kv;
  if (p.n_q > INT64_MAX / group / p.n_head) return false;
  if ((p.n_q * group + kRows - 1) / kRows > INT32_MAX) return false;
  return true;
}

struct Plan {
  int64_t splits = 1;
  int64_t keys_per_split = 0;
};

inline Plan MakePlan(const AttentionParams& p) {
  Plan plan;
  const int64_t group = p.n_head / p.n_head_kv;
  const int64_t row_tiles = (p.n_q * group + kRows - 1) / kRows;
  const int64_t blocks = row_tiles * p.n_head_kv;
  const int64_t tiles = (p.n_kv + kKeys - 1) / kKeys;
  int64_t splits = 1;
  if (tiles >= 2 * kMinTilesPerSplit && blocks < kTargetBlocks) {
    splits = std::min({(kTargetBlocks + blocks - 1) / blocks, tiles / kMinTilesPerSplit,
                       kMaxSplits});
    splits = std::max<int64_t>(splits, 1);
  }
  const int64_t tiles_per_split = tiles == 0 ? 1 : (tiles + splits - 1) / splits;
  plan.splits = tiles == 0 ? 1 : (tiles + tiles_per_split - 1) / tiles_per_split;
  plan.keys_per_split = tiles_per_split * kKeys;
  return plan;
}

// Scratch bytes of the split-K partials (0: one split, no scratch).
inline size_t ScratchBytes(const AttentionParams& p, const Plan& plan) {
  if (plan.splits <= 1) return 0;
  return static_cast<size_t>(plan.splits) * p.n_q * p.n_head * (p.head_dim + 2) * sizeof(float);
}

// The kernel arguments for p (valid) split as `plan`, partials in `scratch`.
inline AttnArgs BuildArgs(const AttentionParams& p, const Plan& plan, void* scratch) {
  AttnArgs a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.out = p.out;
  a.q_pos = p.q_pos;
  a.slopes = p.alibi_slopes;
  a.n_q = p.n_q;
  a.n_kv = p.n_kv;
  a.kv_stride = p.kv_stride;
  a.kv_pos0 = p.kv_pos0;
  a.n_head = static_cast<int>(p.n_head);
  a.n_head_kv = static_cast<int>(p.n_head_kv);
  a.group = static_cast<int>(p.n_head / p.n_head_kv);
  a.rows = p.n_q * a.group;
  a.head_dim = static_cast<int>(p.head_dim);
  a.scale = p.scale;
  a.mode = p.mode == AttentionPositionMode::kNone    ? kModeNone
           : p.mode == AttentionPositionMode::kAlibi ? kModeAlibi
                                                     : kModeRope;
  using K = RelativePosition::Kind;
  a.kind = p.rel.kind == K::kExact   ? kKindExact
           : p.rel.kind == K::kStair ? kKindStair
           : p.rel.kind == K::kClamp ? kKindClamp
                                     : kKindSelfExtend;
  a.rel_n = p.rel.n;
  a.rel_e = std::max<int64_t>(p.rel.e, 1);
  a.window = p.rel.window;
  a.rel_g = std::max<int64_t>(p.rel.group, 1);
  a.thr = a.kind == kKindExact ? INT64_MAX : (a.kind == kKindStair ? p.rel.n : p.rel.window);
  a.logn_t = p.logn_train_length;
  a.q_slots = 1;
  a.k_slots = 1;
  if (a.mode == kModeRope) {
    a.rope_dims = static_cast<int>(p.rope.rope_dims);
    a.neox = p.rope.neox ? 1 : 0;
    for (int64_t i = 0; i < p.rope.rope_dims / 2; ++i) {
      const double inv_freq =
          std::pow(static_cast<double>(p.rope.freq_base), -2.0 * i / p.rope.rope_dims);
      a.finv[i] = static_cast<double>(p.rope.freq_scale) * inv_freq;
    }
    if (a.kind != kKindExact) {
      a.q_slots = a.kind == kKindStair ? 3 : 2;
      a.k_slots = 2;
      a.kfar_rotate = a.kind == kKindClamp ? 0 : 1;
    }
  }
  a.keys_per_split = plan.keys_per_split;
  const int64_t out_rows = p.n_q * p.n_head;
  if (plan.splits > 1) {
    a.part_acc = static_cast<float*>(scratch);
    a.part_ml = a.part_acc + plan.splits * out_rows * p.head_dim;
  }

  return a;
}

}  // namespace mesa::cuda::attn
