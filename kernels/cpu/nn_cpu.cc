// Fast versions of kernels/nn.h. The inner loops are written to auto-vectorize, and
// the hottest (Dot, Axpy) are cloned per ISA (AVX-512, AVX2+FMA, baseline) with
// runtime dispatch, so one binary runs on any x86-64 and uses what the CPU has.
#include <algorithm>
#include <cmath>

#include "kernels/nn.h"

namespace mesa::cpu {

#if defined(__x86_64__) && !defined(__clang__)
#define MESA_MULTIVERSION __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define MESA_MULTIVERSION
#endif

MESA_MULTIVERSION float Dot(const float* a, const float* b, int64_t n) {
  // 16 independent partial sums: vectorizes to wide FMAs without -ffast-math.
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int l = 0; l < 16; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int l = 0; l < 16; ++l) s += acc[l];
  return s;
}

MESA_MULTIVERSION void Axpy(float a, const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void Add(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void RmsNorm(const float* x, const float* w, float eps, int64_t n, float* out) {
  // Accumulate in double: the norm of a long residual row is where f32 loses most.
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  if (w) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv;
  }
}

void LayerNorm(const float* x, const float* w, const float* b, float eps, int64_t n,
               float* out) {
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= n;
  double var = 0;
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= n;
  const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
  const float m = static_cast<float>(mean);
  for (int64_t i = 0; i < n; ++i) {
    float y = (x[i] - m) * inv;
    if (w) y *= w[i];
    if (b) y += b[i];
    out[i] = y;
  }
}

void RopeCosSin(const RopeParams& p, double position, float* cs) {
  const int64_t half = p.rope_dims / 2;
  for (int64_t i = 0; i < half; ++i) {
    double inv_freq = std::pow(static_cast<double>(p.freq_base), -2.0 * i / p.rope_dims);
    double angle = position * p.freq_scale * inv_freq;
    cs[2 * i] = static_cast<float>(std::cos(angle));
    cs[2 * i + 1] = static_cast<float>(std::sin(angle));
  }
}

void RopeApply(const RopeParams& p, const float* cs, int64_t n_heads, float* x) {
  const int64_t half = p.rope_dims / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * p.head_dim;
    if (p.neox) {
      for (int64_t i = 0; i < half; ++i) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c - x1 * s;
        v[i + half] = x0 * s + x1 * c;
      }
    } else {
      for (int64_t i = 0; i < half; ++i) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * c - x1 * s;
        v[2 * i + 1] = x0 * s + x1 * c;
      }
    }
  }
}

void Rope(const RopeParams& p, double position, int64_t n_heads, float* x) {
  float cs[1024];
  float* buf = p.rope_dims <= 1024 ? cs : new float[p.rope_dims];
  RopeCosSin(p, position, buf);
  RopeApply(p, buf, n_heads, x);
  if (buf != cs) delete[] buf;
}

void Softmax(float* x, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

// SwiGlu and Gelu: activation_cpu.cc (vector kernels per ISA).

}  // namespace mesa::cpu
