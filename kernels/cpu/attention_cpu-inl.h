// Body of the CPU attention unit kernel (see attention_cpu.cc for the algorithm),
// compiled once per ISA: attention_x86_avx512.cc (16-float vectors, 32 registers),
// attention_x86_avx2.cc (8-float vectors, 16 registers) and attention_cpu.cc
// (portable: 4-float vectors, SSE2 on x86-64). Define before including:
//   MESA_ATTN_NS     the namespace (avx512, avx2, generic)
//   MESA_ATTN_LANES  floats per vector (16, 8, 4)
//   MESA_ATTN_REGS   vector registers (32 or 16): picks the register tiles
// Tile shapes follow the register file: a QK^T / PV tile keeps KR x QV accumulators
// (keys or dims x row vectors) plus QV row vectors and one broadcast live, so with
// 16 registers it is 6 x 2 (or 12 x 1), with 32 it is 8 x 2 (or 16 x 1). Wider tiles
// than the register file spill every accumulator on each step: that was the AVX2
// kernel's 10x loss when it used 16-float GCC vectors (pairs of ymm) and 8 x 2 tiles.
//
// Only GCC/clang vector extensions and plain C here, and no calls to inline functions
// of other headers (std::min, std::fill, vector::operator[] ...): these files are
// compiled with ISA flags, and an out-of-line copy of such a function emitted here
// could be picked by the linker for code that must run on any x86-64. The exception is
// kernels/attention_variant.h (RelativePosition's forms), whose functions are always
// inlined and so never have an out-of-line copy.
#ifndef MESA_ATTN_NS
#error "define MESA_ATTN_NS, MESA_ATTN_LANES and MESA_ATTN_REGS first"
#endif

#include <cmath>
#include <cstdint>

#include "kernels/attention.h"
#include "kernels/cpu/attention_cpu_internal.h"

// The vector helpers below are always inlined into RunUnit, so the ABI note GCC emits
// for passing wide vectors never applies.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#define MESA_ATTN_INLINE inline __attribute__((always_inline))

namespace mesa::cpu::attn_internal::MESA_ATTN_NS {
namespace {

constexpr int kLanes = MESA_ATTN_LANES;
// Register tiles: QK^T and PV keep kTileKr x 2 (two row vectors) or kTileKr1 x 1
// accumulators live.
constexpr int kTileKr = MESA_ATTN_REGS >= 32 ? 8 : 6;
constexpr int kTileKr1 = MESA_ATTN_REGS >= 32 ? 16 : 12;
// Row path (decode): accumulators per PvRows call (rows x vectors of dims).
constexpr int kRowAcc = MESA_ATTN_REGS >= 32 ? 16 : 12;

typedef float V __attribute__((vector_size(4 * kLanes)));
typedef int32_t VI __attribute__((vector_size(4 * kLanes)));
typedef float VU __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));
typedef int32_t VIU __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));
typedef float V8 __attribute__((vector_size(32)));
typedef float V8U __attribute__((vector_size(32), aligned(4), may_alias));
typedef float V4 __attribute__((vector_size(16)));

MESA_ATTN_INLINE int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
MESA_ATTN_INLINE int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }
MESA_ATTN_INLINE int64_t Clamp(int64_t x, int64_t lo, int64_t hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}
MESA_ATTN_INLINE float MaxF(float a, float b) { return a > b ? a : b; }

MESA_ATTN_INLINE V Load(const float* p) { return *reinterpret_cast<const VU*>(p); }
MESA_ATTN_INLINE void Store(float* p, V v) { *reinterpret_cast<VU*>(p) = v; }
MESA_ATTN_INLINE VI LoadI(const int32_t* p) { return *reinterpret_cast<const VIU*>(p); }
MESA_ATTN_INLINE V Splat(float x) { return V{} + x; }
MESA_ATTN_INLINE V Max(V a, V b) { return a > b ? a : b; }
MESA_ATTN_INLINE V8 Load8(const float* p) { return *reinterpret_cast<const V8U*>(p); }
MESA_ATTN_INLINE void Store8(float* p, V8 v) { *reinterpret_cast<V8U*>(p) = v; }

// Horizontal sum / max by halving (__builtin_shufflevector: GCC >= 12 and clang).
MESA_ATTN_INLINE float HSum4(V4 v) {
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1);
  v += __builtin_shufflevector(v, v, 1, 0, 3, 2);
  return v[0];
}
MESA_ATTN_INLINE float HMax4(V4 v) {
  V4 w = __builtin_shufflevector(v, v, 2, 3, 0, 1);
  v = v > w ? v : w;
  w = __builtin_shufflevector(v, v, 1, 0, 3, 2);
  v = v > w ? v : w;
  return v[0];
}
MESA_ATTN_INLINE V4 Fold8(V8 v, bool max) {
  const V4 lo = __builtin_shufflevector(v, v, 0, 1, 2, 3);
  const V4 hi = __builtin_shufflevector(v, v, 4, 5, 6, 7);
  return max ? (lo > hi ? lo : hi) : lo + hi;
}
MESA_ATTN_INLINE V4 Fold(V v, bool max) {
#if MESA_ATTN_LANES == 16
  const V8 lo = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  const V8 hi = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  return Fold8(max ? (lo > hi ? lo : hi) : lo + hi, max);
#elif MESA_ATTN_LANES == 8
  return Fold8(v, max);
#else
  (void)max;
  return v;
#endif
}
MESA_ATTN_INLINE float HSum(V v) { return HSum4(Fold(v, false)); }
MESA_ATTN_INLINE float HMax(V v) { return HMax4(Fold(v, true)); }

#include "kernels/cpu/exp_poly-inl.h"  // ExpInRange

// exp(x) for x <= 0 (~2 ulp); x < -87 (including -inf from masking) gives exactly 0.
MESA_ATTN_INLINE V Exp(V x) {
  const V res = ExpInRange(x < -87.0f ? Splat(-87.0f) : x);
  return x < -87.0f ? V{} : res;
}

// Calls f(std::integral_constant-like tag) with the compile-time value r in [1, N)
// (tails of register tiles).
template <int N>
struct Tag {
  static constexpr int value = N;
};
template <int N, typename F>
MESA_ATTN_INLINE void WithTail(int64_t r, F&& f) {
  if constexpr (N > 1) {
    if (r == N - 1) {
      f(Tag<N - 1>{});
      return;
    }
    WithTail<N - 1>(r, f);
  }
}

// a . b over n floats (any n): two vector accumulators, a half-vector step and a
// scalar tail.
MESA_ATTN_INLINE float Dot(const float* a, const float* b, int64_t n) {
  int64_t d = 0;
  float s = 0.0f;
  if (n >= kLanes) {
    V s0{}, s1{};
    for (; d + 2 * kLanes <= n; d += 2 * kLanes) {
      s0 += Load(a + d) * Load(b + d);
      s1 += Load(a + d + kLanes) * Load(b + d + kLanes);
    }
    if (d + kLanes <= n) {
      s0 += Load(a + d) * Load(b + d);
      d += kLanes;
    }
    s = HSum(s0 + s1);
  }
  if constexpr (kLanes == 16) {
    if (d + 8 <= n) {
      s += HSum4(Fold8(Load8(a + d) * Load8(b + d), false));
      d += 8;
    }
  }
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

// out[k * os] = a_k . b_k for the 4 rows b_k = b + k * bs (n floats each), with a_k =
// a + k * as (as = 0: one query row against 4 keys): each key row is read once per
// vector step and the four sums are reduced together (a 4 x 4 transpose-add), not
// with one horizontal reduction per key. kSame: all a_k are a[0] (loaded once per step:
// 5 loads per 4 FMAs instead of 8).
template <bool kSame>
MESA_ATTN_INLINE void Dot4(const float* const a[4], const float* b, int64_t bs, int64_t n,
                           float* out, int64_t os) {
  int64_t d = 0;
  V4 r{};
  if (n >= kLanes) {
    V s0{}, s1{}, s2{}, s3{};
    for (; d + kLanes <= n; d += kLanes) {
      const V x0 = Load(a[0] + d);
      s0 += x0 * Load(b + d);
      s1 += (kSame ? x0 : Load(a[1] + d)) * Load(b + bs + d);
      s2 += (kSame ? x0 : Load(a[2] + d)) * Load(b + 2 * bs + d);
      s3 += (kSame ? x0 : Load(a[3] + d)) * Load(b + 3 * bs + d);
    }
    const V4 f0 = Fold(s0, false), f1 = Fold(s1, false), f2 = Fold(s2, false),
             f3 = Fold(s3, false);
    const V4 x01 = __builtin_shufflevector(f0, f1, 0, 1, 4, 5) +
                   __builtin_shufflevector(f0, f1, 2, 3, 6, 7);
    const V4 x23 = __builtin_shufflevector(f2, f3, 0, 1, 4, 5) +
                   __builtin_shufflevector(f2, f3, 2, 3, 6, 7);
    r = __builtin_shufflevector(x01, x23, 0, 2, 4, 6) +
        __builtin_shufflevector(x01, x23, 1, 3, 5, 7);
  }
  for (; d < n; ++d) {
    r += V4{a[0][d] * b[d], a[1][d] * b[bs + d], a[2][d] * b[2 * bs + d],
            a[3][d] * b[3 * bs + d]};
  }
  out[0] = r[0];
  out[os] = r[1];
  out[2 * os] = r[2];
  out[3 * os] = r[3];
}

// out[k * os] = a . (b + k * n) for the nk key rows (n floats each, contiguous).
MESA_ATTN_INLINE void DotKeys(const float* a, const float* b, int64_t n, int64_t nk, float* out,
                              int64_t os) {
  const float* const a4[4] = {a, a, a, a};
  int64_t k = 0;
  for (; k + 4 <= nk; k += 4) Dot4<true>(a4, b + k * n, n, n, out + k * os, os);
  for (; k < nk; ++k) out[k * os] = Dot(a, b + k * n, n);
}

// out = Rot(C, S) x for the rotated dims, given x's pair-swapped copy xw: with the
// table's sign pattern a rotation is two element-wise products, no shuffles.
MESA_ATTN_INLINE void RotateSwapped(const float* x, const float* xw, const float* cs, int64_t rd,
                                    float* out) {
  const float* c = cs;
  const float* s = cs + rd;
  for (int64_t d = 0; d < rd; ++d) out[d] = x[d] * c[d] + xw[d] * s[d];
}

// Rotated copy of a raw row of hd floats (dims past rd pass through).
MESA_ATTN_INLINE void RotateRow(const Ctx& c, const float* x, int64_t r, float* out) {
  const float* cs = c.table + r * 2 * c.rd;
  const int64_t half = c.rd / 2;
  if (c.p->rope.neox) {
    for (int64_t d = 0; d < half; ++d) {
      out[d] = x[d] * cs[d] + x[d + half] * cs[c.rd + d];
      out[d + half] = x[d + half] * cs[d + half] + x[d] * cs[c.rd + d + half];
    }
  } else {
    for (int64_t d = 0; d < c.rd; ++d) out[d] = x[d] * cs[d] + x[d ^ 1] * cs[c.rd + d];
  }
  for (int64_t d = c.rd; d < c.hd; ++d) out[d] = x[d];
}

// Raw-key scores of one row (query at t, scaled row qs, pair-swapped copy qw) for keys
// at positions p0 .. p0 + nvis - 1 (nvis <= kKb): the row is rotated once per run of
// keys sharing a rel (RelativePosition::Run: no per-pair switch or division; into
// qrot, kKb rows of hd), then every key is dotted with its run's rotated row, four keys
// at a time whatever the runs' lengths (Stair PE's runs are E keys, often fewer than
// four). out[k * ostride] = Rot(rel) q . key k.
MESA_ATTN_INLINE void RopeRowScores(const Ctx& c, const float* qs, const float* qw, int64_t t,
                                    int64_t tg, int64_t p0, int64_t nvis, const float* krows,
                                    float* qrot, float* out, int64_t ostride) {
  const int64_t hd = c.hd;
  const float* qa[kKb];
  float* q = qrot;
  for (int64_t k = 0; k < nvis; q += hd) {
    int64_t len;
    const int64_t rel = c.p->rel.Run(t, tg, p0 + k, &len);
    const int64_t end = Min(nvis, k + len);
    RotateSwapped(qs, qw, c.table + rel * 2 * c.rd, c.rd, q);
    for (int64_t d = c.rd; d < hd; ++d) q[d] = qs[d];
    for (; k < end; ++k) qa[k] = q;
  }
  int64_t k = 0;
  for (; k + 4 <= nvis; k += 4) {
    // Runs are contiguous: the first and last of four keys share a row iff all do.
    if (qa[k] == qa[k + 3]) {
      Dot4<true>(qa + k, krows + k * hd, hd, hd, out + k * ostride, ostride);
    } else {
      Dot4<false>(qa + k, krows + k * hd, hd, hd, out + k * ostride, ostride);
    }
  }
  for (; k < nvis; ++k) out[k * ostride] = Dot(qa[k], krows + k * hd, hd);
}

// out[k * ostride] -= slope * rel(t, p0 + k) for the nvis visible keys.
MESA_ATTN_INLINE void AlibiRow(const Ctx& c, float slope, int64_t t, int64_t tg, int64_t p0,
                               int64_t nvis, float* out, int64_t ostride) {
  for (int64_t k = 0; k < nvis;) {
    int64_t len;
    const int64_t rel = c.p->rel.Run(t, tg, p0 + k, &len);
    const int64_t end = Min(nvis, k + len);
    if (len == 1) {
      out[k * ostride] -= slope * static_cast<float>(rel);
      ++k;
      continue;
    }
    const float b = slope * static_cast<float>(rel);
    for (; k < end; ++k) out[k * ostride] -= b;
  }
}

// --- Block path (>= kMinBlockRows rows): scores and accumulators are transposed,
// [key][row] and [dim][row], so the softmax runs across rows in vector lanes and
// both products broadcast one key or value element against vectors of rows. nv row
// vectors (ceil(rows / kLanes)) are processed; padding rows hold zeros.

// st[k][QV vectors from cv] = sum_d key[k][d] * qt[d][...] for KR keys.
template <int KR, int QV>
MESA_ATTN_INLINE void QkT(const float* qt, const float* key, int64_t ks, int64_t hd, float* st) {
  V a[KR][QV] = {};
  for (int64_t d = 0; d < hd; ++d) {
    V q[QV];
    for (int c = 0; c < QV; ++c) q[c] = Load(qt + d * kQb + c * kLanes);
#pragma GCC unroll 16
    for (int kr = 0; kr < KR; ++kr) {
      // vector * scalar: GCC broadcasts straight from memory.
      const float b = key[kr * ks + d];
      for (int c = 0; c < QV; ++c) a[kr][c] += q[c] * b;
    }
  }
#pragma GCC unroll 16
  for (int kr = 0; kr < KR; ++kr) {
    for (int c = 0; c < QV; ++c) Store(st + kr * kQb + c * kLanes, a[kr][c]);
  }
}

template <int QV, int KR>
MESA_ATTN_INLINE void QkCols(const float* qt, const float* key, int64_t ks, int64_t hd,
                             int64_t kn, float* st) {
  int64_t k = 0;
  for (; k + KR <= kn; k += KR) QkT<KR, QV>(qt, key + k * ks, ks, hd, st + k * kQb);
  WithTail<KR>(kn - k, [&](auto r) {
    QkT<decltype(r)::value, QV>(qt, key + k * ks, ks, hd, st + k * kQb);
  });
}

MESA_ATTN_INLINE void QkTile(const float* qt, const float* key, int64_t ks, int64_t hd,
                             int64_t kn, int nv, float* st) {
  int c = 0;
  for (; c + 2 <= nv; c += 2) {
    QkCols<2, kTileKr>(qt + c * kLanes, key, ks, hd, kn, st + c * kLanes);
  }
  if (c < nv) QkCols<1, kTileKr1>(qt + c * kLanes, key, ks, hd, kn, st + c * kLanes);
}

// acct[d][QV vectors] += sum_k val[k][d] * pt[k][...] for DR dims.
template <int DR, int QV>
MESA_ATTN_INLINE void PvT(const float* pt, int64_t kn, const float* val, int64_t vs,
                          float* acct) {
  V a[DR][QV];
#pragma GCC unroll 16
  for (int dr = 0; dr < DR; ++dr) {
    for (int c = 0; c < QV; ++c) a[dr][c] = Load(acct + dr * kQb + c * kLanes);
  }
  for (int64_t k = 0; k < kn; ++k) {
    V pv[QV];
    for (int c = 0; c < QV; ++c) pv[c] = Load(pt + k * kQb + c * kLanes);
#pragma GCC unroll 16
    for (int dr = 0; dr < DR; ++dr) {
      const float b = val[k * vs + dr];
      for (int c = 0; c < QV; ++c) a[dr][c] += pv[c] * b;
    }
  }
#pragma GCC unroll 16
  for (int dr = 0; dr < DR; ++dr) {
    for (int c = 0; c < QV; ++c) Store(acct + dr * kQb + c * kLanes, a[dr][c]);
  }
}

template <int QV, int DR>
MESA_ATTN_INLINE void PvCols(const float* pt, int64_t kn, const float* val, int64_t vs,
                             int64_t hd, float* acct) {
  int64_t d = 0;
  for (; d + DR <= hd; d += DR) PvT<DR, QV>(pt, kn, val + d, vs, acct + d * kQb);
  WithTail<DR>(hd - d, [&](auto r) {
    PvT<decltype(r)::value, QV>(pt, kn, val + d, vs, acct + d * kQb);
  });
}

MESA_ATTN_INLINE void PvTile(const float* pt, int64_t kn, const float* val, int64_t vs,
                             int64_t hd, int nv, float* acct) {
  int c = 0;
  for (; c + 2 <= nv; c += 2) {
    PvCols<2, kTileKr>(pt + c * kLanes, kn, val, vs, hd, acct + c * kLanes);
  }
  if (c < nv) PvCols<1, kTileKr1>(pt + c * kLanes, kn, val, vs, hd, acct + c * kLanes);
}

// Online softmax over one tile of transposed scores: turns st into probabilities,
// rescales the accumulators of rows whose running max moved.
MESA_ATTN_INLINE void SoftmaxTile(float* st, int64_t kn, int64_t hd, int nv, const Bufs& w) {
  for (int c = 0; c < nv; ++c) {
    V mx = Splat(-INFINITY);
    for (int64_t k = 0; k < kn; ++k) mx = Max(mx, Load(st + k * kQb + c * kLanes));
    const V m_old = Load(w.m + c * kLanes);
    const V m_new = Max(m_old, mx);
    // Rows with nothing visible yet keep m = -inf; subtracting 0 keeps exp at 0.
    const V m_use = m_new == -INFINITY ? V{} : m_new;
    // Rows still seeing nothing keep corr = 1, so only a moved max rescales.
    const V corr = m_new == -INFINITY ? Splat(1.0f) : Exp(m_old - m_use);
    V sum{};
    for (int64_t k = 0; k < kn; ++k) {
      const V e = Exp(Load(st + k * kQb + c * kLanes) - m_use);
      Store(st + k * kQb + c * kLanes, e);
      sum += e;
    }
    Store(w.m + c * kLanes, m_new);
    for (int l = 0; l < kLanes; ++l) {
      w.l[c * kLanes + l] = w.l[c * kLanes + l] * corr[l] + sum[l];
    }
    if (HMax(-corr) > -1.0f) {  // some corr < 1
      float* acct = w.acc + c * kLanes;
      for (int64_t d = 0; d < hd; ++d) Store(acct + d * kQb, Load(acct + d * kQb) * corr);
    }
  }
}

// Builds a transposed query block [hdp][kQb] from the scaled rows, rotated per row
// by rot(row) (rot < 0: no rotation).
template <typename RotFn>
MESA_ATTN_INLINE void BuildQt(const Ctx& c, const Bufs& w, int64_t n, RotFn rot, float* qt) {
  for (int64_t r = 0; r < n; ++r) {
    const float* qs = w.qs + r * c.hdp;
    const int64_t pos = rot(r);
    const float* src = qs;
    if (pos >= 0) {
      RotateSwapped(qs, w.qw + r * c.hdp, c.table + pos * 2 * c.rd, c.rd, w.qr);
      for (int64_t d = c.rd; d < c.hd; ++d) w.qr[d] = qs[d];
      src = w.qr;
    }
    for (int64_t d = 0; d < c.hd; ++d) qt[d * kQb + r] = src[d];
  }
  for (int64_t r = n; r < c.qb; ++r) {
    for (int64_t d = 0; d < c.hd; ++d) qt[d * kQb + r] = 0.0f;
  }
}

MESA_ATTN_INLINE void RunBlock(const Ctx& c, const Unit& u, const Bufs& w, int64_t n,
                               int64_t jend, int64_t vis_min, int64_t tmin, int64_t tmax) {
  const AttentionParams& p = *c.p;
  const int64_t hd = c.hd;
  const int nv = static_cast<int>((n + kLanes - 1) / kLanes);
  const float* kbase = static_cast<const float*>(p.k) + u.kvh * p.kv_stride * hd;
  const float* vbase = static_cast<const float*>(p.v) + u.kvh * p.kv_stride * hd;
  const RelativePosition& rp = p.rel;
  for (int64_t d = 0; d < hd; ++d) {
    for (int cc = 0; cc < nv; ++cc) Store(w.acc + d * kQb + cc * kLanes, V{});
  }
  bool have_raw = false, have_abs = false, have_far = false, have_stair = false;
  for (int64_t j0 = u.ja; j0 < jend; j0 += kKb) {
    const int64_t kn = Min(kKb, jend - j0);
    const int64_t p0 = p.kv_pos0 + j0, plast = p0 + kn - 1;
    float* st = w.s;
    const float* krows = kbase + j0 * hd;
    const float* vrows = vbase + j0 * hd;
    if (c.g > 1) {
      for (int64_t k = 0; k < kn; ++k) w.pg[k] = rp.FarKey(p0 + k);
    }
    // Which route: raw keys and queries; rel = d over the tile (rotate both at their
    // absolute positions); a far region with rel = FarQuery(t) - FarKey(p) (ReRoPE,
    // Self-Extend); Stair PE's far region (two such products and a select on the
    // phases); or per row. The far forms are RelativePosition's (attention_variant.h).
    enum { kRaw, kAbs, kFar, kStairFar, kPerRow } route = kRaw;
    if (c.rope) {
      const int64_t dmax = tmax - p0, dmin = tmin - plast;
      route = kPerRow;
      switch (rp.kind) {
        case RelativePosition::Kind::kExact: route = kAbs; break;
        case RelativePosition::Kind::kStair:
          if (rp.e == 1 || dmax < rp.n) route = kAbs;
          else if (dmin >= rp.n) route = kStairFar;
          break;
        case RelativePosition::Kind::kClamp:
          if (dmax <= rp.window) route = kAbs;
          else if (dmin >= rp.window) route = kFar;
          break;
        case RelativePosition::Kind::kSelfExtend:
          if (rp.group == 1 || dmax < rp.window) route = kAbs;
          else if (dmin >= rp.window) route = kFar;
          break;
      }
    }
    if (route == kRaw) {
      if (!have_raw) {
        BuildQt(c, w, n, [](int64_t) { return int64_t{-1}; }, w.qt_raw);
        have_raw = true;
      }
      QkTile(w.qt_raw, krows, hd, hd, kn, nv, st);
    } else if (route == kAbs || route == kFar) {
      const bool far = route == kFar;
      float* qt = far ? w.qt_far : w.qt_abs;
      bool& have = far ? have_far : have_abs;
      if (!have) {
        if (!far) {
          BuildQt(c, w, n, [&](int64_t r) { return w.t[r]; }, qt);
        } else {
          BuildQt(c, w, n, [&](int64_t r) { return rp.FarQuery(w.t[r]); }, qt);
        }
        have = true;
      }
      const float* keys = krows;
      if (!(far && rp.kind == RelativePosition::Kind::kClamp)) {  // ReRoPE: FarKey(p) = 0
        for (int64_t k = 0; k < kn; ++k) {
          RotateRow(c, krows + k * hd, far ? w.pg[k] : p0 + k, w.kb + k * hd);
        }
        keys = w.kb;
      }
      QkTile(qt, keys, hd, hd, kn, nv, st);
    } else if (route == kStairFar) {
      // Every pair of the tile has d = t - p >= n, so with a = t - n >= p >= 0:
      //   rel = n + floor((a - p) / e) = n + floor(a / e) - floor(p / e) - [a % e < p % e]
      //       = FarQuery(t) - FarKey(p) - [FarQueryPhase(t) < FarKeyPhase(p)].
      // Two products against keys rotated by FarKey(p): queries rotated by FarQuery(t)
      // (st) and by one less (s1), then per pair the one whose rel holds. Each row meets
      // a new stair level every e keys: per-row rotations ran at a fraction of the block
      // products' speed.
      if (!have_stair) {
        BuildQt(c, w, n, [&](int64_t r) { return rp.FarQuery(w.t[r]); }, w.qt_far);
        // rot < 0 (n = 0, first level) leaves the row raw: such rows never pick s1.
        BuildQt(c, w, n, [&](int64_t r) { return rp.FarQuery(w.t[r]) - 1; }, w.qt_far1);
        for (int64_t r = 0; r < c.qb; ++r) {
          w.amod[r] = r < n ? static_cast<int32_t>(rp.FarQueryPhase(w.t[r])) : 0;
        }
        have_stair = true;
      }
      for (int64_t k = 0; k < kn; ++k) {
        RotateRow(c, krows + k * hd, rp.FarKey(p0 + k), w.kb + k * hd);
      }
      QkTile(w.qt_far, w.kb, hd, hd, kn, nv, st);
      QkTile(w.qt_far1, w.kb, hd, hd, kn, nv, w.s1);
      for (int64_t k = 0; k < kn; ++k) {
        const VI pm = VI{} + static_cast<int32_t>(rp.FarKeyPhase(p0 + k));
        for (int cc = 0; cc < nv; ++cc) {
          const V s0 = Load(st + k * kQb + cc * kLanes), s1 = Load(w.s1 + k * kQb + cc * kLanes);
          Store(st + k * kQb + cc * kLanes, LoadI(w.amod + cc * kLanes) < pm ? s1 : s0);
        }
      }
    } else {
      // Rotate each row once per run of keys sharing a rel, dot each key.
      for (int64_t r = 0; r < n; ++r) {
        const int64_t nvis = Clamp(w.vis[r] - j0, 0, kn);
        RopeRowScores(c, w.qs + r * c.hdp, w.qw + r * c.hdp, w.t[r], w.tg[r], p0, nvis, krows,
                      w.kb, st + r, kQb);
      }
    }

    if (c.alibi) {
      if (rp.kind == RelativePosition::Kind::kExact) {
        for (int64_t k = 0; k < kn; ++k) {
          for (int cc = 0; cc < nv; ++cc) {
            const V d = Load(w.tf + cc * kLanes) - static_cast<float>(p0 + k);
            Store(st + k * kQb + cc * kLanes,
                  Load(st + k * kQb + cc * kLanes) - Load(w.slope + cc * kLanes) * d);
          }
        }
      } else {
        for (int64_t r = 0; r < n; ++r) {
          const int64_t nvis = Clamp(w.vis[r] - j0, 0, kn);
          AlibiRow(c, w.slope[r], w.t[r], w.tg[r], p0, nvis, st + r, kQb);
        }
      }
    }
    if (j0 + kn > vis_min) {  // some row does not see the whole tile
      for (int64_t k = 0; k < kn; ++k) {
        const VI j = VI{} + static_cast<int32_t>(j0 + k);
        for (int cc = 0; cc < nv; ++cc) {
          const V x = Load(st + k * kQb + cc * kLanes);
          Store(st + k * kQb + cc * kLanes,
                j < LoadI(w.vis + cc * kLanes) ? x : Splat(-INFINITY));
        }
      }
    }
    SoftmaxTile(st, kn, hd, nv, w);
    PvTile(st, kn, vrows, hd, hd, nv, w.acc);
  }
}

// --- Row path (decode: fewer rows than kMinBlockRows): scores [row][key], one dot
// per key, accumulators [row][dim].

// acc[r][0..W vectors) += sum_k p[r][k] * v[k][0..W vectors) for R rows.
template <int R, int W>
MESA_ATTN_INLINE void PvRows(const float* p, int64_t kn, const float* v, int64_t vstride,
                             float* acc, int64_t hdp) {
  V a[R][W];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < W; ++c) a[r][c] = Load(acc + r * hdp + c * kLanes);
  }
  for (int64_t k = 0; k < kn; ++k) {
    V vv[W];
    for (int c = 0; c < W; ++c) vv[c] = Load(v + k * vstride + c * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float b = p[r * kKb + k];
      for (int c = 0; c < W; ++c) a[r][c] += vv[c] * b;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < W; ++c) Store(acc + r * hdp + c * kLanes, a[r][c]);
  }
}

// PvRows for the last 8 dims of rows whose width is 8 mod 16 (16-lane variant only).
template <int R>
MESA_ATTN_INLINE void PvRows8(const float* p, int64_t kn, const float* v, int64_t vstride,
                              float* acc, int64_t hdp) {
  V8 a[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a[r] = Load8(acc + r * hdp);
  for (int64_t k = 0; k < kn; ++k) {
    const V8 vv = Load8(v + k * vstride);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) a[r] += vv * p[r * kKb + k];
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) Store8(acc + r * hdp, a[r]);
}

// Over `dims` dims of each value row: a multiple of 8 (hd itself when it is one, so
// value rows are read in place; otherwise hdp over zero-padded copies).
template <int R>
MESA_ATTN_INLINE void PvBlock(const float* p, int64_t kn, const float* v, int64_t vstride,
                              float* acc, int64_t hdp, int64_t dims) {
  constexpr int kW = kRowAcc / R < 4 ? kRowAcc / R : 4;
  int64_t d = 0;
  for (; d + kW * kLanes <= dims; d += kW * kLanes) {
    PvRows<R, kW>(p, kn, v + d, vstride, acc + d, hdp);
  }
  WithTail<kW>((dims - d) / kLanes, [&](auto w) {
    PvRows<R, decltype(w)::value>(p, kn, v + d, vstride, acc + d, hdp);
  });
  d += (dims - d) / kLanes * kLanes;
  if constexpr (kLanes == 16) {
    if (d < dims) PvRows8<R>(p, kn, v + d, vstride, acc + d, hdp);
  }
}

MESA_ATTN_INLINE void RunRows(const Ctx& c, const Unit& u, const Bufs& w, int64_t n,
                              int64_t jend) {
  const AttentionParams& p = *c.p;
  const int64_t hd = c.hd, hdp = c.hdp;
  const float* kbase = static_cast<const float*>(p.k) + u.kvh * p.kv_stride * hd;
  const float* vbase = static_cast<const float*>(p.v) + u.kvh * p.kv_stride * hd;
  // V rows are read in whole vectors of 8 (or kLanes < 8) floats: copied to zero-padded
  // rows only when hd is not a multiple of that.
  constexpr int kVw = kLanes < 8 ? kLanes : 8;
  const bool padded = hd % kVw != 0;
  const int64_t dims = padded ? hdp : hd;
  for (int64_t x = 0; x < n * hdp; ++x) w.acc[x] = 0.0f;
  for (int64_t j0 = u.ja; j0 < jend; j0 += kKb) {
    const int64_t kn = Min(kKb, jend - j0);
    const int64_t p0 = p.kv_pos0 + j0;
    const float* krows = kbase + j0 * hd;
    const float* vrows = vbase + j0 * hd;
    // Decode streams K and V from DRAM: ask for the next tile while this one computes
    // (the hardware prefetchers alone keep too few lines in flight on one core).
    if (j0 + kKb < jend) {
      const int64_t next = Min(kKb, jend - j0 - kKb) * hd;
      for (int64_t x = 0; x < next; x += 16) {
        __builtin_prefetch(krows + kKb * hd + x);
        __builtin_prefetch(vrows + kKb * hd + x);
      }
    }
    if (padded) {
      for (int64_t k = 0; k < kn; ++k) {
        for (int64_t d = 0; d < hd; ++d) w.vb[k * hdp + d] = vrows[k * hd + d];
      }
      vrows = w.vb;
    }
    float* s = w.s;
    for (int64_t r = 0; r < n; ++r) {
      float* row = s + r * kKb;
      const int64_t nvis = Clamp(w.vis[r] - j0, 0, kn);
      const float* qs = w.qs + r * hdp;
      if (!c.rope) {
        DotKeys(qs, krows, hd, nvis, row, 1);
      } else {
        RopeRowScores(c, qs, w.qw + r * hdp, w.t[r], w.tg[r], p0, nvis, krows, w.kb, row, 1);
      }
      if (nvis == 0) {
        for (int64_t k = 0; k < kKb; ++k) row[k] = 0.0f;
        continue;
      }
      if (c.alibi) AlibiRow(c, w.slope[r], w.t[r], w.tg[r], p0, nvis, row, 1);
      for (int64_t k = nvis; k < kKb; ++k) row[k] = -INFINITY;
      V mx = Load(row);
      for (int cc = 1; cc < kKb / kLanes; ++cc) mx = Max(mx, Load(row + cc * kLanes));
      const float m_new = MaxF(w.m[r], HMax(mx));
      const float corr = __builtin_expf(w.m[r] - m_new);  // 0 on the first tile
      V sum{};
      for (int cc = 0; cc < kKb / kLanes; ++cc) {
        const V e = Exp(Load(row + cc * kLanes) - m_new);
        Store(row + cc * kLanes, e);
        sum += e;
      }
      w.l[r] = w.l[r] * corr + HSum(sum);
      if (corr != 1.0f) {
        float* acc = w.acc + r * hdp;
        for (int64_t d = 0; d < hdp; ++d) acc[d] *= corr;
      }
      w.m[r] = m_new;
    }
    const int64_t vs = padded ? hdp : hd;
    int64_t r = 0;
    for (; r + 4 <= n; r += 4) PvBlock<4>(s + r * kKb, kn, vrows, vs, w.acc + r * hdp, hdp, dims);
    switch (n - r) {
      case 3: PvBlock<3>(s + r * kKb, kn, vrows, vs, w.acc + r * hdp, hdp, dims); break;
      case 2: PvBlock<2>(s + r * kKb, kn, vrows, vs, w.acc + r * hdp, hdp, dims); break;
      case 1: PvBlock<1>(s + r * kKb, kn, vrows, vs, w.acc + r * hdp, hdp, dims); break;
      default: break;
    }
  }
}

}  // namespace

void RunUnit(const Ctx& c, const Unit& u, const Bufs& w) {
  const AttentionParams& p = *c.p;
  const int64_t hd = c.hd, hdp = c.hdp;
  const int64_t rows = p.n_q * c.group;
  const int64_t row0 = static_cast<int64_t>(u.block) * c.qb;
  const int64_t n = Min(c.qb, rows - row0);

  // Rows: scaled queries (scale and log-n folded in), zero padded, plus pair-swapped
  // copies for rotations.
  int64_t tmin = INT64_MAX, tmax = INT64_MIN, vis_max = 0, vis_min = INT64_MAX;
  for (int64_t r = 0; r < c.qb; ++r) {
    w.m[r] = -INFINITY;
    w.l[r] = 0.0;
    if (r >= n) {
      w.vis[r] = 0;
      w.tf[r] = 0.0f;
      w.slope[r] = 0.0f;
      continue;
    }
    const int64_t i = (row0 + r) / c.group;
    const int64_t h = u.kvh * c.group + (row0 + r) % c.group;
    const int64_t t = p.q_pos[i];
    w.qi[r] = i;
    w.head[r] = h;
    w.t[r] = t;
    w.tf[r] = static_cast<float>(t);
    w.tg[r] = c.g > 1 ? t / c.g : t;
    w.vis[r] = static_cast<int32_t>(Clamp(t - p.kv_pos0 + 1, 0, p.n_kv));
    w.slope[r] = c.alibi ? p.alibi_slopes[h] : 0.0f;
    vis_max = Max64(vis_max, w.vis[r]);
    vis_min = Min(vis_min, w.vis[r]);
    tmin = Min(tmin, t);
    tmax = Max64(tmax, t);
    const float qscale = static_cast<float>(p.scale * LognFactor(t, p.logn_train_length));
    const float* src = p.q + (i * p.n_head + h) * hd;
    float* qs = w.qs + r * hdp;
    for (int64_t d = 0; d < hd; ++d) qs[d] = src[d] * qscale;
    for (int64_t d = hd; d < hdp; ++d) qs[d] = 0.0f;
    if (c.rope) {
      float* qw = w.qw + r * hdp;
      for (int64_t d = 0; d < c.rd; ++d) qw[d] = qs[c.partner[d]];
    }
  }
  const int64_t jend = Min(u.jb, vis_max);
  const bool block = n >= kMinBlockRows;
  if (block) {
    RunBlock(c, u, w, n, jend, vis_min, tmin, tmax);
  } else {
    RunRows(c, u, w, n, jend);
  }

  for (int64_t r = 0; r < n; ++r) {
    // Block path accumulators are [dim][row], row path ones [row][dim].
    const int64_t at = block ? kQb : 1;
    const float* acc = block ? w.acc + r : w.acc + r * hdp;
    if (u.partial != nullptr) {
      float* dst = u.partial + r * (hdp + 2);
      dst[0] = w.m[r];
      dst[1] = static_cast<float>(w.l[r]);
      for (int64_t d = 0; d < hd; ++d) dst[2 + d] = acc[d * at];
      continue;
    }
    float* out = p.out + (w.qi[r] * p.n_head + w.head[r]) * hd;
    const float inv = w.l[r] > 0 ? static_cast<float>(1.0 / w.l[r]) : 0.0f;
    for (int64_t d = 0; d < hd; ++d) out[d] = acc[d * at] * inv;
  }
}

}  // namespace mesa::cpu::attn_internal::MESA_ATTN_NS

#undef MESA_ATTN_INLINE
