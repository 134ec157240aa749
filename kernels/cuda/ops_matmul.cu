// ops.h "weights": out[i][r] = sum_c x[i][c] * W[r][c] for every weight format.
//
// m <= kMatVecMaxM (decode): matrix-vector kernels that read each format's blocks in
// place. One warp per output row; the lanes of a warp split the row's blocks between
// them (matvec_lanes.cuh), decode each weight exactly as ref::DequantizeRow does, and
// accumulate w * x[i][c] for up to 8 tokens in f32 registers; a shuffle reduction ends
// the row. Memory-bound by design: each weight byte is read once per 8 tokens, x comes
// from L1/L2.
//
// m > kMatVecMaxM (prefill): cuBLAS. x is converted to bf16 in chunks of tokens and the
// weight rows are dequantized to bf16 a tile at a time into the workspace (BF16 weights
// are used in place; F32 weights and x stay f32, with CUBLAS_COMPUTE_32F_PEDANTIC so no
// handle setting turns on TF32); cublasGemmEx accumulates in f32. cuBLAS is
// column-major: the row-major out[m][rows] is the column-major rows x m matrix
// C = W * x^T = op(A) * B with A = the row-major W tile seen as a column-major
// cols x rows matrix (op = transpose, lda = cols), B = the row-major x seen as a
// column-major cols x m matrix (ldb = cols), and ldc = rows (a tile of rows r0.. writes
// C starting at out + r0; a chunk of tokens i0.. at out + i0 * rows).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/matmul_plan.h"
#include "kernels/cuda/matvec_kernel.cuh"
#include "kernels/cuda/matvec_lanes.cuh"
#include "kernels/cuda/ops.h"

namespace mesa::cuda {
namespace {

using namespace matvec_kernels;  // NOLINT: MatVecKernel, kWarpsPerBlock
using internal::kMatVecMaxM;

template <DType T>
cudaError_t LaunchMatVec(const DeviceWeight& w, const float* x, int64_t m, float* out,
                         cudaStream_t stream) {
  const int64_t row_bytes = RowBytes(T, w.cols);
  const auto* data = static_cast<const uint8_t*>(w.data);
  const unsigned blocks = static_cast<unsigned>((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const unsigned threads = kWarpsPerBlock * 32;
  for (int64_t i0 = 0; i0 < m; i0 += kMatVecMaxM) {
    const int mg = static_cast<int>(std::min(kMatVecMaxM, m - i0));
    const float* xg = x + i0 * w.cols;
    float* og = out + i0 * w.rows;
    if (mg == 1) {
      MatVecKernel<T, 1>
          <<<blocks, threads, 0, stream>>>(data, w.rows, w.cols, row_bytes, xg, mg, og);
    } else if (mg == 2) {
      MatVecKernel<T, 2>
          <<<blocks, threads, 0, stream>>>(data, w.rows, w.cols, row_bytes, xg, mg, og);
    } else if (mg <= 4) {
      MatVecKernel<T, 4>
          <<<blocks, threads, 0, stream>>>(data, w.rows, w.cols, row_bytes, xg, mg, og);
    } else {
      MatVecKernel<T, 8>
          <<<blocks, threads, 0, stream>>>(data, w.rows, w.cols, row_bytes, xg, mg, og);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

cudaError_t MatVec(const DeviceWeight& w, const float* x, int64_t m, float* out,
                   cudaStream_t stream) {
  switch (w.type) {
    case DType::kF32:
      return LaunchMatVec<DType::kF32>(w, x, m, out, stream);
    case DType::kF16:
      return LaunchMatVec<DType::kF16>(w, x, m, out, stream);
    case DType::kBF16:
      return LaunchMatVec<DType::kBF16>(w, x, m, out, stream);
    case DType::kQ8_0:
      return LaunchMatVec<DType::kQ8_0>(w, x, m, out, stream);
    case DType::kQ4_0:
      return LaunchMatVec<DType::kQ4_0>(w, x, m, out, stream);
    case DType::kQ4_K:
      return LaunchMatVec<DType::kQ4_K>(w, x, m, out, stream);
    case DType::kQ5_K:
      return LaunchMatVec<DType::kQ5_K>(w, x, m, out, stream);
    case DType::kQ6_K:
      return LaunchMatVec<DType::kQ6_K>(w, x, m, out, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// --- the cuBLAS path ---

__global__ void ToBF16Kernel(const float* x, int64_t n, __nv_bfloat16* y) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = __float2bfloat16_rn(x[i]);
}

// tile[r][c] = bf16(W[r][c]) for the `rows` rows starting at w.
template <DType T>
__global__ void DequantTileKernel(const uint8_t* w, int64_t row_bytes, int64_t rows, int64_t cols,
                                  __nv_bfloat16* tile) {
  const int64_t total = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    const int64_t r = e / cols, c = e % cols;
    tile[e] = __float2bfloat16_rn(internal::DecodeAt<T>(w + r * row_bytes, c));
  }
}

unsigned ElementGrid(int64_t total) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(8192, (total + 255) / 256)));
}

template <DType T>
cudaError_t LaunchDequantTile(const uint8_t* w, int64_t row_bytes, int64_t rows, int64_t cols,
                              __nv_bfloat16* tile, cudaStream_t stream) {
  DequantTileKernel<T>
      <<<ElementGrid(rows * cols), 256, 0, stream>>>(w, row_bytes, rows, cols, tile);
  return cudaGetLastError();
}

cudaError_t DequantTile(DType type, const uint8_t* w, int64_t row_bytes, int64_t rows, int64_t cols,
                        __nv_bfloat16* tile, cudaStream_t stream) {
  switch (type) {
    case DType::kF16:
      return LaunchDequantTile<DType::kF16>(w, row_bytes, rows, cols, tile, stream);
    case DType::kQ8_0:
      return LaunchDequantTile<DType::kQ8_0>(w, row_bytes, rows, cols, tile, stream);
    case DType::kQ4_0:
      return LaunchDequantTile<DType::kQ4_0>(w, row_bytes, rows, cols, tile, stream);
    case DType::kQ4_K:
      return LaunchDequantTile<DType::kQ4_K>(w, row_bytes, rows, cols, tile, stream);
    case DType::kQ5_K:
      return LaunchDequantTile<DType::kQ5_K>(w, row_bytes, rows, cols, tile, stream);
    case DType::kQ6_K:
      return LaunchDequantTile<DType::kQ6_K>(w, row_bytes, rows, cols, tile, stream);
    default:
      return cudaErrorInvalidValue;  // F32 and BF16 are used in place
  }
}

cudaError_t FromCublas(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return cudaSuccess;
    case CUBLAS_STATUS_INVALID_VALUE:
      return cudaErrorInvalidValue;
    case CUBLAS_STATUS_ALLOC_FAILED:
      return cudaErrorMemoryAllocation;
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return cudaErrorInitializationError;
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return cudaErrorNotSupported;
    default:
      return cudaErrorUnknown;
  }
}

cudaError_t GemmPath(const DeviceWeight& w, const float* x, int64_t m, float* out,
                     const MatMulWorkspace& ws, cudaStream_t stream) {
  if (!ws.cublas) return cudaErrorInvalidValue;
  cudaStream_t bound = nullptr;
  if (cublasGetStream(ws.cublas, &bound) != CUBLAS_STATUS_SUCCESS || bound != stream)
    return cudaErrorInvalidValue;  // cuBLAS would run on another stream than the kernels
  cudaError_t err = FromCublas(cublasSetPointerMode(ws.cublas, CUBLAS_POINTER_MODE_HOST));
  if (err != cudaSuccess) return err;

  const int64_t rows = w.rows, cols = w.cols;
  const internal::GemmPlan plan =
      internal::PlanGemm(w.type, rows, cols, m, ws.buffer != nullptr, ws.bytes);
  if (!plan.ok) return cudaErrorInvalidValue;  // see MatMulWorkspaceBytes
  const bool in_place = plan.w_in_place, x_f32 = plan.x_in_place;
  const int64_t mc = plan.tokens, tr = plan.rows;
  const size_t x_bytes = plan.x_bytes;

  auto* xb = static_cast<__nv_bfloat16*>(ws.buffer);
  auto* tile = reinterpret_cast<__nv_bfloat16*>(static_cast<uint8_t*>(ws.buffer) + x_bytes);
  const auto* data = static_cast<const uint8_t*>(w.data);
  const int64_t row_bytes = RowBytes(w.type, cols);
  const float one = 1.0f, zero = 0.0f;
  for (int64_t i0 = 0; i0 < m; i0 += mc) {
    const int64_t nt = std::min(mc, m - i0);
    const void* b = x + i0 * cols;
    if (!x_f32) {
      ToBF16Kernel<<<ElementGrid(nt * cols), 256, 0, stream>>>(x + i0 * cols, nt * cols, xb);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
      b = xb;
    }
    const cudaDataType type_ab = x_f32 ? CUDA_R_32F : CUDA_R_16BF;
    // F32 weights: pedantic f32, so a handle set to TF32 math cannot round the operands.
    const cublasComputeType_t compute = x_f32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
    for (int64_t r0 = 0; r0 < rows; r0 += tr) {
      const int64_t nr = std::min(tr, rows - r0);
      const void* a = data + r0 * row_bytes;
      if (!in_place) {
        err = DequantTile(w.type, data + r0 * row_bytes, row_bytes, nr, cols, tile, stream);
        if (err != cudaSuccess) return err;
        a = tile;
      }
      err = FromCublas(cublasGemmEx(ws.cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(nr),
                                    static_cast<int>(nt), static_cast<int>(cols), &one, a, type_ab,
                                    static_cast<int>(cols), b, type_ab, static_cast<int>(cols),
                                    &zero, out + i0 * rows + r0, CUDA_R_32F, static_cast<int>(rows),
                                    compute, CUBLAS_GEMM_DEFAULT));
      if (err != cudaSuccess) return err;
    }
  }
  return cudaGetLastError();
}

}  // namespace

size_t MatMulWorkspaceBytes(int64_t max_rows, int64_t max_cols, int64_t max_m) {
  return internal::WorkspaceBytes(max_rows, max_cols, max_m);
}

cudaError_t MatMul(const DeviceWeight& w, const float* x, int64_t m, float* out,
                   const MatMulWorkspace& ws, cudaStream_t stream) {
  if (!SupportedWeightType(w.type) || w.rows < 0 || w.cols < 0 || m < 0)
    return cudaErrorInvalidValue;
  if (w.cols % GetDTypeInfo(w.type).block_elems != 0) return cudaErrorInvalidValue;
  if (m == 0 || w.rows == 0) return cudaSuccess;
  if (!x || !out) return cudaErrorInvalidValue;
  if (w.cols == 0)
    return cudaMemsetAsync(out, 0, static_cast<size_t>(m * w.rows) * sizeof(float), stream);
  if (!w.data) return cudaErrorInvalidValue;
  if (!internal::IsAligned(w.data, w.type)) return cudaErrorMisalignedAddress;
  // cuBLAS takes int sizes; a row or a weight matrix that large is a caller's error.
  if (w.rows > INT_MAX || w.cols > internal::kMaxGemmElems) return cudaErrorInvalidValue;
  if (m <= kMatVecMaxM) return MatVec(w, x, m, out, stream);
  return GemmPath(w, x, m, out, ws, stream);
}

}  // namespace mesa::cuda
