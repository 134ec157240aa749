// CPU attention (kernels/attention.h). Work items are (query, head) pairs split across
// the pool; each computes its visible scores into a per-thread buffer of n_kv floats,
// takes a softmax and accumulates values. Keys are contiguous per kv head, so both
// passes stream memory. Memory is O(n_kv) per thread.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/nn.h"

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

void Attention(const AttentionParams& p, ThreadPool& pool) {
  const int64_t group = p.n_head / p.n_head_kv;
  const int64_t items = p.n_q * p.n_head;
  std::vector<std::vector<float>> scratch(pool.size());
  pool.ParallelFor(items, 1, [&](int t, int64_t begin, int64_t end) {
    std::vector<float>& scores = scratch[t];
    if (static_cast<int64_t>(scores.size()) < p.n_kv) scores.resize(p.n_kv);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / p.n_head;
      const int64_t h = item % p.n_head;
      const int64_t kvh = h / group;
      const float* q = p.q + item * p.head_dim;
      float* out = p.out + item * p.head_dim;
      // Keys are at consecutive positions: the visible ones are a prefix.
      const int64_t visible = std::clamp<int64_t>(p.q_pos[i] - p.kv_pos0 + 1, 0, p.n_kv);
      std::fill(out, out + p.head_dim, 0.0f);
      if (visible == 0) continue;
      const float* kbase = p.k + kvh * p.kv_stride * p.head_dim;
      const float* vbase = p.v + kvh * p.kv_stride * p.head_dim;
      float mx = -INFINITY;
      const float slope = p.mode == AttentionPositionMode::kAlibi ? p.alibi_slopes[h] : 0.0f;
      for (int64_t j = 0; j < visible; ++j) {
        float s = Dot(q, kbase + j * p.head_dim, p.head_dim) * p.scale;
        if (slope != 0.0f) s -= slope * static_cast<float>(p.q_pos[i] - (p.kv_pos0 + j));
        scores[j] = s;
        mx = std::max(mx, s);
      }
      double sum = 0;
      for (int64_t j = 0; j < visible; ++j) {
        float w = std::exp(scores[j] - mx);
        scores[j] = w;
        sum += w;
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < visible; ++j) {
        Axpy(scores[j] * inv, vbase + j * p.head_dim, p.head_dim, out);
      }
    }
  });
}

}  // namespace cpu
}  // namespace mesa
