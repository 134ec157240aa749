// The matrix-vector kernel of ops_matmul.cu (MatMul with m <= 8 tokens), in a header so
// that the same code runs on the GPU (ops_matmul.cu) and, under the fiber emulator, on the
// CPU (ops_emu_test.cc: cuda_emu.h included first, MESA_CUDA_HOST_SIM defined).
#pragma once

#include <cstdint>

#include "kernels/cuda/matvec_lanes.cuh"
#include "kernels/dtype.h"

namespace mesa::cuda::matvec_kernels {

using internal::LaneDot;

constexpr int kWarpsPerBlock = 8;  // matrix-vector: rows per 256-thread block

// One warp per output row r: out[i * rows + r] for i < m (m <= M).
template <DType T, int M>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    MatVecKernel(const uint8_t* w, int64_t rows, int64_t cols, int64_t row_bytes, const float* x,
                 int m, float* out) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;  // the whole warp leaves together
  float acc[M];
  MESA_UNROLL
  for (int i = 0; i < M; ++i) acc[i] = 0.0f;
  LaneDot<T, M>::Run(w + r * row_bytes, cols, x, m, lane, acc);
  MESA_UNROLL
  for (int i = 0; i < M; ++i) {
    for (int o = 16; o > 0; o >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
    if (i < m && lane == 0) out[i * rows + r] = acc[i];
  }
}

}  // namespace mesa::cuda::matvec_kernels
