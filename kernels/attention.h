// One attention interface for every variant Mesa runs. A variant is a parameter of
// AttentionParams, not a copy of the kernel:
//   - causal attention over a KV cache whose keys are stored already rotated (RoPE) or
//     need no position (ALiBi adds -slope_h * d to each logit);
//   - (Mesa, later) Stair PE over raw keys: the kernel then rotates each query by the
//     woven relative position R(d); the KV cache can hold raw keys for that purpose.
//
// Layouts (f32):
//   q:   [n_q][n_head][head_dim]          query rows, contiguous per token
//   k,v: [n_head_kv][kv_stride][head_dim] per kv head, key/value j at row j
//   out: [n_q][n_head][head_dim]
// Key j sits at global position kv_pos0 + j; query i at q_pos[i]. Causal: query i sees
// keys with position <= q_pos[i]. Grouped-query: head h reads kv head h / (n_head/n_head_kv).
// Memory is O(n_kv) per thread: no n_q x n_kv score matrix is ever materialized.
#pragma once

#include <cstdint>

#include "kernels/nn.h"

namespace mesa {

class ThreadPool;

enum class AttentionPositionMode {
  kNone,      // positions already applied (rotated q and k), or none at all
  kAlibi,     // logit -= slope[h] * rel(q_pos, k_pos)
  kRopeRaw,   // q and k are raw (pre-rotation); logit = (Rot(rel(t, i)) q) . k
};

// The relative position rel(t, i) a query at global position t sees for a key at
// global position i <= t (d = t - i):
//   kExact      d                                      (ordinary attention)
//   kStair      d < n ? d : n + (d - n) / e            (Mesa's Stair PE, Toeplitz form)
//   kClamp      min(d, window)                         (ReRoPE)
//   kSelfExtend d < window ? d : t/group - i/group + window - window/group  (Self-Extend)
struct RelativePosition {
  enum class Kind { kExact, kStair, kClamp, kSelfExtend };
  Kind kind = Kind::kExact;
  int64_t n = 0, e = 1;              // kStair
  int64_t window = 0, group = 1;     // kClamp, kSelfExtend
  int64_t operator()(int64_t t, int64_t i) const {
    const int64_t d = t - i;
    switch (kind) {
      case Kind::kExact: return d;
      case Kind::kStair: return d < n ? d : n + (d - n) / e;
      case Kind::kClamp: return d < window ? d : window;
      case Kind::kSelfExtend:
        return d < window ? d : t / group - i / group + window - window / group;
    }
    return d;
  }
};

struct AttentionParams {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
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
// Plain reference: explicit per-pair loop, double accumulation.
void Attention(const AttentionParams& p);
}  // namespace ref

namespace cpu {
void Attention(const AttentionParams& p, ThreadPool& pool);
}  // namespace cpu

// ALiBi slopes as MPT/BLOOM (and llama.cpp) define them for n_head heads.
void AlibiSlopes(int64_t n_head, float max_bias, float* slopes);

}  // namespace mesa
