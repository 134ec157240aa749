// Comparing logits in tests: the worst relative L2 error over rows; random token ids.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mesa::testing {

// max over rows r of ||got_r - want_r|| / ||want_r||, rows of `row` floats; infinity
// when a NaN or Inf appears (std::max would silently skip a NaN).
inline double MaxRowRelError(const std::vector<float>& got, const std::vector<float>& want,
                             int64_t row) {
  double worst = 0;
  const size_t n = std::min(got.size(), want.size());
  for (size_t r = 0; r * row < n; ++r) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < row; ++i) {
      const double d = double(got[r * row + i]) - want[r * row + i];
      num += d * d;
      den += double(want[r * row + i]) * want[r * row + i];
    }
    const double e = std::sqrt(num / std::max(den, 1e-300));
    if (!std::isfinite(e)) return INFINITY;  // NaN or Inf in either side never passes
    worst = std::max(worst, e);
  }
  return worst;
}

// n token ids in [0, vocab), deterministic from `seed` (a linear congruential
// generator: the same ids on every platform and library).
inline std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::vector<int32_t> t(n);
  uint32_t s = seed;
  for (auto& x : t) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<int32_t>((s >> 8) % static_cast<uint32_t>(vocab));
  }
  return t;
}

}  // namespace mesa::testing
