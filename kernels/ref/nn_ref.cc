// Scalar references for kernels/nn.h (attention is in attention_ref.cc): double
// accumulation, explicit loops, no SIMD. These are the specification the cpu::
// versions are tested against.
#include <cmath>
#include <vector>

#include "kernels/nn.h"

namespace mesa::ref {

void RmsNorm(const float* x, const float* w, float eps, int64_t n, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  double inv = 1.0 / std::sqrt(ss / n + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(x[i] * inv * (w ? w[i] : 1.0f));
}

void LayerNorm(const float* x, const float* w, const float* b, float eps, int64_t n,
               float* out) {
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= n;
  double var = 0;
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= n;
  double inv = 1.0 / std::sqrt(var + eps);
  for (int64_t i = 0; i < n; ++i) {
    double y = (x[i] - mean) * inv * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
    out[i] = static_cast<float>(y);
  }
}

void Rope(const RopeParams& p, double position, int64_t n_heads, float* x) {
  const int64_t half = p.rope_dims / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * p.head_dim;
    for (int64_t i = 0; i < half; ++i) {
      double inv_freq = std::pow(static_cast<double>(p.freq_base), -2.0 * i / p.rope_dims);
      double angle = position * p.freq_scale * inv_freq;
      double c = std::cos(angle), s = std::sin(angle);
      int64_t a = p.neox ? i : 2 * i;
      int64_t b = p.neox ? i + half : 2 * i + 1;
      double x0 = v[a], x1 = v[b];
      v[a] = static_cast<float>(x0 * c - x1 * s);
      v[b] = static_cast<float>(x0 * s + x1 * c);
    }
  }
}

void Softmax(float* x, int64_t n) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
  double sum = 0;
  std::vector<double> e(n);
  for (int64_t i = 0; i < n; ++i) sum += (e[i] = std::exp(x[i] - mx));
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(e[i] / sum);
}

float Silu(float x) { return static_cast<float>(x / (1.0 + std::exp(-static_cast<double>(x)))); }

float Gelu(float x) {
  // 0.5 x (1 + tanh(z)) written as x / (1 + e^(-2z)) (the same function): the tanh form
  // cancels for negative x (1 + tanh(z) -> 0), which left even double with no correct
  // digit below x = -8.
  const double kSqrt2OverPi = 0.79788456080286535587989211986876;
  const double xd = x;
  const double z = kSqrt2OverPi * xd * (1.0 + 0.044715 * xd * xd);
  return static_cast<float>(xd / (1.0 + std::exp(-2.0 * z)));
}

}  // namespace mesa::ref
