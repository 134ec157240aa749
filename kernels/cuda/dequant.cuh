// Device decoders of the weight formats (kernels/ref/quant_ref.cc is the specification):
// element c of a row, decoded to exactly the f32 value ref::DequantizeRow gives. The
// products are written with MulRn / SubRn (__fmul_rn / __fsub_rn), so nvcc cannot
// contract them into an FMA (which would round differently from the reference). For the
// Embed and GEMM-tile kernels; the matrix-vector kernels (matvec_lanes.cuh) decode whole
// blocks per lane with the same formulas. Host-compilable under MESA_CUDA_HOST_SIM.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_compat.cuh"
#include "kernels/dtype.h"

namespace mesa::cuda::internal {

// Block sizes in bytes (ggml's, QK_K = 256).
constexpr int kQ8_0Bytes = 34;   // f16 d; int8 qs[32]
constexpr int kQ4_0Bytes = 18;   // f16 d; uint8 qs[16]
constexpr int kQ4_KBytes = 144;  // f16 d, dmin; uint8 scales[12]; uint8 qs[128]
constexpr int kQ5_KBytes = 176;  // f16 d, dmin; uint8 scales[12]; uint8 qh[32]; qs[128]
constexpr int kQ6_KBytes = 210;  // uint8 ql[128]; uint8 qh[64]; int8 scales[16]; f16 d

// The alignment (bytes) the kernels need of a weight matrix's or table's first byte: the
// f16 scales are read as 2-byte words, f32 as 4-byte words, and the Q4_K / Q5_K
// matrix-vector kernels read their quants as 4-byte words (their blocks are multiples of
// 16 bytes). cudaMalloc (256) and GGUF tensor data (32) satisfy all of them. (Host code.)
inline int RequiredAlignment(DType type) {
  switch (type) {
    case DType::kF32:
    case DType::kQ4_K:
    case DType::kQ5_K:
      return 4;
    default:
      return 2;
  }
}

inline bool IsAligned(const void* p, DType type) {
  return reinterpret_cast<uintptr_t>(p) % RequiredAlignment(type) == 0;
}

// An f16 at a 2-byte aligned address.
MESA_DEVICE float LoadF16(const uint8_t* p) { return F16BitsToF32(LoadU16(p)); }

MESA_DEVICE float LoadBF16(const uint8_t* p) {
  return F32FromBits(static_cast<uint32_t>(LoadU16(p)) << 16);
}

// ref::ScaleMinK4: the 6-bit scale and min of sub-block j (of 8) of a Q4_K / Q5_K block.
MESA_DEVICE void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Element c of a row of type T (row = the row's first byte).
template <DType T>
MESA_DEVICE float DecodeAt(const uint8_t* row, int64_t c);

template <>
MESA_DEVICE float DecodeAt<DType::kF32>(const uint8_t* row, int64_t c) {
  return LoadF32(row + 4 * c);
}

template <>
MESA_DEVICE float DecodeAt<DType::kF16>(const uint8_t* row, int64_t c) {
  return LoadF16(row + 2 * c);
}

template <>
MESA_DEVICE float DecodeAt<DType::kBF16>(const uint8_t* row, int64_t c) {
  return LoadBF16(row + 2 * c);
}

template <>
MESA_DEVICE float DecodeAt<DType::kQ8_0>(const uint8_t* row, int64_t c) {
  const uint8_t* b = row + (c / 32) * kQ8_0Bytes;
  const int j = static_cast<int>(c % 32);
  return MulRn(LoadF16(b), static_cast<float>(static_cast<int8_t>(b[2 + j])));
}

template <>
MESA_DEVICE float DecodeAt<DType::kQ4_0>(const uint8_t* row, int64_t c) {
  const uint8_t* b = row + (c / 32) * kQ4_0Bytes;
  const int j = static_cast<int>(c % 32);
  const int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
  return MulRn(LoadF16(b), static_cast<float>(q - 8));
}

// Q4_K and Q5_K: element e of the block is in chunk e / 64 (32 bytes of qs), at l = e % 32,
// low nibble for e % 64 < 32 (sub-block 2 * chunk), high nibble otherwise (2 * chunk + 1).
template <bool kFiveBits>
MESA_DEVICE float DecodeQ45_K(const uint8_t* row, int64_t c) {
  const uint8_t* b = row + (c / 256) * (kFiveBits ? kQ5_KBytes : kQ4_KBytes);
  const int e = static_cast<int>(c % 256);
  const int chunk = e / 64, hi = (e % 64) / 32, l = e % 32;
  const int j = 2 * chunk + hi;
  int sc, m;
  ScaleMinK4(j, b + 4, &sc, &m);
  const uint8_t* ql = b + (kFiveBits ? 48 : 16) + 32 * chunk;
  int q = hi ? (ql[l] >> 4) : (ql[l] & 0xF);
  if (kFiveBits) q += ((b[16 + l] >> j) & 1) << 4;
  const float d1 = MulRn(LoadF16(b), static_cast<float>(sc));
  const float dm1 = MulRn(LoadF16(b + 2), static_cast<float>(m));
  return SubRn(MulRn(d1, static_cast<float>(q)), dm1);
}

template <>
MESA_DEVICE float DecodeAt<DType::kQ4_K>(const uint8_t* row, int64_t c) {
  return DecodeQ45_K<false>(row, c);
}

template <>
MESA_DEVICE float DecodeAt<DType::kQ5_K>(const uint8_t* row, int64_t c) {
  return DecodeQ45_K<true>(row, c);
}

// Q6_K: element e of the block is in half h = e / 128; within it quarter qq = (e % 128) / 32
// at l = e % 32: ql byte l (qq 0, 2) or l + 32 (qq 1, 3), low nibble for qq < 2; the two
// high bits are bits 2 qq of qh[l]; the scale is sc[l / 16 + 2 qq].
template <>
MESA_DEVICE float DecodeAt<DType::kQ6_K>(const uint8_t* row, int64_t c) {
  const uint8_t* b = row + (c / 256) * kQ6_KBytes;
  const int e = static_cast<int>(c % 256);
  const int h = e / 128, qq = (e % 128) / 32, l = e % 32;
  const uint8_t* ql = b + 64 * h;
  const uint8_t* qh = b + 128 + 32 * h;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * h;
  const int byte = ql[l + 32 * (qq & 1)];
  const int nib = qq >= 2 ? (byte >> 4) : (byte & 0xF);
  const int q = (nib | (((qh[l] >> (2 * qq)) & 3) << 4)) - 32;
  const float d = LoadF16(b + 208);
  return MulRn(MulRn(d, static_cast<float>(sc[l / 16 + 2 * qq])), static_cast<float>(q));
}

}  // namespace mesa::cuda::internal
