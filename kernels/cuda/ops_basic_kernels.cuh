// The kernels of ops_basic.cu (ops.h "elementwise and row ops"), in a header so that the
// same code runs on the GPU (ops_basic.cu) and, under the fiber emulator, on the CPU
// (ops_emu_test.cc with cuda_emu.h included first and MESA_CUDA_HOST_SIM defined).
// Numerics: see ops_basic.cu.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/dequant.cuh"
#include "kernels/dtype.h"
#include "kernels/nn.h"

namespace mesa::cuda::basic_kernels {

constexpr int kThreads = 256;         // every kernel here: a multiple of 32
constexpr int64_t kMaxBlocks = 8192;  // grid-stride beyond this

// Blocks for `total` threads' worth of work, at least 1.
inline unsigned GridFor(int64_t total) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min(kMaxBlocks, (total + kThreads - 1) / kThreads)));
}

__device__ __forceinline__ int64_t GlobalIndex() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t GlobalStride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Sum of v over the block, returned to every thread. `scratch` holds one double per warp;
// blockDim.x is a multiple of 32 and at most 1024. Every thread of the block must call it.
__device__ inline double BlockSum(double v, double* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = lane < warps ? scratch[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // scratch may be reused by the next call
  return v;
}

// One block per row (grid-stride over rows). out may alias x: each element is read
// before its own thread writes it, and the sum is complete before any write.
__global__ void RmsNormKernel(const float* x, const float* w, float eps, int64_t n, int64_t d,
                              float* out) {
  __shared__ double scratch[32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const float* xr = x + row * d;
    float* o = out + row * d;
    double ss = 0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) ss += static_cast<double>(xr[c]) * xr[c];
    ss = BlockSum(ss, scratch);
    const double inv = 1.0 / sqrt(ss / static_cast<double>(d) + static_cast<double>(eps));
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x)
      o[c] = static_cast<float>(xr[c] * inv * (w ? w[c] : 1.0f));
  }
}

__global__ void LayerNormKernel(const float* x, const float* w, const float* b, float eps,
                                int64_t n, int64_t d, float* out) {
  __shared__ double scratch[32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const float* xr = x + row * d;
    float* o = out + row * d;
    double sum = 0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) sum += xr[c];
    const double mean = BlockSum(sum, scratch) / static_cast<double>(d);
    double var = 0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) var += (xr[c] - mean) * (xr[c] - mean);
    var = BlockSum(var, scratch) / static_cast<double>(d);
    const double inv = 1.0 / sqrt(var + static_cast<double>(eps));
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      const double y = (xr[c] - mean) * inv * (w ? w[c] : 1.0f) + (b ? b[c] : 0.0f);
      o[c] = static_cast<float>(y);
    }
  }
}

__global__ void AddRowsKernel(const float* bias, int64_t width, int64_t total, float* out) {
  for (int64_t i = GlobalIndex(); i < total; i += GlobalStride()) out[i] += bias[i % width];
}

__global__ void AddKernel(const float* x, int64_t n, float* y) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) y[i] += x[i];
}

// out may alias gate (each element is read before its thread writes it).
__global__ void SwiGluKernel(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// 0.5 x (1 + tanh(z)) written as x / (1 + exp(-2z)): the same function without the
// cancellation of 1 + tanh(z) for negative z.
__global__ void GeluKernel(const float* x, int64_t n, float* out) {
  const float kSqrt2OverPi = 0.79788456080286535587989211986876f;
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) {
    const float v = x[i];
    const float z = kSqrt2OverPi * v * (1.0f + 0.044715f * v * v);
    out[i] = v / (1.0f + expf(-2.0f * z));
  }
}

// std::clamp(v, -limit, limit): NaN stays NaN, as on the CPU.
__global__ void ClampKernel(float* x, int64_t n, float limit) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) {
    const float v = x[i];
    x[i] = v < -limit ? -limit : (limit < v ? limit : v);
  }
}

// One thread per (row, rotated pair): the angle, its cos and sin in double exactly as
// ref::Rope computes them, then the pair rotated in every head of the row.
__global__ void RopeKernel(RopeParams p, const int64_t* pos, int64_t n, int64_t n_heads, float* x) {
  const int64_t half = p.rope_dims / 2;
  const int64_t total = n * half;
  const int64_t row_stride = n_heads * p.head_dim;
  for (int64_t idx = GlobalIndex(); idx < total; idx += GlobalStride()) {
    const int64_t row = idx / half, i = idx % half;
    const double position = static_cast<double>(pos[row]);
    const double inv_freq = pow(static_cast<double>(p.freq_base),
                                -2.0 * static_cast<double>(i) / static_cast<double>(p.rope_dims));
    const double angle = position * p.freq_scale * inv_freq;
    double s, c;
    sincos(angle, &s, &c);
    const int64_t a = p.neox ? i : 2 * i;
    const int64_t b = p.neox ? i + half : 2 * i + 1;
    float* v = x + row * row_stride;
    for (int64_t h = 0; h < n_heads; ++h, v += p.head_dim) {
      const double x0 = v[a], x1 = v[b];
      v[a] = static_cast<float>(x0 * c - x1 * s);
      v[b] = static_cast<float>(x0 * s + x1 * c);
    }
  }
}

// One block per output row (grid-stride over rows), threads over its d elements.
template <DType T>
__global__ void EmbedKernel(const uint8_t* table, int64_t row_bytes, const int32_t* tokens,
                            int64_t n, int64_t d, float* out) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const uint8_t* row = table + static_cast<int64_t>(tokens[i]) * row_bytes;
    float* o = out + i * d;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) o[c] = internal::DecodeAt<T>(row, c);
  }
}

// Blocks for the row kernels: one per row, at most 65535 (grid-stride beyond).
inline unsigned RowGrid(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(n, 65535)); }

}  // namespace mesa::cuda::basic_kernels
