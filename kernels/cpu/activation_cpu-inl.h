// Body of the CPU activation kernels (SwiGLU's silu(gate) * up, GELU), compiled once per
// ISA as the attention unit kernel is: activation_x86_avx512.cc (16-float vectors),
// activation_x86_avx2.cc (8) and activation_cpu.cc (portable, 4), picked per call by
// activation_cpu.cc from internal::CurrentIsa() (MESA_CPU_ISA forces one). Define
// before including: MESA_ACT_NS (the namespace) and MESA_ACT_LANES.
//
// Both are x * sigmoid(a x'): silu(g) = g / (1 + e^-g) and GELU's tanh form
// 0.5 v (1 + tanh(z)) = v / (1 + e^(-2z)), z = sqrt(2/pi) (v + 0.044715 v^3), so one
// vector exp serves both (std::exp per element was ~20 cycles, 6% of a 2048-token
// prefill). The exp is Cephes' expf (range reduction by ln 2, degree-6 polynomial,
// ~2 ulp) over the whole float range: above 88.3 it is +inf (so x / (1 + e^-x) goes
// to -0 for very negative x, as with std::exp), below -87.3 it is e^-87.3 (1 + that
// rounds to 1, as 1 + the true value does). NaN stays NaN; silu(-inf) and gelu(-inf)
// are NaN (-inf / inf), as the scalar formulas give. The last partial vector is computed in a zero-padded copy with the same
// operations, so every element's result is the same wherever it falls.
//
// Only vector extensions and plain C here (see attention_cpu-inl.h: no out-of-line
// copies of shared inline functions from ISA-flagged files).
#ifndef MESA_ACT_NS
#error "define MESA_ACT_NS and MESA_ACT_LANES first"
#endif

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace mesa::cpu::act_internal::MESA_ACT_NS {
namespace {

constexpr int kLanes = MESA_ACT_LANES;
typedef float V __attribute__((vector_size(4 * kLanes)));
typedef int32_t VI __attribute__((vector_size(4 * kLanes)));

inline __attribute__((always_inline)) V Splat(float x) { return V{} + x; }
inline __attribute__((always_inline)) V LoadV(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

#include "kernels/cpu/exp_poly-inl.h"  // ExpInRange

inline __attribute__((always_inline)) V Exp(V arg) {
  V x = arg < -87.3f ? Splat(-87.3f) : arg;
  x = x > 88.3f ? Splat(88.3f) : x;
  const V res = ExpInRange(x);
  return arg > 88.3f ? Splat(__builtin_inff()) : res;
}

// silu(g) * u
inline __attribute__((always_inline)) V SwiGluV(V g, V u) { return g / (1.0f + Exp(-g)) * u; }

inline __attribute__((always_inline)) V GeluV(V v) {
  const V z = v * (0.79788456080286535587989211986876f + (0.79788456080286535587989211986876f * 0.044715f) * v * v);
  return v / (1.0f + Exp(-2.0f * z));
}

}  // namespace

void SwiGlu(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const V r = SwiGluV(LoadV(gate + i), LoadV(up + i));
    std::memcpy(out + i, &r, sizeof(r));
  }
  if (i < n) {
    float g[kLanes] = {}, u[kLanes] = {};
    const size_t bytes = static_cast<size_t>(n - i) * 4;
    std::memcpy(g, gate + i, bytes);
    std::memcpy(u, up + i, bytes);
    const V r = SwiGluV(LoadV(g), LoadV(u));
    std::memcpy(out + i, &r, bytes);
  }
}

void Gelu(const float* x, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const V r = GeluV(LoadV(x + i));
    std::memcpy(out + i, &r, sizeof(r));
  }
  if (i < n) {
    float v[kLanes] = {};
    const size_t bytes = static_cast<size_t>(n - i) * 4;
    std::memcpy(v, x + i, bytes);
    const V r = GeluV(LoadV(v));
    std::memcpy(out + i, &r, bytes);
  }
}

}  // namespace mesa::cpu::act_internal::MESA_ACT_NS
