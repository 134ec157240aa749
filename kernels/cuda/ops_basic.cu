// ops.h "elementwise and row ops": norms, rotary embedding, activations, bias/residual
// adds, clamp and the embedding lookup. Each kernel follows its ref twin
// (kernels/ref/nn_ref.cc) formula by formula: the norms and RoPE compute in double as the
// ref does (H200 has full-rate-enough FP64, and these ops are memory-bound), so they
// differ from the ref only in the order of the row sums; the activations compute in f32
// with the accurate expf (a few ulp from the ref's double).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/ops_basic_kernels.cuh"
#include "kernels/cuda/ops.h"

namespace mesa::cuda {
namespace {

using namespace basic_kernels;  // NOLINT: the kernels and their grid sizes

template <DType T>
cudaError_t LaunchEmbed(const void* table, const int32_t* tokens, int64_t n, int64_t d, float* out,
                        cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(n, 65535));
  EmbedKernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const uint8_t*>(table),
                                                  RowBytes(T, d), tokens, n, d, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t RmsNorm(const float* x, const float* w, float eps, int64_t n, int64_t d, float* out,
                    cudaStream_t stream) {
  if (n < 0 || d < 0) return cudaErrorInvalidValue;
  if (n == 0 || d == 0) return cudaSuccess;
  RmsNormKernel<<<RowGrid(n), kThreads, 0, stream>>>(x, w, eps, n, d, out);
  return cudaGetLastError();
}

cudaError_t LayerNorm(const float* x, const float* w, const float* b, float eps, int64_t n,
                      int64_t d, float* out, cudaStream_t stream) {
  if (n < 0 || d < 0) return cudaErrorInvalidValue;
  if (n == 0 || d == 0) return cudaSuccess;
  LayerNormKernel<<<RowGrid(n), kThreads, 0, stream>>>(x, w, b, eps, n, d, out);
  return cudaGetLastError();
}

cudaError_t AddRows(const float* bias, int64_t width, int64_t n, float* out, cudaStream_t stream) {
  if (width < 0 || n < 0) return cudaErrorInvalidValue;
  if (width == 0 || n == 0) return cudaSuccess;
  const int64_t total = width * n;
  AddRowsKernel<<<GridFor(total), kThreads, 0, stream>>>(bias, width, total, out);
  return cudaGetLastError();
}

cudaError_t Add(const float* x, int64_t n, float* y, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  AddKernel<<<GridFor(n), kThreads, 0, stream>>>(x, n, y);
  return cudaGetLastError();
}

cudaError_t SwiGlu(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  SwiGluKernel<<<GridFor(n), kThreads, 0, stream>>>(gate, up, n, out);
  return cudaGetLastError();
}

cudaError_t Gelu(const float* x, int64_t n, float* out, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  GeluKernel<<<GridFor(n), kThreads, 0, stream>>>(x, n, out);
  return cudaGetLastError();
}

cudaError_t Clamp(float* x, int64_t n, float limit, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  ClampKernel<<<GridFor(n), kThreads, 0, stream>>>(x, n, limit);
  return cudaGetLastError();
}

cudaError_t Rope(const RopeParams& p, const int64_t* pos, int64_t n, int64_t n_heads, float* x,
                 cudaStream_t stream) {
  if (n < 0 || n_heads < 0 || p.head_dim < 0 || p.rope_dims < 0 || p.rope_dims > p.head_dim)
    return cudaErrorInvalidValue;
  const int64_t half = p.rope_dims / 2;
  if (n == 0 || n_heads == 0 || half == 0) return cudaSuccess;
  RopeKernel<<<GridFor(n * half), kThreads, 0, stream>>>(p, pos, n, n_heads, x);
  return cudaGetLastError();
}

cudaError_t Embed(DType type, const void* table, const int32_t* tokens, int64_t n, int64_t d,
                  float* out, cudaStream_t stream) {
  if (!SupportedWeightType(type) || n < 0 || d < 0) return cudaErrorInvalidValue;
  if (d % GetDTypeInfo(type).block_elems != 0) return cudaErrorInvalidValue;
  if (n == 0 || d == 0) return cudaSuccess;
  if (!internal::IsAligned(table, type)) return cudaErrorMisalignedAddress;
  switch (type) {
    case DType::kF32:
      return LaunchEmbed<DType::kF32>(table, tokens, n, d, out, stream);
    case DType::kF16:
      return LaunchEmbed<DType::kF16>(table, tokens, n, d, out, stream);
    case DType::kBF16:
      return LaunchEmbed<DType::kBF16>(table, tokens, n, d, out, stream);
    case DType::kQ8_0:
      return LaunchEmbed<DType::kQ8_0>(table, tokens, n, d, out, stream);
    case DType::kQ4_0:
      return LaunchEmbed<DType::kQ4_0>(table, tokens, n, d, out, stream);
    case DType::kQ4_K:
      return LaunchEmbed<DType::kQ4_K>(table, tokens, n, d, out, stream);
    case DType::kQ5_K:
      return LaunchEmbed<DType::kQ5_K>(table, tokens, n, d, out, stream);
    case DType::kQ6_K:
      return LaunchEmbed<DType::kQ6_K>(table, tokens, n, d, out, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace mesa::cuda
