// Test and benchmark helper: a ChunkKv of a given shape filled with random bit
// patterns (NaN and denormal payloads included), so that a transfer that is not
// bit-exact, or that touches the floats on the way, shows.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>

#include "engine/mesa_phases.h"

namespace mesa::worker {

inline ChunkKv RandomChunkKv(int64_t n_layer, int64_t n_head_kv, int64_t tokens,
                             int64_t head_dim, int64_t range_begin, uint64_t seed) {
  ChunkKv kv;
  kv.n_layer = n_layer;
  kv.n_head_kv = n_head_kv;
  kv.head_dim = head_dim;
  kv.range = TokenRange{range_begin, range_begin + tokens};
  const auto n = static_cast<size_t>(n_layer * n_head_kv * tokens * head_dim);
  std::mt19937_64 rng(seed);
  for (std::vector<float>* part : {&kv.k, &kv.v}) {
    part->resize(n);
    for (float& x : *part) {
      const auto bits = static_cast<uint32_t>(rng());
      std::memcpy(&x, &bits, sizeof(x));
    }
  }
  return kv;
}

// Bitwise equality of shape, range and bytes (== on floats would fail on NaN).
inline bool SameBits(const ChunkKv& a, const ChunkKv& b) {
  return a.n_layer == b.n_layer && a.n_head_kv == b.n_head_kv && a.head_dim == b.head_dim &&
         a.range.begin == b.range.begin && a.range.end == b.range.end &&
         a.k.size() == b.k.size() && a.v.size() == b.v.size() &&
         std::memcmp(a.k.data(), b.k.data(), a.k.size() * sizeof(float)) == 0 &&
         std::memcmp(a.v.data(), b.v.data(), a.v.size() * sizeof(float)) == 0;
}

}  // namespace mesa::worker
