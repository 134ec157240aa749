// How MatMul (ops_matmul.cu) splits a product, as plain host arithmetic so that the
// unit test (ops_basic_args_test.cc) can check the workspace sizing on any machine.
//
// m <= kMatVecMaxM: matrix-vector kernels, no workspace. Above: rounds of cuBLAS GEMMs
// over chunks of `tokens` tokens (x converted to bf16 in the workspace, except for F32
// weights) and tiles of `rows` weight rows (dequantized to bf16 in the workspace after
// the x chunk, except for F32 and BF16 weights, which are read in place).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace mesa::cuda::internal {

constexpr int64_t kMatVecMaxM = 8;          // tokens per matrix-vector launch; the switch-over
constexpr int64_t kXChunkElems = 1 << 24;   // x elements converted to bf16 per round
constexpr int64_t kTileElems = 1 << 24;     // dequantized tile MatMulWorkspaceBytes provides
constexpr int64_t kMaxGemmElems = 1 << 30;  // each operand of one cuBLAS call (int indexes)
constexpr size_t kWsAlign = 256;

inline size_t AlignUp(size_t v) { return (v + kWsAlign - 1) / kWsAlign * kWsAlign; }

inline size_t WorkspaceBytes(int64_t max_rows, int64_t max_cols, int64_t max_m) {
  if (max_m <= kMatVecMaxM || max_rows <= 0 || max_cols <= 0) return 0;
  // GemmPlan's x chunk (tokens * cols <= max(cols, kXChunkElems), and <= m * cols) and
  // at least one weight row of tile; the tile gets up to kTileElems so prefill runs in
  // few rounds.
  const int64_t x_elems = std::min(max_m * max_cols, std::max(max_cols, kXChunkElems));
  const int64_t tile_elems = std::min(max_rows * max_cols, std::max(max_cols, kTileElems));
  return AlignUp(static_cast<size_t>(x_elems) * 2) + AlignUp(static_cast<size_t>(tile_elems) * 2);
}

struct GemmPlan {
  bool ok = false;          // false: the workspace is missing or too small
  bool x_in_place = false;  // F32: B = x itself (f32); else x chunks in bf16 at offset 0
  bool w_in_place = false;  // F32, BF16: A = the weights; else tiles at offset x_bytes
  int64_t tokens = 0;       // tokens per round (the last round may have fewer)
  int64_t rows = 0;         // weight rows per round (the last round may have fewer)
  size_t x_bytes = 0;       // workspace bytes of the bf16 x chunk (0 when x_in_place)
};

// rows, cols >= 1, cols <= kMaxGemmElems and m > kMatVecMaxM (MatMul checks them).
inline GemmPlan PlanGemm(DType type, int64_t rows, int64_t cols, int64_t m, bool have_buffer,
                         size_t ws_bytes) {
  GemmPlan p;
  p.x_in_place = type == DType::kF32;
  p.w_in_place = type == DType::kF32 || type == DType::kBF16;
  // Tokens per round: every cuBLAS operand (B = tokens x cols, C = tokens x rows) under
  // kMaxGemmElems; converted x chunks under kXChunkElems (at least one token).
  int64_t mc = std::max<int64_t>(1, std::min(kMaxGemmElems / rows, kMaxGemmElems / cols));
  if (!p.x_in_place) mc = std::min(mc, std::max<int64_t>(1, kXChunkElems / cols));
  p.tokens = std::min(mc, m);
  p.x_bytes = p.x_in_place ? 0 : AlignUp(static_cast<size_t>(p.tokens * cols) * 2);
  // Rows per round: in-place weights in slices under kMaxGemmElems; dequantized rows as
  // many as the rest of the workspace holds (a multiple of 128 when that is not all).
  int64_t tr = std::max<int64_t>(1, kMaxGemmElems / cols);
  const size_t row_bytes = static_cast<size_t>(cols) * 2;
  if (!p.x_in_place && (!have_buffer || ws_bytes < p.x_bytes)) return p;
  if (!p.w_in_place) {
    if (ws_bytes - p.x_bytes < row_bytes) return p;
    tr = std::min<int64_t>(tr, static_cast<int64_t>((ws_bytes - p.x_bytes) / row_bytes));
  }
  tr = std::min(tr, rows);
  if (tr < rows && tr >= 128) tr -= tr % 128;
  p.rows = tr;
  p.ok = true;
  return p;
}

}  // namespace mesa::cuda::internal
