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

namespace mesa {

class ThreadPool;

enum class AttentionPositionMode {
  kNone,   // positions already applied (rotated q and k), or none at all
  kAlibi,  // logit -= slope[h] * (q_pos - k_pos)
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
