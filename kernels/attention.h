// One attention interface for every variant Mesa runs. A variant is a parameter of
// AttentionParams, not a copy of the kernel:
//   - causal attention over a KV cache whose keys are stored already rotated (RoPE) or
//     need no position (kNone; kAlibi adds -slope_h * rel(t, i) to each logit);
//   - attention over raw (unrotated) keys with a relative position rel(t, i) per
//     (query, key) pair (kRopeRaw): ordinary RoPE (kExact), Mesa's Stair PE (kStair),
//     ReRoPE (kClamp) and Self-Extend (kSelfExtend) are the same kernel;
//   - optional log-n query scaling for queries past the trained length.
//
// Layouts (f32, except k and v: elements of kv_type):
//   q:   [n_q][n_head][head_dim]          query rows, contiguous per token
//   k,v: [n_head_kv][kv_stride][head_dim] per kv head, key/value j at row j
// The CPU and ref kernels read f32 K/V only; the CUDA kernels read f32, f16 and bf16
// (converted to f32 on load; all arithmetic in f32).
//   out: [n_q][n_head][head_dim]
// Key j sits at global position kv_pos0 + j; query i at q_pos[i]. Causal: query i sees
// keys with position <= q_pos[i]; a query that sees no key gets a zero output row.
// Grouped-query: head h reads kv head h / (n_head/n_head_kv).
//
// The logit of query i (position t) and key j (position p = kv_pos0 + j), r = rel(t, p):
//   kNone:    dot(q, k) * scale * ln_t
//   kAlibi:   dot(q, k) * scale * ln_t - slope[h] * r
//   kRopeRaw: dot(Rot(r) q, k) * scale * ln_t   (Rot as ref::Rope with params `rope`)
// where ln_t = LognFactor(t, logn_train_length): ln(t + 1) / ln(T) for T > 1 and t >= T, else 1.
// ln_t scales the query (as the authors' code does), so the ALiBi bias is not scaled.
// Memory is O(n_kv) per thread: no n_q x n_kv score matrix is ever materialized.
#pragma once

#include <cstdint>

#include "kernels/attention_variant.h"
#include "kernels/dtype.h"
#include "kernels/nn.h"

namespace mesa {

class ThreadPool;

enum class AttentionPositionMode {
  kNone,      // positions already applied (rotated q and k), or none at all
  kAlibi,     // logit -= slope[h] * rel(q_pos, k_pos)
  kRopeRaw,   // q and k are raw (pre-rotation); logit = (Rot(rel(t, i)) q) . k
};

// RelativePosition (rel(t, i) for every kind) and LognFactor: kernels/attention_variant.h.

struct AttentionParams {
  const float* q = nullptr;
  const void* k = nullptr;   // kv_type elements
  const void* v = nullptr;
  DType kv_type = DType::kF32;  // kF32, kF16 or kBF16
  float* out = nullptr;
  int64_t n_q = 0;
  int64_t n_kv = 0;          // keys 0..n_kv-1 are present in k/v
  int64_t kv_stride = 0;     // rows between kv heads in k/v (the cache capacity)
  int64_t kv_pos0 = 0;       // global position of key 0
  const int64_t* q_pos = nullptr;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  float scale = 1.0f;        // usually 1/sqrt(head_dim)
  AttentionPositionMode mode = AttentionPositionMode::kNone;
  const float* alibi_slopes = nullptr;  // [n_head] for kAlibi
  // kAlibi and kRopeRaw: rel(t, i) applied per (query, key) pair. kRopeRaw also needs
  // the rotary parameters of the model.
  RelativePosition rel;
  RopeParams rope;
  // Log-n query scaling: logits of a query at t >= logn_train_length are multiplied by
  // ln(t + 1) / ln(logn_train_length). 0: off.
  int64_t logn_train_length = 0;
};

namespace ref {
// Plain reference: explicit per-pair loop, rotations and accumulation in double.
void Attention(const AttentionParams& p);
}  // namespace ref

namespace cpu {
// Blocked flash-style kernel (online softmax) over (head, query block, key range)
// items on `pool`. Thread-compatible: concurrent calls need distinct pools.
void Attention(const AttentionParams& p, ThreadPool& pool);
}  // namespace cpu

// ALiBi slopes as MPT/BLOOM (and llama.cpp) define them for n_head heads.
void AlibiSlopes(int64_t n_head, float max_bias, float* slopes);

}  // namespace mesa
