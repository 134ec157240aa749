// CPU attention (kernels/attention.h): a flash-attention style kernel for every
// position mode. Work is split into units (kv head, block of kQb rows, key range)
// handed to the pool's threads dynamically, largest first; a row is one (query,
// head) pair, and the heads sharing a kv head sit in one unit so they share every
// key and value load (decode reads the cache once per kv head, not once per head).
// A unit walks its keys in tiles of kKb with an online softmax (running max and sum
// per row), so memory per thread is a few small tiles whatever n_kv is. With at
// least kMinBlockRows rows, scores and accumulators are kept transposed ([key][row],
// [dim][row]) so both products broadcast one key/value element against vectors of
// rows and the softmax runs across rows in vector lanes; decode-sized units dot
// each key instead. Too few units for the pool (decode) split the keys as well and
// merge the partial softmax states.
//
// Raw-key RoPE (kRopeRaw) needs Rot(rel(t, p)) q . k per pair. Two routes:
//   - separable tiles: where rel(t, p) = A(t) - B(p) for every visible pair of the
//     tile (exact windows: A = t, B = p; ReRoPE's clamped region: A = window, B = 0;
//     Self-Extend's grouped region: A = t/g + w - w/g, B = p/g), Rot(A) q . Rot(B) k
//     is the same logit, so each row is rotated once per unit, each key once per tile,
//     and the scores are a plain block product;
//   - other tiles (Stair PE's woven region, tiles straddling a boundary): each row is
//     rotated once per distinct rel value it meets, then dotted with the keys.
// Rotations use a cos/sin table indexed by position, built in double and cached
// across calls (it depends only on the rotary parameters).
//
// Hot loops use GCC vector extensions (16 floats) inside one multiversioned function
// per unit (AVX-512, AVX2+FMA, baseline); every helper is always_inline into it.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/nn.h"

// The 64-byte vector helpers below are always inlined into the multiversioned unit
// function, so the ABI note GCC emits for them never applies.
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && !defined(__clang__)
#define MESA_ATTN_MULTIVERSION \
  __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define MESA_ATTN_MULTIVERSION
#endif
#define MESA_ATTN_INLINE inline __attribute__((always_inline))

namespace mesa {

void AlibiSlopes(int64_t n_head, float max_bias, float* slopes) {
  // The largest power of two <= n_head gets the geometric sequence; extra heads
  // interleave a second one (as in the ALiBi paper and llama.cpp).
  int64_t n_log2 = 1;
  while (n_log2 * 2 <= n_head) n_log2 *= 2;
  const double m0 = std::pow(2.0, -static_cast<double>(max_bias) / n_log2);
  const double m1 = std::pow(2.0, -static_cast<double>(max_bias) / 2.0 / n_log2);
  for (int64_t h = 0; h < n_head; ++h) {
    slopes[h] = h < n_log2 ? static_cast<float>(std::pow(m0, h + 1))
                           : static_cast<float>(std::pow(m1, 2 * (h - n_log2) + 1));
  }
}

namespace cpu {
namespace attn_internal {

constexpr int kLanes = 16;
constexpr int kQb = 32;  // rows (query, head of one kv group) per unit: 2 vectors
constexpr int kKb = 64;  // keys per tile
// Below this many rows the block kernels waste most vector lanes: dot each key.
constexpr int kMinBlockRows = 8;

typedef float V16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));
typedef float V16U __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t I16U __attribute__((vector_size(64), aligned(4), may_alias));

MESA_ATTN_INLINE V16 Load(const float* p) { return *reinterpret_cast<const V16U*>(p); }
MESA_ATTN_INLINE void Store(float* p, V16 v) { *reinterpret_cast<V16U*>(p) = v; }
MESA_ATTN_INLINE I16 LoadI(const int32_t* p) { return *reinterpret_cast<const I16U*>(p); }
MESA_ATTN_INLINE V16 Splat(float x) { return V16{} + x; }
MESA_ATTN_INLINE V16 Max(V16 a, V16 b) { return a > b ? a : b; }
MESA_ATTN_INLINE float HSum(V16 v) {
  v += __builtin_shuffle(v, I16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  v += __builtin_shuffle(v, I16{4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3});
  v += __builtin_shuffle(v, I16{2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1});
  return v[0] + v[1];
}
MESA_ATTN_INLINE float HMax(V16 v) {
  v = Max(v, __builtin_shuffle(v, I16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
  v = Max(v, __builtin_shuffle(v, I16{4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3}));
  v = Max(v, __builtin_shuffle(v, I16{2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1}));
  return std::max(v[0], v[1]);
}

// exp(x) for x <= 0 (Cephes expf: range reduction by ln 2, degree-6 polynomial,
// ~2 ulp); x < -87 (including -inf from masking) gives exactly 0.
MESA_ATTN_INLINE V16 Exp(V16 x) {
  const V16 xc = x < -87.0f ? Splat(-87.0f) : x;
  const V16 magic = Splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const V16 fx = xc * 1.44269504088896341f + magic;
  const V16 n = fx - magic;
  V16 r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V16 y = Splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const I16 bits = (__builtin_convertvector(n, I16) + 127) << 23;
  const V16 res = y * reinterpret_cast<const V16&>(bits);
  return x < -87.0f ? V16{} : res;
}

typedef float V8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef float V8U __attribute__((vector_size(32), aligned(4), may_alias));
MESA_ATTN_INLINE V8 Load8(const float* p) { return *reinterpret_cast<const V8U*>(p); }
MESA_ATTN_INLINE void Store8(float* p, V8 v) { *reinterpret_cast<V8U*>(p) = v; }
MESA_ATTN_INLINE float HSum8(V8 v) {
  v += __builtin_shuffle(v, I8{4, 5, 6, 7, 0, 1, 2, 3});
  v += __builtin_shuffle(v, I8{2, 3, 0, 1, 2, 3, 0, 1});
  return v[0] + v[1];
}

// a . b over n floats (any n). Short rows (small head_dim, as in decode of small
// models) skip the 16-lane reduction: an 8-lane step and a scalar tail, no chain of
// dependent scalar adds over the whole row.
MESA_ATTN_INLINE float Dot(const float* a, const float* b, int64_t n) {
  int64_t d = 0;
  float s = 0.0f;
  if (n >= kLanes) {
    V16 s0{}, s1{};
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
  if (d + 8 <= n) {
    s += HSum8(Load8(a + d) * Load8(b + d));
    d += 8;
  }
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

// Relative positions walked in runs: for a query at t and keys at pos, pos + 1, ...
// (d = t - pos >= 0 falling), rel is constant over runs (a stair level, ReRoPE's
// clamped region, a Self-Extend group) or rises by one per key (exact windows). A
// per-row loop asks once per run, so there is no per-pair switch, division or table
// (and no per-call O(n) setup such as a table of R(d)).
struct RelCalc {
  RelativePosition::Kind kind;
  int64_t n, e;          // kStair
  int64_t window, g, wg;  // kClamp / kSelfExtend: window, group, window - window/group
  // rel(t, pos), and in *len (>= 1) how many keys from pos on share it.
  MESA_ATTN_INLINE int64_t Run(int64_t t, int64_t tg, int64_t pos, int64_t* len) const {
    const int64_t d = t - pos;
    *len = 1;
    switch (kind) {
      case RelativePosition::Kind::kExact: return d;
      case RelativePosition::Kind::kStair: {
        if (d < n) return d;
        const int64_t level = (d - n) / e;
        *len = d - n - level * e + 1;  // down to d = n + level * e
        return n + level;
      }
      case RelativePosition::Kind::kClamp:
        if (d < window) return d;
        *len = d - window + 1;
        return window;
      case RelativePosition::Kind::kSelfExtend: {
        if (d < window) return d;
        const int64_t pg = pos / g;
        *len = std::min(pg * g + g - pos, d - window + 1);
        return tg - pg + wg;
      }
    }
    return d;
  }
};

// Everything shared by the units of one call (read-only while they run).
struct Ctx {
  const AttentionParams* p;
  int64_t hd, hdp, group;
  bool rope, alibi;
  int64_t rd;              // rotated dims
  const float* table;      // [position][2 * rd]: C then S (see RotateSwapped)
  const int32_t* partner;  // [rd]: the dim each rotated dim pairs with
  RelCalc rel;
  int64_t g;               // Self-Extend group (1 otherwise)
};

// A unit: rows [row0, row0 + kQb) of kv head kvh over keys [ja, jb). Row R of a kv
// head is query R / group, head kvh * group + R % group: the heads sharing a kv head
// share every key and value load.
struct Unit {
  int32_t kvh, block, split;
  int64_t ja, jb;  // multiples of kKb except at the end
  float* partial;  // split units: [kQb][hdp + 2] (m, l, acc); null: write `out`
};

// Per-thread buffers; units never share them.
struct Scratch {
  std::vector<float> qs, qw, qt_raw, qt_abs, qt_far, kb, vb, s, acc, qr;
  std::vector<double> l;
  std::vector<float> m, slope, tf;
  std::vector<int32_t> vis;
  std::vector<int64_t> t, tg, pg, qi, head;
  void Reserve(int64_t hdp) {
    auto grow = [](auto& v, size_t n) {
      if (v.size() < n) v.assign(n, 0);
    };
    for (auto* v : {&qs, &qw, &qt_raw, &qt_abs, &qt_far, &kb, &vb, &acc}) grow(*v, kQb * hdp);
    grow(kb, kKb * hdp);
    grow(vb, kKb * hdp);
    grow(s, kQb * kKb);
    grow(qr, hdp);
    for (auto* v : {&m, &slope, &tf}) grow(*v, kQb);
    grow(l, kQb);
    grow(vis, kQb);
    for (auto* v : {&t, &tg, &qi, &head}) grow(*v, kQb);
    grow(pg, kKb);
  }
};

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
// at positions p0 .. p0 + nvis - 1: the row is rotated once per run of keys sharing a
// rel, then dotted with each key of the run. out[k * ostride] = Rot(rel) q . key k.
MESA_ATTN_INLINE void RopeRowScores(const Ctx& c, const float* qs, const float* qw, int64_t t,
                                    int64_t tg, int64_t p0, int64_t nvis, const float* krows,
                                    float* qr, float* out, int64_t ostride) {
  const int64_t hd = c.hd;
  for (int64_t d = c.rd; d < hd; ++d) qr[d] = qs[d];
  for (int64_t k = 0; k < nvis;) {
    int64_t len;
    const int64_t rel = c.rel.Run(t, tg, p0 + k, &len);
    const int64_t end = std::min(nvis, k + len);
    RotateSwapped(qs, qw, c.table + rel * 2 * c.rd, c.rd, qr);
    for (; k < end; ++k) out[k * ostride] = Dot(qr, krows + k * hd, hd);
  }
}

// out[k * ostride] -= slope * rel(t, p0 + k) for the nvis visible keys.
MESA_ATTN_INLINE void AlibiRow(const Ctx& c, float slope, int64_t t, int64_t tg, int64_t p0,
                               int64_t nvis, float* out, int64_t ostride) {
  for (int64_t k = 0; k < nvis;) {
    int64_t len;
    const int64_t rel = c.rel.Run(t, tg, p0 + k, &len);
    const int64_t end = std::min(nvis, k + len);
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
// both products broadcast one key or value element against a vector of rows.

// st[k][0..16 QV) = sum_d key[k][d] * qt[d][0..16 QV) for KR keys.
template <int KR, int QV>
MESA_ATTN_INLINE void QkT(const float* qt, const float* key, int64_t ks, int64_t hd, float* st) {
  V16 a[KR][QV] = {};
  for (int64_t d = 0; d < hd; ++d) {
    V16 q[QV];
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

template <int QV>
MESA_ATTN_INLINE void QkTile(const float* qt, const float* key, int64_t ks, int64_t hd,
                             int64_t kn, float* st) {
  constexpr int kStep = 16 / QV;
  int64_t k = 0;
  for (; k + kStep <= kn; k += kStep) QkT<kStep, QV>(qt, key + k * ks, ks, hd, st + k * kQb);
  for (; k < kn; ++k) QkT<1, QV>(qt, key + k * ks, ks, hd, st + k * kQb);
}

// acct[d][0..16 QV) += sum_k val[k][d] * pt[k][0..16 QV) for DR dims.
template <int DR, int QV>
MESA_ATTN_INLINE void PvT(const float* pt, int64_t kn, const float* val, int64_t vs,
                          float* acct) {
  V16 a[DR][QV];
#pragma GCC unroll 16
  for (int dr = 0; dr < DR; ++dr) {
    for (int c = 0; c < QV; ++c) a[dr][c] = Load(acct + dr * kQb + c * kLanes);
  }
  for (int64_t k = 0; k < kn; ++k) {
    V16 pv[QV];
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

template <int QV>
MESA_ATTN_INLINE void PvTile(const float* pt, int64_t kn, const float* val, int64_t vs,
                             int64_t hd, float* acct) {
  constexpr int kStep = 16 / QV;
  int64_t d = 0;
  for (; d + kStep <= hd; d += kStep) PvT<kStep, QV>(pt, kn, val + d, vs, acct + d * kQb);
  for (; d < hd; ++d) PvT<1, QV>(pt, kn, val + d, vs, acct + d * kQb);
}

// Online softmax over one tile of transposed scores: turns st into probabilities,
// rescales the accumulators of rows whose running max moved.
template <int QV>
MESA_ATTN_INLINE void SoftmaxTile(float* st, int64_t kn, int64_t hd, Scratch& w) {
  for (int c = 0; c < QV; ++c) {
    V16 mx = Splat(-INFINITY);
    for (int64_t k = 0; k < kn; ++k) mx = Max(mx, Load(st + k * kQb + c * kLanes));
    const V16 m_old = Load(w.m.data() + c * kLanes);
    const V16 m_new = Max(m_old, mx);
    // Rows with nothing visible yet keep m = -inf; subtracting 0 keeps exp at 0.
    const V16 m_use = m_new == -INFINITY ? V16{} : m_new;
    // Rows still seeing nothing keep corr = 1, so only a moved max rescales.
    const V16 corr = m_new == -INFINITY ? Splat(1.0f) : Exp(m_old - m_use);
    V16 sum{};
    for (int64_t k = 0; k < kn; ++k) {
      const V16 e = Exp(Load(st + k * kQb + c * kLanes) - m_use);
      Store(st + k * kQb + c * kLanes, e);
      sum += e;
    }
    Store(w.m.data() + c * kLanes, m_new);
    for (int l = 0; l < kLanes; ++l) {
      w.l[c * kLanes + l] = w.l[c * kLanes + l] * corr[l] + sum[l];
    }
    if (HMax(-corr) > -1.0f) {  // some corr < 1
      float* acct = w.acc.data() + c * kLanes;
      for (int64_t d = 0; d < hd; ++d) Store(acct + d * kQb, Load(acct + d * kQb) * corr);
    }
  }
}

// Builds a transposed query block [hdp][kQb] from the scaled rows, rotated per row
// by rot(row) (rot < 0: no rotation).
template <typename RotFn>
MESA_ATTN_INLINE void BuildQt(const Ctx& c, Scratch& w, int64_t n, RotFn rot, float* qt) {
  for (int64_t r = 0; r < n; ++r) {
    const float* qs = w.qs.data() + r * c.hdp;
    const int64_t pos = rot(r);
    const float* src = qs;
    if (pos >= 0) {
      RotateSwapped(qs, w.qw.data() + r * c.hdp, c.table + pos * 2 * c.rd, c.rd, w.qr.data());
      for (int64_t d = c.rd; d < c.hd; ++d) w.qr[d] = qs[d];
      src = w.qr.data();
    }
    for (int64_t d = 0; d < c.hd; ++d) qt[d * kQb + r] = src[d];
  }
  for (int64_t r = n; r < kQb; ++r) {
    for (int64_t d = 0; d < c.hd; ++d) qt[d * kQb + r] = 0.0f;
  }
}

template <int QV>
MESA_ATTN_INLINE void RunBlock(const Ctx& c, const Unit& u, Scratch& w, int64_t n, int64_t jend,
                               int64_t vis_min, int64_t tmin, int64_t tmax) {
  const AttentionParams& p = *c.p;
  const int64_t hd = c.hd;
  const float* kbase = p.k + u.kvh * p.kv_stride * hd;
  const float* vbase = p.v + u.kvh * p.kv_stride * hd;
  const RelativePosition& rp = p.rel;
  for (int64_t d = 0; d < hd; ++d) {
    for (int r = 0; r < kQb; ++r) w.acc[d * kQb + r] = 0.0f;
  }
  bool have_raw = false, have_abs = false, have_far = false;
  for (int64_t j0 = u.ja; j0 < jend; j0 += kKb) {
    const int64_t kn = std::min<int64_t>(kKb, jend - j0);
    const int64_t p0 = p.kv_pos0 + j0, plast = p0 + kn - 1;
    float* st = w.s.data();
    const float* krows = kbase + j0 * hd;
    const float* vrows = vbase + j0 * hd;
    if (c.g > 1) {
      for (int64_t k = 0; k < kn; ++k) w.pg[k] = (p0 + k) / c.g;
    }
    // Which route: raw keys and queries; rel = d over the tile (rotate both at their
    // absolute positions); a far region with rel = A(t) - B(p); or per row.
    enum { kRaw, kAbs, kFar, kPerRow } route = kRaw;
    if (c.rope) {
      const int64_t dmax = tmax - p0, dmin = tmin - plast;
      route = kPerRow;
      switch (rp.kind) {
        case RelativePosition::Kind::kExact: route = kAbs; break;
        case RelativePosition::Kind::kStair:
          if (rp.e == 1 || dmax < rp.n) route = kAbs;
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
        BuildQt(c, w, n, [](int64_t) { return int64_t{-1}; }, w.qt_raw.data());
        have_raw = true;
      }
      QkTile<QV>(w.qt_raw.data(), krows, hd, hd, kn, st);
    } else if (route == kAbs || route == kFar) {
      const bool far = route == kFar;
      float* qt = far ? w.qt_far.data() : w.qt_abs.data();
      bool& have = far ? have_far : have_abs;
      if (!have) {
        if (!far) {
          BuildQt(c, w, n, [&](int64_t r) { return w.t[r]; }, qt);
        } else if (rp.kind == RelativePosition::Kind::kClamp) {
          BuildQt(c, w, n, [&](int64_t) { return rp.window; }, qt);
        } else {
          BuildQt(c, w, n, [&](int64_t r) { return w.tg[r] + c.rel.wg; }, qt);
        }
        have = true;
      }
      const float* keys = krows;
      if (!(far && rp.kind == RelativePosition::Kind::kClamp)) {
        for (int64_t k = 0; k < kn; ++k) {
          RotateRow(c, krows + k * hd, far ? w.pg[k] : p0 + k, w.kb.data() + k * hd);
        }
        keys = w.kb.data();
      }
      QkTile<QV>(qt, keys, hd, hd, kn, st);
    } else {
      // Rotate each row once per run of keys sharing a rel, dot each key.
      for (int64_t r = 0; r < n; ++r) {
        const int64_t nvis = std::clamp<int64_t>(w.vis[r] - j0, 0, kn);
        RopeRowScores(c, w.qs.data() + r * c.hdp, w.qw.data() + r * c.hdp, w.t[r], w.tg[r], p0,
                      nvis, krows, w.qr.data(), st + r, kQb);
      }
    }

    if (c.alibi) {
      if (rp.kind == RelativePosition::Kind::kExact) {
        for (int64_t k = 0; k < kn; ++k) {
          for (int cc = 0; cc < QV; ++cc) {
            const V16 d = Load(w.tf.data() + cc * kLanes) - static_cast<float>(p0 + k);
            Store(st + k * kQb + cc * kLanes,
                  Load(st + k * kQb + cc * kLanes) - Load(w.slope.data() + cc * kLanes) * d);
          }
        }
      } else {
        for (int64_t r = 0; r < n; ++r) {
          const int64_t nvis = std::clamp<int64_t>(w.vis[r] - j0, 0, kn);
          AlibiRow(c, w.slope[r], w.t[r], w.tg[r], p0, nvis, st + r, kQb);
        }
      }
    }
    if (j0 + kn > vis_min) {  // some row does not see the whole tile
      for (int64_t k = 0; k < kn; ++k) {
        const I16 j = I16{} + static_cast<int32_t>(j0 + k);
        for (int cc = 0; cc < QV; ++cc) {
          const V16 x = Load(st + k * kQb + cc * kLanes);
          Store(st + k * kQb + cc * kLanes,
                j < LoadI(w.vis.data() + cc * kLanes) ? x : Splat(-INFINITY));
        }
      }
    }
    SoftmaxTile<QV>(st, kn, hd, w);
    PvTile<QV>(st, kn, vrows, hd, hd, w.acc.data());
  }
}

// --- Row path (decode: fewer rows than kMinBlockRows): scores [row][key], one dot
// per key, accumulators [row][dim].

// acc[r][0..16W) += sum_k p[r][k] * v[k][0..16W) for R rows.
template <int R, int W>
MESA_ATTN_INLINE void PvRows(const float* p, int64_t kn, const float* v, int64_t vstride,
                             float* acc, int64_t hdp) {
  V16 a[R][W];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < W; ++c) a[r][c] = Load(acc + r * hdp + c * kLanes);
  }
  for (int64_t k = 0; k < kn; ++k) {
    V16 vv[W];
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

// PvRows for the last 8 dims of rows whose width is 8 mod 16 (hd = 8, 24, 40, ...).
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
  int64_t d = 0;
  for (; d + 4 * kLanes <= dims; d += 4 * kLanes) PvRows<R, 4>(p, kn, v + d, vstride, acc + d, hdp);
  switch ((dims - d) / kLanes) {
    case 3: PvRows<R, 3>(p, kn, v + d, vstride, acc + d, hdp); break;
    case 2: PvRows<R, 2>(p, kn, v + d, vstride, acc + d, hdp); break;
    case 1: PvRows<R, 1>(p, kn, v + d, vstride, acc + d, hdp); break;
    default: break;
  }
  d += (dims - d) / kLanes * kLanes;
  if (d < dims) PvRows8<R>(p, kn, v + d, vstride, acc + d, hdp);
}

MESA_ATTN_INLINE void RunRows(const Ctx& c, const Unit& u, Scratch& w, int64_t n, int64_t jend) {
  const AttentionParams& p = *c.p;
  const int64_t hd = c.hd, hdp = c.hdp;
  const float* kbase = p.k + u.kvh * p.kv_stride * hd;
  const float* vbase = p.v + u.kvh * p.kv_stride * hd;
  // V rows are read in whole 8- or 16-float vectors: copied to zero-padded rows only
  // when hd is not a multiple of 8.
  const bool padded = hd % 8 != 0;
  const int64_t dims = padded ? hdp : hd;
  std::fill(w.acc.data(), w.acc.data() + n * hdp, 0.0f);
  float* qr = w.qr.data();
  for (int64_t j0 = u.ja; j0 < jend; j0 += kKb) {
    const int64_t kn = std::min<int64_t>(kKb, jend - j0);
    const int64_t p0 = p.kv_pos0 + j0;
    const float* krows = kbase + j0 * hd;
    const float* vrows = vbase + j0 * hd;
    if (padded) {
      for (int64_t k = 0; k < kn; ++k) {
        std::memcpy(w.vb.data() + k * hdp, vrows + k * hd, hd * sizeof(float));
      }
      vrows = w.vb.data();
    }
    float* s = w.s.data();
    for (int64_t r = 0; r < n; ++r) {
      float* row = s + r * kKb;
      const int64_t nvis = std::clamp<int64_t>(w.vis[r] - j0, 0, kn);
      const float* qs = w.qs.data() + r * hdp;
      if (!c.rope) {
        for (int64_t k = 0; k < nvis; ++k) row[k] = Dot(qs, krows + k * hd, hd);
      } else {
        RopeRowScores(c, qs, w.qw.data() + r * hdp, w.t[r], w.tg[r], p0, nvis, krows, qr, row, 1);
      }
      if (nvis == 0) {
        std::fill(row, row + kKb, 0.0f);
        continue;
      }
      if (c.alibi) AlibiRow(c, w.slope[r], w.t[r], w.tg[r], p0, nvis, row, 1);
      for (int64_t k = nvis; k < kKb; ++k) row[k] = -INFINITY;
      V16 mx = Load(row);
      for (int cc = 1; cc < kKb / kLanes; ++cc) mx = Max(mx, Load(row + cc * kLanes));
      const float m_new = std::max(w.m[r], HMax(mx));
      const float corr = std::exp(w.m[r] - m_new);  // 0 on the first tile
      V16 sum{};
      for (int cc = 0; cc < kKb / kLanes; ++cc) {
        const V16 e = Exp(Load(row + cc * kLanes) - m_new);
        Store(row + cc * kLanes, e);
        sum += e;
      }
      w.l[r] = w.l[r] * corr + HSum(sum);
      if (corr != 1.0f) {
        float* acc = w.acc.data() + r * hdp;
        for (int64_t d = 0; d < hdp; ++d) acc[d] *= corr;
      }
      w.m[r] = m_new;
    }
    const int64_t vs = padded ? hdp : hd;
    int64_t r = 0;
    for (; r + 4 <= n; r += 4) PvBlock<4>(s + r * kKb, kn, vrows, vs, w.acc.data() + r * hdp, hdp, dims);
    switch (n - r) {
      case 3: PvBlock<3>(s + r * kKb, kn, vrows, vs, w.acc.data() + r * hdp, hdp, dims); break;
      case 2: PvBlock<2>(s + r * kKb, kn, vrows, vs, w.acc.data() + r * hdp, hdp, dims); break;
      case 1: PvBlock<1>(s + r * kKb, kn, vrows, vs, w.acc.data() + r * hdp, hdp, dims); break;
      default: break;
    }
  }
}

MESA_ATTN_MULTIVERSION void RunUnit(const Ctx& c, const Unit& u, Scratch& w) {
  const AttentionParams& p = *c.p;
  const int64_t hd = c.hd, hdp = c.hdp;
  const int64_t rows = p.n_q * c.group;
  const int64_t row0 = static_cast<int64_t>(u.block) * kQb;
  const int64_t n = std::min<int64_t>(kQb, rows - row0);

  // Rows: scaled queries (scale and log-n folded in), zero padded, plus pair-swapped
  // copies for rotations.
  int64_t tmin = INT64_MAX, tmax = INT64_MIN, vis_max = 0, vis_min = INT64_MAX;
  for (int64_t r = 0; r < kQb; ++r) {
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
    w.vis[r] = static_cast<int32_t>(std::clamp<int64_t>(t - p.kv_pos0 + 1, 0, p.n_kv));
    w.slope[r] = c.alibi ? p.alibi_slopes[h] : 0.0f;
    vis_max = std::max<int64_t>(vis_max, w.vis[r]);
    vis_min = std::min<int64_t>(vis_min, w.vis[r]);
    tmin = std::min(tmin, t);
    tmax = std::max(tmax, t);
    const float qscale = static_cast<float>(p.scale * LognFactor(t, p.logn_train_length));
    const float* src = p.q + (i * p.n_head + h) * hd;
    float* qs = w.qs.data() + r * hdp;
    for (int64_t d = 0; d < hd; ++d) qs[d] = src[d] * qscale;
    for (int64_t d = hd; d < hdp; ++d) qs[d] = 0.0f;
    if (c.rope) {
      float* qw = w.qw.data() + r * hdp;
      for (int64_t d = 0; d < c.rd; ++d) qw[d] = qs[c.partner[d]];
    }
  }
  const int64_t jend = std::min(u.jb, vis_max);
  const bool block = n >= kMinBlockRows;
  if (block && n > kLanes) {
    RunBlock<2>(c, u, w, n, jend, vis_min, tmin, tmax);
  } else if (block) {
    RunBlock<1>(c, u, w, n, jend, vis_min, tmin, tmax);
  } else {
    RunRows(c, u, w, n, jend);
  }

  for (int64_t r = 0; r < n; ++r) {
    // Block path accumulators are [dim][row], row path ones [row][dim].
    const int64_t at = block ? kQb : 1;
    const float* acc = block ? w.acc.data() + r : w.acc.data() + r * hdp;
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

}  // namespace attn_internal

namespace {

using attn_internal::Ctx;
using attn_internal::kKb;
using attn_internal::kQb;
using attn_internal::Scratch;
using attn_internal::Unit;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "cpu::Attention: bad parameters: %s\n", what);
    std::abort();
  }
}

// cos/sin of rel * freq_scale * base^(-2i/rope_dims) for rel = 0..rows-1, laid out
// per rel as C[rd] then S[rd] with the signs and duplication that make a rotation
// x * C + swap(x) * S (see RotateSwapped).
struct RopeTable {
  int64_t rope_dims;
  float freq_base, freq_scale;
  bool neox;
  int64_t rows;
  std::vector<float> data;
  bool Matches(const RopeParams& r) const {
    return rope_dims == r.rope_dims && freq_base == r.freq_base &&
           freq_scale == r.freq_scale && neox == r.neox;
  }
};

// Tables depend only on the model's rotary parameters and grow with the longest
// relative position seen, so they are built once per process, not per call (decode
// calls attention once per layer per token). Holders keep a table alive while a
// bigger one replaces it.
std::shared_ptr<const RopeTable> GetRopeTable(const RopeParams& rp, int64_t rows,
                                              ThreadPool& pool) {
  static std::mutex mu;
  static std::vector<std::shared_ptr<const RopeTable>> cache;  // most recent last
  constexpr size_t kMaxTables = 2;
  std::lock_guard<std::mutex> lock(mu);
  int64_t prev_rows = 0;
  for (size_t i = 0; i < cache.size(); ++i) {
    if (!cache[i]->Matches(rp)) continue;
    if (cache[i]->rows >= rows) {
      std::shared_ptr<const RopeTable> hit = cache[i];
      cache.erase(cache.begin() + i);
      cache.push_back(hit);
      return hit;
    }
    prev_rows = cache[i]->rows;
    cache.erase(cache.begin() + i);
    break;
  }
  auto table = std::make_shared<RopeTable>();
  table->rope_dims = rp.rope_dims;
  table->freq_base = rp.freq_base;
  table->freq_scale = rp.freq_scale;
  table->neox = rp.neox;
  // Round up (and at least double) so a growing context rebuilds O(log n) times.
  table->rows = (std::max({rows, 2 * prev_rows, int64_t{1024}}) + 1023) / 1024 * 1024;
  const int64_t rd = rp.rope_dims, half = rd / 2;
  table->data.resize(table->rows * 2 * rd);
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(rp.freq_base), -2.0 * i / rd);
  }
  float* data = table->data.data();
  pool.ParallelFor(table->rows, 64, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* cs = data + r * 2 * rd;
      for (int64_t i = 0; i < half; ++i) {
        // Same expression as ref::Rope, so both sides rotate by the same angle.
        const double angle = static_cast<double>(r) * rp.freq_scale * inv_freq[i];
        const float co = static_cast<float>(std::cos(angle));
        const float si = static_cast<float>(std::sin(angle));
        const int64_t a = rp.neox ? i : 2 * i;
        const int64_t b = rp.neox ? i + half : 2 * i + 1;
        cs[a] = co;
        cs[b] = co;
        cs[rd + a] = -si;
        cs[rd + b] = si;
      }
    }
  });
  cache.push_back(table);
  if (cache.size() > kMaxTables) cache.erase(cache.begin());
  return table;
}

}  // namespace

void Attention(const AttentionParams& p, ThreadPool& pool) {
  Check(p.n_head > 0 && p.n_head_kv > 0 && p.n_head % p.n_head_kv == 0, "head counts");
  Check(p.head_dim > 0 && p.n_kv <= p.kv_stride && p.kv_pos0 >= 0, "head_dim / kv_stride");
  Check(p.mode != AttentionPositionMode::kAlibi || p.alibi_slopes != nullptr, "alibi slopes");
  Check(p.rel.kind != RelativePosition::Kind::kStair || p.rel.e >= 1, "stair e >= 1");
  Check(p.rel.kind != RelativePosition::Kind::kSelfExtend || p.rel.group >= 1, "group >= 1");
  if (p.n_q <= 0) return;
  const bool rope = p.mode == AttentionPositionMode::kRopeRaw;
  if (rope) {
    Check(p.rope.head_dim == p.head_dim, "rope.head_dim == head_dim");
    Check(p.rope.rope_dims % 2 == 0 && p.rope.rope_dims >= 0 && p.rope.rope_dims <= p.head_dim,
          "rope_dims");
  }

  Ctx c;
  c.p = &p;
  c.hd = p.head_dim;
  c.hdp = (p.head_dim + attn_internal::kLanes - 1) / attn_internal::kLanes * attn_internal::kLanes;
  c.group = p.n_head / p.n_head_kv;
  c.rope = rope;
  c.alibi = p.mode == AttentionPositionMode::kAlibi;
  c.rd = rope ? p.rope.rope_dims : 0;
  c.g = p.rel.kind == RelativePosition::Kind::kSelfExtend ? p.rel.group : 1;
  c.rel.kind = p.rel.kind;
  c.rel.n = p.rel.n;
  c.rel.e = p.rel.e;
  c.rel.window = p.rel.window;
  c.rel.g = c.g;
  c.rel.wg = p.rel.window - p.rel.window / c.g;

  // The largest relative position and query position any visible pair
  // has (rel is non-decreasing in d, so key 0 attains the largest).
  int64_t r_max = 0, t_max = 0;
  for (int64_t i = 0; i < p.n_q; ++i) {
    const int64_t t = p.q_pos[i];
    if (t < p.kv_pos0 || p.n_kv == 0) continue;
    r_max = std::max(r_max, p.rel(t, p.kv_pos0));
    t_max = std::max(t_max, t);
  }
  std::shared_ptr<const RopeTable> table;
  std::vector<int32_t> partner;
  if (rope) {
    // Rows up to the largest rel (per-row rotations) and the largest position (the
    // block path rotates exact windows at absolute positions); Self-Extend's far
    // queries sit at t/g + window - window/g, within t except for the margin.
    const int64_t margin = p.rel.kind == RelativePosition::Kind::kSelfExtend ? p.rel.window : 0;
    table = GetRopeTable(p.rope, std::max(r_max, t_max) + 1 + margin, pool);
    c.table = table->data.data();
    const int64_t half = c.rd / 2;
    partner.resize(c.rd);
    for (int64_t d = 0; d < c.rd; ++d) {
      partner[d] = static_cast<int32_t>(p.rope.neox ? (d < half ? d + half : d - half) : d ^ 1);
    }
    c.partner = partner.data();
  } else {
    c.table = nullptr;
    c.partner = nullptr;
  }

  // Units: (kv head, block of kQb rows), each over the keys its last row needs;
  // when that gives too few units to fill the pool (decode), keys are split too and
  // partial softmax states are merged afterwards.
  const int64_t group = c.group;
  const int64_t rows = p.n_q * group;
  const int64_t n_blocks = (rows + kQb - 1) / kQb;
  std::vector<int64_t> block_keys(n_blocks, 0);
  for (int64_t b = 0; b < n_blocks; ++b) {
    for (int64_t r = b * kQb; r < std::min(rows, (b + 1) * kQb); ++r) {
      block_keys[b] = std::max(
          block_keys[b], std::clamp<int64_t>(p.q_pos[r / group] - p.kv_pos0 + 1, 0, p.n_kv));
    }
  }
  const int threads = pool.size();
  const int64_t base_units = n_blocks * p.n_head_kv;
  int64_t splits = 1;
  if (threads > 1 && base_units < 4 * threads) {
    const int64_t most_keys = *std::max_element(block_keys.begin(), block_keys.end());
    const int64_t by_keys = std::max<int64_t>(1, most_keys / (8 * kKb));
    splits = std::min((4 * threads + base_units - 1) / base_units, by_keys);
  }
  const int64_t hdp = c.hdp;
  std::vector<float> partial;
  if (splits > 1) partial.resize(base_units * splits * kQb * (hdp + 2));
  std::vector<Unit> units;
  units.reserve(base_units * splits);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t tiles = (block_keys[b] + kKb - 1) / kKb;
    for (int64_t kvh = 0; kvh < p.n_head_kv; ++kvh) {
      for (int64_t sp = 0; sp < splits; ++sp) {
        Unit u;
        u.kvh = static_cast<int32_t>(kvh);
        u.block = static_cast<int32_t>(b);
        u.split = static_cast<int32_t>(sp);
        u.ja = std::min(block_keys[b], tiles * sp / splits * kKb);
        u.jb = std::min(block_keys[b], tiles * (sp + 1) / splits * kKb);
        u.partial =
            splits > 1
                ? partial.data() + ((b * p.n_head_kv + kvh) * splits + sp) * kQb * (hdp + 2)
                : nullptr;
        units.push_back(u);
      }
    }
  }
  // Largest first (causal prefill: later blocks see more keys), so the tail of the
  // schedule is made of small units.
  std::stable_sort(units.begin(), units.end(), [](const Unit& a, const Unit& b) {
    return a.jb - a.ja > b.jb - b.ja;
  });

  // Split units merge their partial softmax states as soon as the last split of a
  // (block, kv head) is done, by whichever thread finished it, inside the same pool
  // call: decode pays one hand-off per call, not a second one for the merge.
  std::unique_ptr<std::atomic<int32_t>[]> left;
  if (splits > 1) {
    left.reset(new std::atomic<int32_t>[base_units]);
    for (int64_t bu = 0; bu < base_units; ++bu) left[bu].store(static_cast<int32_t>(splits));
  }
  auto merge = [&](int64_t bu) {
    // out = sum_s acc_s e^(m_s - m) / sum_s l_s e^(m_s - m), m = max_s m_s.
    const int64_t b = bu / p.n_head_kv, kvh = bu % p.n_head_kv;
    const float* part = partial.data() + bu * splits * kQb * (hdp + 2);
    for (int64_t r = 0; r < std::min<int64_t>(kQb, rows - b * kQb); ++r) {
      const int64_t i = (b * kQb + r) / group;
      const int64_t h = kvh * group + (b * kQb + r) % group;
      float m = -INFINITY;
      for (int64_t sp = 0; sp < splits; ++sp) {
        const float* st = part + (sp * kQb + r) * (hdp + 2);
        if (st[1] > 0) m = std::max(m, st[0]);
      }
      float* out = p.out + (i * p.n_head + h) * p.head_dim;
      std::fill(out, out + p.head_dim, 0.0f);
      double l = 0;
      for (int64_t sp = 0; sp < splits; ++sp) {
        const float* st = part + (sp * kQb + r) * (hdp + 2);
        if (!(st[1] > 0)) continue;
        const float f = std::exp(st[0] - m);
        l += static_cast<double>(st[1]) * f;
        for (int64_t d = 0; d < p.head_dim; ++d) out[d] += f * st[2 + d];
      }
      const float inv = l > 0 ? static_cast<float>(1.0 / l) : 0.0f;
      for (int64_t d = 0; d < p.head_dim; ++d) out[d] *= inv;
    }
  };

  std::atomic<int64_t> next{0};
  pool.RunOnAll([&](int) {
    thread_local Scratch scratch;
    scratch.Reserve(hdp);
    for (int64_t u = next.fetch_add(1); u < static_cast<int64_t>(units.size());
         u = next.fetch_add(1)) {
      const Unit& unit = units[u];
      attn_internal::RunUnit(c, unit, scratch);
      if (splits > 1) {
        const int64_t bu = static_cast<int64_t>(unit.block) * p.n_head_kv + unit.kvh;
        // acq_rel: the last one sees every other split's partial state.
        if (left[bu].fetch_sub(1, std::memory_order_acq_rel) == 1) merge(bu);
      }
    }
  });
}

}  // namespace cpu
}  // namespace mesa
