// Matrix products against weight matrices stored in any supported DType.
// Convention (as in ggml and every Linear layer): W has `rows` output features, each a
// row of `cols` input features, stored row after row (RowBytes(type, cols) apart).
//   out[i][r] = sum_c x[i][c] * W[r][c]     for i < m tokens, r < rows
// x and out are row-major f32 with `cols` and `rows` columns.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"

#include "kernels/dtype.h"

namespace mesa {

class ThreadPool;

// A non-owning view of a 2-D weight matrix.
struct WeightView {
  DType type = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  // Optional: the same matrix in the layout this machine's fast kernels read best
  // (cpu::PackWeights). cpu::MatMul uses it when the running kernel set matches;
  // `data` stays the reference layout for everything else.
  const void* packed = nullptr;

  int64_t row_bytes() const { return RowBytes(type, cols); }
  const uint8_t* row(int64_t r) const {
    return static_cast<const uint8_t*>(data) + r * row_bytes();
  }
};

// One product of several that read the same input.
struct MatMulTarget {
  WeightView w;
  float* out = nullptr;  // [m][w.rows]
};

namespace ref {
// The specification of each format: element i of a row, decoded exactly.
void DequantizeRow(DType type, const void* row, float* out, int64_t n);
// Plain product with double accumulation over dequantized weights.
void MatMul(const WeightView& w, const float* x, int64_t m, float* out);
}  // namespace ref

namespace cpu {
// The kernel set the CPU kernels run: "avx512" (AVX-512 VNNI), "avx2" (AVX2 + FMA +
// F16C) or "scalar". The environment variable MESA_CPU_ISA=avx512|avx2|scalar forces
// one (e.g. the AVX2 kernels on an AVX-512 machine); unset or "auto" = the best this
// CPU runs. Read once per process.
const char* ActiveIsaName();
// OK, or why MESA_CPU_ISA cannot be honoured (an unknown name, or an ISA this CPU
// lacks). Programs call it at startup; a kernel run under a bad setting aborts with the
// same message instead.
absl::Status CheckIsaSetting();

// Fast dequantization of one row (SIMD where it pays).
void DequantizeRow(DType type, const void* row, float* out, int64_t n);
// Fast, multi-threaded product. m == 1 is the decode path (matrix-vector);
// m > 1 the prefill path (matrix-matrix). Quantized weights are never expanded
// to f32 as a whole.
void MatMul(const WeightView& w, const float* x, int64_t m, float* out, ThreadPool& pool);

using mesa::MatMulTarget;
// out_i = x W_i^T for every target (all with the same cols), in one pass over the pool:
// one hand-off to the threads instead of one per matrix, and the activations quantized
// once per activation form. For the q/k/v and gate/up projections of a layer. Results
// are bit-identical to separate MatMul calls.
void MatMulShared(const MatMulTarget* targets, int count, const float* x, int64_t m,
                  ThreadPool& pool);

// A copy of `w` repacked for the kernels of this CPU, to be set as w.packed (and kept
// alive as long as the view is used), or null when the type has no packed form here.
// Today: Q8_0, Q4_K, Q5_K and Q6_K on AVX-512 VNNI, as 16 rows interleaved per vector;
// Q8_0, Q4_0, Q4_K and Q6_K on AVX2, as 8 rows (see matmul_cpu_internal.h). The form
// belongs to the kernel set running when it was made (MESA_CPU_ISA, ForceIsa): pack
// under the one that will run it. Results are within the same tolerances as the
// unpacked kernels (not bit-identical to them); decode and prefill agree bit for bit.
std::shared_ptr<const uint8_t> PackWeights(const WeightView& w);
// Bytes of the packed form of `w` (0: none; else a multiple of 64).
int64_t PackedBytes(const WeightView& w);
// Writes the packed form into `dst`: PackedBytes(w) zero-filled bytes, 64-byte aligned.
void PackWeightsInto(const WeightView& w, uint8_t* dst);
}  // namespace cpu

}  // namespace mesa
