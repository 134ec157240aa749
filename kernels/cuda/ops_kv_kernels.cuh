// The kernel of ops_kv.cu (ops.h StoreRows), in a header so that the same code runs on the
// GPU (ops_kv.cu) and, f32 only, under the fiber emulator on the CPU (ops_emu_test.cc,
// cuda_emu.h included first): the f16/bf16 conversions exist only under nvcc.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace mesa::cuda::kv_kernels {

template <typename T>
__device__ __forceinline__ T FromF32(float x);
template <>
__device__ __forceinline__ float FromF32<float>(float x) {
  return x;
}
#ifdef __CUDACC__
template <>
__device__ __forceinline__ __half FromF32<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromF32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
#endif

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

constexpr int kStoreThreads = 256;

// The launch grid for width x rows (width, rows > 0): column slices over x (at most 1024,
// grid-stride beyond), rows over y (at most 65535) and z. False where rows do not fit.
inline bool StoreRowsGrid(int64_t width, int64_t rows, dim3* grid) {
  const int64_t xs = (width + kStoreThreads - 1) / kStoreThreads;
  const int64_t ys = rows < 65535 ? rows : 65535;
  const int64_t zs = (rows + ys - 1) / ys;
  if (zs > 65535) return false;
  *grid = dim3(static_cast<unsigned>(xs < 1024 ? xs : 1024), static_cast<unsigned>(ys),
               static_cast<unsigned>(zs));
  return true;
}

}  // namespace mesa::cuda::kv_kernels
