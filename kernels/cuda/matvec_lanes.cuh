// The matrix-vector kernels' inner loops (ops_matmul.cu): each weight format's share of
// one row for one lane of the row's warp. A lane decodes its weights exactly as
// ref::DequantizeRow does and accumulates w * x[i][c] for the m <= M tokens in acc[].
// The lanes of a warp split a row's blocks between them (whole blocks or fixed parts of
// a block), so the warp reads a contiguous run of the row; the caller sums acc over the
// 32 lanes. Host-compilable under MESA_CUDA_HOST_SIM (device_compat.cuh) so that
// ops_basic_sim_test.cc checks the indexing of every format on a CPU.
#pragma once

#include <cstdint>

#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/device_compat.cuh"
#include "kernels/dtype.h"

namespace mesa::cuda::internal {

// acc[i] += w * x[i][c] for the i < m tokens (m <= M; M a compile-time bound).
template <int M>
MESA_DEVICE void Fma(float w, const float* x, int64_t cols, int64_t c, int m, float* acc) {
  MESA_UNROLL
  for (int i = 0; i < M; ++i) {
    if (i < m) acc[i] = Fmaf(w, Ldg(x + i * cols + c), acc[i]);
  }
}

// Each format's share of one row for lane `lane` of the row's warp.
template <DType T, int M>
struct LaneDot;

// Plain floats: lane handles elements lane, lane + 32, ... (coalesced).
template <int M>
struct LaneDot<DType::kF32, M> {
  static MESA_DEVICE void Run(const uint8_t* row, int64_t cols, const float* x, int m, int lane,
                              float* acc) {
    MESA_UNROLL4
    for (int64_t c = lane; c < cols; c += 32) Fma<M>(LoadF32(row + 4 * c), x, cols, c, m, acc);
  }
};

template <int M>
struct LaneDot<DType::kF16, M> {
  static MESA_DEVICE void Run(const uint8_t* row, int64_t cols, const float* x, int m, int lane,
                              float* acc) {
    MESA_UNROLL4
    for (int64_t c = lane; c < cols; c += 32) Fma<M>(LoadF16(row + 2 * c), x, cols, c, m, acc);
  }
};

template <int M>
struct LaneDot<DType::kBF16, M> {
  static MESA_DEVICE void Run(const uint8_t* row, int64_t cols, const float* x, int m, int lane,
                              float* acc) {
    MESA_UNROLL4
    for (int64_t c = lane; c < cols; c += 32) Fma<M>(LoadBF16(row + 2 * c), x, cols, c, m, acc);
  }
};

// Q8_0: 4 lanes per block (8 blocks per warp step), lane part p takes quants 8p..8p+7.
template <int M>
struct LaneDot<DType::kQ8_0, M> {
  static MESA_DEVICE void Run(const uint8_t* row, int64_t cols, const float* x, int m, int lane,
                              float* acc) {
    const int64_t nb = cols / 32;
    const int part = lane & 3;
    for (int64_t b = lane >> 2; b < nb; b += 8) {
      const uint8_t* blk = row + b * kQ8_0Bytes;
      const float d = LoadF16(blk);
      const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2 + 8 * part);
      const int64_t c0 = b * 32 + 8 * part;
      MESA_UNROLL
      for (int j = 0; j < 8; ++j)
        Fma<M>(MulRn(d, static_cast<float>(qs[j])), x, cols, c0 + j, m, acc);
    }
  }
};

// Q4_0: 4 lanes per block, lane part p takes bytes 4p..4p+3: elements 4p+j (low
// nibbles) and 16+4p+j (high nibbles).
template <int M>
struct LaneDot<DType::kQ4_0, M> {
  static MESA_DEVICE void Run(const uint8_t* row, int64_t cols, const float* x, int m, int lane,
                              float* acc) {
    const int64_t nb = cols / 32;
    const int part = lane & 3;
    for (int64_t b = lane >> 2; b < nb; b += 8) {
      const uint8_t* blk = row + b * kQ4_0Bytes;
      const float d = LoadF16(blk);
      const uint8_t* qs = blk + 2 + 4 * part;
      const int64_t c0 = b * 32 + 4 * part;
      MESA_UNROLL
      for (int j = 0; j < 4; ++j) {
        const int q = qs[j];
        Fma<M>(MulRn(d, static_cast<float>((q & 0xF) - 8)), x, cols, c0 + j, m, acc);
        Fma<M>(MulRn(d, static_cast<float>((q >> 4) - 8)), x, cols, c0 + 16 + j, m, acc);
      }
    }
  }
};

// Q4_K / Q5_K: 16 lanes per block (2 blocks per warp step). Lane hl = 4 * chunk + t takes
// bytes 8t..8t+7 of the chunk's 32 quant bytes: elements 64 chunk + 8t + j (low nibbles,
// sub-block 2 chunk) and 64 chunk + 32 + 8t + j (high nibbles, sub-block 2 chunk + 1).
// Q5_K's fifth bits are bits 2 chunk / 2 chunk + 1 of qh[8t + j]. Blocks are multiples
// of 16 bytes and the quants sit at 16-byte offsets: 4-byte loads are aligned.
template <bool kFiveBits, int M>
MESA_DEVICE void LaneDotQ45_K(const uint8_t* row, int64_t cols, const float* x, int m, int lane,
                              float* acc) {
  const int64_t nb = cols / 256;
  const int hl = lane & 15, chunk = hl >> 2, t = hl & 3;
  const int block_bytes = kFiveBits ? kQ5_KBytes : kQ4_KBytes;
  for (int64_t b = lane >> 4; b < nb; b += 2) {
    const uint8_t* blk = row + b * block_bytes;
    const float d = LoadF16(blk), dmin = LoadF16(blk + 2);
    int sc1, m1, sc2, m2;
    ScaleMinK4(2 * chunk, blk + 4, &sc1, &m1);
    ScaleMinK4(2 * chunk + 1, blk + 4, &sc2, &m2);
    const float d1 = MulRn(d, static_cast<float>(sc1)), dm1 = MulRn(dmin, static_cast<float>(m1));
    const float d2 = MulRn(d, static_cast<float>(sc2)), dm2 = MulRn(dmin, static_cast<float>(m2));
    const uint8_t* ql = blk + (kFiveBits ? 48 : 16) + 32 * chunk + 8 * t;
    const uint32_t q[2] = {LoadU32(ql), LoadU32(ql + 4)};
    uint32_t h[2] = {0, 0};
    if (kFiveBits) {
      const uint8_t* qh = blk + 16 + 8 * t;
      h[0] = LoadU32(qh);
      h[1] = LoadU32(qh + 4);
    }
    const int64_t c0 = b * 256 + 64 * chunk + 8 * t;
    MESA_UNROLL
    for (int j = 0; j < 8; ++j) {
      const uint32_t byte = (q[j >> 2] >> (8 * (j & 3))) & 0xFF;
      int lo = static_cast<int>(byte & 0xF), hi = static_cast<int>(byte >> 4);
      if (kFiveBits) {
        const uint32_t hb = (h[j >> 2] >> (8 * (j & 3))) & 0xFF;
        lo += static_cast<int>((hb >> (2 * chunk)) & 1) << 4;
        hi += static_cast<int>((hb >> (2 * chunk + 1)) & 1) << 4;
      }
      Fma<M>(SubRn(MulRn(d1, static_cast<float>(lo)), dm1), x, cols, c0 + j, m, acc);
      Fma<M>(SubRn(MulRn(d2, static_cast<float>(hi)), dm2), x, cols, c0 + 32 + j, m, acc);
    }
  }
}

template <int M>
struct LaneDot<DType::kQ4_K, M> {
  static MESA_DEVICE void Run(const uint8_t* row, int64_t cols, const float* x, int m, int lane,
                              float* acc) {
    LaneDotQ45_K<false, M>(row, cols, x, m, lane, acc);
  }
};

template <int M>
struct LaneDot<DType::kQ5_K, M> {
  static MESA_DEVICE void Run(const uint8_t* row, int64_t cols, const float* x, int m, int lane,
                              float* acc) {
    LaneDotQ45_K<true, M>(row, cols, x, m, lane, acc);
  }
};

// Q6_K: 16 lanes per block (2 blocks per warp step). Lane hl = 8 h + t takes half h
// (128 elements) at l = 4t..4t+3: the four elements l, l+32, l+64, l+96 of that half
// (ref::DequantizeRow's q1..q4), scales sc[l/16 + 0, 2, 4, 6] (l / 16 = t / 4 for all four l).
template <int M>
struct LaneDot<DType::kQ6_K, M> {
  static MESA_DEVICE void Run(const uint8_t* row, int64_t cols, const float* x, int m, int lane,
                              float* acc) {
    const int64_t nb = cols / 256;
    const int hl = lane & 15, h = hl >> 3, t = hl & 7;
    const int is = t >> 2;
    for (int64_t b = lane >> 4; b < nb; b += 2) {
      const uint8_t* blk = row + b * kQ6_KBytes;
      const uint8_t* ql = blk + 64 * h;
      const uint8_t* qh = blk + 128 + 32 * h;
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192) + 8 * h;
      const float d = LoadF16(blk + 208);
      const float s1 = MulRn(d, static_cast<float>(sc[is]));
      const float s2 = MulRn(d, static_cast<float>(sc[is + 2]));
      const float s3 = MulRn(d, static_cast<float>(sc[is + 4]));
      const float s4 = MulRn(d, static_cast<float>(sc[is + 6]));
      const int64_t c0 = b * 256 + 128 * h + 4 * t;
      MESA_UNROLL
      for (int j = 0; j < 4; ++j) {
        const int l = 4 * t + j;
        const int a = ql[l], a32 = ql[l + 32], hb = qh[l];
        const int q1 = ((a & 0xF) | (((hb >> 0) & 3) << 4)) - 32;
        const int q2 = ((a32 & 0xF) | (((hb >> 2) & 3) << 4)) - 32;
        const int q3 = ((a >> 4) | (((hb >> 4) & 3) << 4)) - 32;
        const int q4 = ((a32 >> 4) | (((hb >> 6) & 3) << 4)) - 32;
        Fma<M>(MulRn(s1, static_cast<float>(q1)), x, cols, c0 + j, m, acc);
        Fma<M>(MulRn(s2, static_cast<float>(q2)), x, cols, c0 + 32 + j, m, acc);
        Fma<M>(MulRn(s3, static_cast<float>(q3)), x, cols, c0 + 64 + j, m, acc);
        Fma<M>(MulRn(s4, static_cast<float>(q4)), x, cols, c0 + 96 + j, m, acc);
      }
    }
  }
};

}  // namespace mesa::cuda::internal
