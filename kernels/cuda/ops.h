// The CUDA kernels of the forward pass, as host functions that enqueue work on a stream.
// Compiled into the plugin (libmesa_cuda.so) and into the gpu-labelled tests; nothing
// else includes this header (the rest of Mesa reaches the GPU through the plugin's op
// table, kernels/cuda/backend_abi.h).
//
// Conventions (all functions):
//   - Every pointer is device memory unless its comment says host.
//   - Work is enqueued on `stream`; nothing synchronizes. The return value is the
//     launch status (cudaGetLastError after the launch), cudaSuccess when n == 0.
//   - Activations are f32, row-major: row i of a [n][d] matrix starts at i * d.
//   - Every op is the twin of a kernels/ref (and kernels/cpu) op of the same name; the
//     gpu tests compare each against the ref on random data with the tolerance stated
//     there (f32 arithmetic: ~1e-5 relative; bf16 operands: ~1e-2).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention.h"
#include "kernels/dtype.h"
#include "kernels/nn.h"

namespace mesa::cuda {

// --- elementwise and row ops (ref twins in kernels/nn.h) ---
// out[i] = x[i] * w / rms(x[i]) per row of d (ref::RmsNorm).
cudaError_t RmsNorm(const float* x, const float* w, float eps, int64_t n, int64_t d, float* out,
                    cudaStream_t stream);
// LayerNorm per row; b may be null (ref::LayerNorm).
cudaError_t LayerNorm(const float* x, const float* w, const float* b, float eps, int64_t n,
                      int64_t d, float* out, cudaStream_t stream);
// out[i][c] += bias[c] for i < n, c < width.
cudaError_t AddRows(const float* bias, int64_t width, int64_t n, float* out, cudaStream_t stream);
// y[i] += x[i], i < n.
cudaError_t Add(const float* x, int64_t n, float* y, cudaStream_t stream);
// out[i] = silu(gate[i]) * up[i]; out may alias gate.
cudaError_t SwiGlu(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream);
// out[i] = gelu(x[i]) (tanh approximation, ref::Gelu).
cudaError_t Gelu(const float* x, int64_t n, float* out, cudaStream_t stream);
// x[i] = clamp(x[i], -limit, limit).
cudaError_t Clamp(float* x, int64_t n, float limit, cudaStream_t stream);
// Rotary embedding in place of `n_heads` heads of each of n rows (row stride
// n_heads * p.head_dim) at positions pos[i] (device int64), as ref::Rope.
cudaError_t Rope(const RopeParams& p, const int64_t* pos, int64_t n, int64_t n_heads, float* x,
                 cudaStream_t stream);
// out[i] = dequantized row tokens[i] (device int32) of a [vocab][d] table of `type`.
cudaError_t Embed(DType type, const void* table, const int32_t* tokens, int64_t n, int64_t d,
                  float* out, cudaStream_t stream);

// --- weights ---
// A weight matrix in GPU memory, in its file layout (WeightView's convention, see
// kernels/matmul.h: rows of `cols` elements of `type`, RowBytes(type, cols) apart).
// Types: F32, F16, BF16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K.
struct DeviceWeight {
  DType type = DType::kF32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;
};
bool SupportedWeightType(DType type);
// Scratch the products need (dequantized tiles for cuBLAS); one per stream.
struct MatMulWorkspace {
  cublasHandle_t cublas = nullptr;  // bound to the stream by the caller
  void* buffer = nullptr;
  size_t bytes = 0;
};
// Bytes of workspace MatMul needs for weights of up to max_rows x max_cols with m
// tokens at most.
size_t MatMulWorkspaceBytes(int64_t max_rows, int64_t max_cols, int64_t max_m);
// out[i][r] = sum_c x[i][c] * W[r][c] (ref::MatMul). Small m: matrix-vector kernels that
// read the quantized blocks directly; large m: tiles dequantized to bf16 (F32 weights:
// f32) and a cuBLAS GEMM with f32 accumulation.
cudaError_t MatMul(const DeviceWeight& w, const float* x, int64_t m, float* out,
                   const MatMulWorkspace& ws, cudaStream_t stream);

// --- attention ---
// AttentionParams with q/k/v/out/alibi_slopes in device memory and q_pos a device
// int64 array: exactly the semantics of kernels/attention.h (every variant). Scratch for
// the split-K decode path comes from `scratch` (AttentionScratchBytes of it).
size_t AttentionScratchBytes(const AttentionParams& p);
cudaError_t Attention(const AttentionParams& p, void* scratch, cudaStream_t stream);
// How many key ranges Attention splits p's keys into (split-K decode path when > 1: the
// partials go through `scratch` and a combine kernel). For tests and benchmarks.
int AttentionKeySplits(const AttentionParams& p);

// --- K/V stores ---
// rows x width f32 values (src, row stride src_stride elements) stored as `type`
// (kF32, kF16 or kBF16; round to nearest even) at dst (row stride dst_stride elements).
// The twin of CpuBackend::StoreRows.
cudaError_t StoreRows(DType type, void* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                      int64_t width, int64_t rows, cudaStream_t stream);

}  // namespace mesa::cuda
