// Element-wise and row-wise neural-network ops: norms, rotary embedding, activations,
// softmax. Each op has a ref:: twin (double accumulation, the specification) and a
// cpu:: version (SIMD-friendly, what the engine calls). Rows are contiguous f32.
#pragma once

#include <cstdint>

namespace mesa {

enum class RopeStyle;

struct RopeParams {
  int64_t head_dim = 0;
  int64_t rope_dims = 0;     // rotated dims (<= head_dim); the rest pass through
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;   // linear scaling: angle uses position * freq_scale
  bool neox = false;         // false: pairs (2i, 2i+1); true: pairs (i, i + rope_dims/2)
};

namespace ref {
// out = x / rms(x) * w  (w may be null: no weight)
void RmsNorm(const float* x, const float* w, float eps, int64_t n, float* out);
// out = (x - mean) / sqrt(var + eps) * w + b  (w, b may be null)
void LayerNorm(const float* x, const float* w, const float* b, float eps, int64_t n, float* out);
// Rotates n_heads heads of one token (x: [n_heads][head_dim]) in place to `position`.
void Rope(const RopeParams& p, double position, int64_t n_heads, float* x);
void Softmax(float* x, int64_t n);
float Silu(float x);
float Gelu(float x);  // tanh approximation, as GPT-2/MPT and ggml use
}  // namespace ref

namespace cpu {
void RmsNorm(const float* x, const float* w, float eps, int64_t n, float* out);
void LayerNorm(const float* x, const float* w, const float* b, float eps, int64_t n, float* out);
// Precomputed cos/sin for one position: cs has rope_dims entries (cos, sin interleaved).
void RopeCosSin(const RopeParams& p, double position, float* cs);
void RopeApply(const RopeParams& p, const float* cs, int64_t n_heads, float* x);
void Rope(const RopeParams& p, double position, int64_t n_heads, float* x);
void Softmax(float* x, int64_t n);
// out[i] = silu(gate[i]) * up[i]
void SwiGlu(const float* gate, const float* up, int64_t n, float* out);
void Gelu(const float* x, int64_t n, float* out);
// y += x ; y += bias
void Add(const float* x, int64_t n, float* y);
float Dot(const float* a, const float* b, int64_t n);
// y += a * x
void Axpy(float a, const float* x, int64_t n, float* y);
}  // namespace cpu

}  // namespace mesa
