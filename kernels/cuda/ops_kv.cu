// K/V stores (ops.h: StoreRows): f32 activations into a cache of f32, f16 or bf16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/ops.h"

namespace mesa::cuda {
namespace {

template <typename T>
__device__ __forceinline__ T FromF32(float x);
template <>
__device__ __forceinline__ float FromF32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half FromF32<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromF32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// One block row per (row, 256-wide column slice); grid-stride over columns.
template <typename T>
__global__ void StoreRowsKernel(T* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t width,
                                int64_t rows) {
  const int64_t r = blockIdx.y + static_cast<int64_t>(blockIdx.z) * gridDim.y;
  if (r >= rows) return;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < width;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[r * dst_stride + i] = FromF32<T>(src[r * src_stride + i]);
  }
}

template <typename T>
cudaError_t Launch(void* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t width, int64_t rows,
                   cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t xs = (width + kThreads - 1) / kThreads;
  // Rows over y (at most 65535) and z.
  const int64_t ys = rows < 65535 ? rows : 65535;
  const int64_t zs = (rows + ys - 1) / ys;
  if (zs > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(xs < 1024 ? xs : 1024), static_cast<unsigned>(ys), static_cast<unsigned>(zs));
  StoreRowsKernel<T><<<grid, kThreads, 0, stream>>>(static_cast<T*>(dst), dst_stride, src, src_stride, width, rows);
  return cudaGetLastError();
}

}  // namespace

cudaError_t StoreRows(DType type, void* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t width,
                      int64_t rows, cudaStream_t stream) {
  if (width <= 0 || rows <= 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr || dst_stride < width || src_stride < width) return cudaErrorInvalidValue;
  switch (type) {
    case DType::kF32:
      return Launch<float>(dst, dst_stride, src, src_stride, width, rows, stream);
    case DType::kF16:
      return Launch<__half>(dst, dst_stride, src, src_stride, width, rows, stream);
    case DType::kBF16:
      return Launch<__nv_bfloat16>(dst, dst_stride, src, src_stride, width, rows, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace mesa::cuda
