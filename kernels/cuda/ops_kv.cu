// K/V stores (ops.h: StoreRows): f32 activations into a cache of f32, f16 or bf16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/ops.h"
#include "kernels/cuda/ops_kv_kernels.cuh"

namespace mesa::cuda {
namespace {

using namespace kv_kernels;  // NOLINT: the kernel

template <typename T>
cudaError_t Launch(void* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t width, int64_t rows,
                   cudaStream_t stream) {
  dim3 grid;
  if (!StoreRowsGrid(width, rows, &grid)) return cudaErrorInvalidValue;
  StoreRowsKernel<T><<<grid, kStoreThreads, 0, stream>>>(static_cast<T*>(dst), dst_stride, src, src_stride, width, rows);
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
