// CPU attention (kernels/attention.h): a flash-attention style kernel for every
// position mode. Work is split into units (kv head, block of 32 or 128 rows, key range)
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
// The unit kernel (attention_cpu-inl.h) is compiled once per ISA with that ISA's
// vector width and register tiles: attention_x86_avx512.cc, attention_x86_avx2.cc and
// the portable copy below. Each call runs the variant of internal::CurrentIsa(), the
// ISA cpu::MatMul runs (the best one, or the one forced by MESA_CPU_ISA / ForceIsa).
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
#include "kernels/cpu/attention_cpu_internal.h"
#include "kernels/cpu/matmul_cpu_internal.h"
#include "kernels/nn.h"

// The portable variant: baseline flags (SSE2 on x86-64), 4-float vectors.
#define MESA_ATTN_NS generic
#define MESA_ATTN_LANES 4
#define MESA_ATTN_REGS 16
#include "kernels/cpu/attention_cpu-inl.h"

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

namespace {
std::atomic<int> g_override{-1};
}  // namespace

void OverrideIsa(int isa) { g_override.store(isa, std::memory_order_relaxed); }

// Rows per unit. Every unit streams all the keys and values of its kv head, so rows
// per unit are the reuse of each K/V byte: once they outgrow the L2 (here from about
// 1 MiB of f32 K and V per kv head: 2k keys at head dim 64), 128 rows a unit instead
// of 32 ran the 512-query final chunk over 8k keys 10-25% faster (bench/attention_bench
// BM_AttentionLong, interleaved A/B, AVX-512 and AVX2). Below that, 32: a block of
// causal rows also computes the masked half of its diagonal (rows / group positions
// wide), which 128-row blocks made 25% of a first 512-token micro-batch's work.
int64_t BlockRows(const AttentionParams& p, int64_t group) {
  const int64_t kv_bytes = p.n_kv * p.head_dim * 8;
  return kv_bytes >= (int64_t{1} << 20) && p.n_kv * group >= 16 * kQb ? kQb : 32;
}


internal::Isa ActiveIsa() {
  const int forced = g_override.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<internal::Isa>(forced);
  return internal::CurrentIsa();  // what cpu::MatMul runs: MESA_CPU_ISA or the best
}

}  // namespace attn_internal

namespace {

using attn_internal::Ctx;
using attn_internal::kKb;
using attn_internal::kQb;
using attn_internal::Bufs;

// Per-thread buffers behind attn_internal::Bufs; grown, never shrunk.
struct Scratch {
  std::vector<float> qs, qw, qt_raw, qt_abs, qt_far, qt_far1, kb, vb, s, s1, acc, qr, m, slope, tf;
  std::vector<double> l;
  std::vector<int32_t> vis, amod;
  std::vector<int64_t> t, tg, pg, qi, head;
  Bufs bufs;
  void Reserve(int64_t hdp) {
    auto grow = [](auto& v, size_t n) {
      if (v.size() < n) v.assign(n, 0);
    };
    for (auto* v : {&qs, &qw, &qt_raw, &qt_abs, &qt_far, &qt_far1, &acc}) grow(*v, kQb * hdp);
    grow(kb, kKb * hdp);
    grow(vb, kKb * hdp);
    grow(s, kQb * kKb);
    grow(s1, kQb * kKb);
    grow(amod, kQb);
    grow(qr, hdp);
    for (auto* v : {&m, &slope, &tf}) grow(*v, kQb);
    grow(l, kQb);
    grow(vis, kQb);
    for (auto* v : {&t, &tg, &qi, &head}) grow(*v, kQb);
    grow(pg, kKb);
    bufs = Bufs{qs.data(), qw.data(), qt_raw.data(), qt_abs.data(), qt_far.data(), qt_far1.data(),
                kb.data(), vb.data(), s.data(), s1.data(), amod.data(), acc.data(), qr.data(), l.data(),
                m.data(), slope.data(), tf.data(), vis.data(), t.data(), tg.data(),
                qi.data(), head.data(), pg.data()};
  }
};
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
  Check(p.kv_type == DType::kF32, "f32 K/V (the CPU kernels read no other K/V type)");
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
  c.hdp = (p.head_dim + attn_internal::kPad - 1) / attn_internal::kPad * attn_internal::kPad;
  c.group = p.n_head / p.n_head_kv;
  c.rope = rope;
  c.alibi = p.mode == AttentionPositionMode::kAlibi;
  c.rd = rope ? p.rope.rope_dims : 0;
  c.g = p.rel.kind == RelativePosition::Kind::kSelfExtend ? p.rel.group : 1;
  void (*run_unit)(const Ctx&, const attn_internal::Unit&, const Bufs&) =
      attn_internal::generic::RunUnit;
#if defined(MESA_HAVE_X86_ATTENTION)
  switch (attn_internal::ActiveIsa()) {
    case internal::Isa::kAvx512: run_unit = attn_internal::avx512::RunUnit; break;
    case internal::Isa::kAvx2: run_unit = attn_internal::avx2::RunUnit; break;
    default: break;
  }
#endif

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
  const int64_t qb = attn_internal::BlockRows(p, group);
  c.qb = qb;
  const int64_t n_blocks = (rows + qb - 1) / qb;
  std::vector<int64_t> block_keys(n_blocks, 0);
  for (int64_t b = 0; b < n_blocks; ++b) {
    for (int64_t r = b * qb; r < std::min(rows, (b + 1) * qb); ++r) {
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
  if (splits > 1) partial.resize(base_units * splits * qb * (hdp + 2));
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
                ? partial.data() + ((b * p.n_head_kv + kvh) * splits + sp) * qb * (hdp + 2)
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
    const float* part = partial.data() + bu * splits * qb * (hdp + 2);
    for (int64_t r = 0; r < std::min<int64_t>(qb, rows - b * qb); ++r) {
      const int64_t i = (b * qb + r) / group;
      const int64_t h = kvh * group + (b * qb + r) % group;
      float m = -INFINITY;
      for (int64_t sp = 0; sp < splits; ++sp) {
        const float* st = part + (sp * qb + r) * (hdp + 2);
        if (st[1] > 0) m = std::max(m, st[0]);
      }
      float* out = p.out + (i * p.n_head + h) * p.head_dim;
      std::fill(out, out + p.head_dim, 0.0f);
      double l = 0;
      for (int64_t sp = 0; sp < splits; ++sp) {
        const float* st = part + (sp * qb + r) * (hdp + 2);
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
      run_unit(c, unit, scratch.bufs);
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
