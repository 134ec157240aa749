// Scalar references for the weight formats: exact decoders of ggml's block layouts,
// round-to-nearest quantizers, and a matrix product with double accumulation. These
// are the specification the fast kernels in kernels/cpu/ are tested against.
#include "kernels/ref/quant_ref.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/matmul.h"

namespace mesa::ref {
namespace {

// Block sizes in bytes, as in ggml (QK_K = 256).
constexpr int kQ8_0Bytes = 34;   // f16 d; int8 qs[32]
constexpr int kQ4_0Bytes = 18;   // f16 d; uint8 qs[16]
constexpr int kQ4_KBytes = 144;  // f16 d, dmin; uint8 scales[12]; uint8 qs[128]
constexpr int kQ5_KBytes = 176;  // f16 d, dmin; uint8 scales[12]; uint8 qh[32]; qs[128]
constexpr int kQ6_KBytes = 210;  // uint8 ql[128]; uint8 qh[64]; int8 scales[16]; f16 d

// Calling with an unsupported type or a ragged row is a programmer error.
void Require(bool ok, const char* what, DType type) {
  if (ok) return;
  std::fprintf(stderr, "mesa::ref: %s (type %s)\n", what, std::string(DTypeName(type)).c_str());
  std::abort();
}

float LoadF16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

void StoreF16(uint8_t* p, float f) {
  uint16_t h = F32ToF16(f);
  std::memcpy(p, &h, 2);
}

void DequantQ8_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += kQ8_0Bytes, y += 32) {
    const float d = LoadF16(b);
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) y[j] = d * qs[j];
  }
}

void DequantQ4_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += kQ4_0Bytes, y += 32) {
    const float d = LoadF16(b);
    const uint8_t* qs = b + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * ((qs[j] & 0xF) - 8);
      y[j + 16] = d * ((qs[j] >> 4) - 8);
    }
  }
}

// Q4_K and Q5_K share the layout except for the fifth bit planes in qh.
void DequantQ45_K(const uint8_t* b, float* y, int64_t nb, bool five_bits) {
  const int block_bytes = five_bits ? kQ5_KBytes : kQ4_KBytes;
  for (int64_t i = 0; i < nb; ++i, b += block_bytes) {
    const float d = LoadF16(b);
    const float dmin = LoadF16(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* ql = five_bits ? b + 48 : b + 16;
    for (int c = 0; c < 4; ++c, ql += 32) {  // 4 chunks of 64: low nibbles, then high
      int sc1, m1, sc2, m2;
      ScaleMinK4(2 * c, scales, &sc1, &m1);
      ScaleMinK4(2 * c + 1, scales, &sc2, &m2);
      const float d1 = d * sc1, dm1 = dmin * m1, d2 = d * sc2, dm2 = dmin * m2;
      for (int l = 0; l < 32; ++l) {
        int lo = ql[l] & 0xF, hi = ql[l] >> 4;
        if (five_bits) {
          lo += ((qh[l] >> (2 * c)) & 1) << 4;
          hi += ((qh[l] >> (2 * c + 1)) & 1) << 4;
        }
        y[l] = d1 * lo - dm1;
        y[l + 32] = d2 * hi - dm2;
      }
      y += 64;
    }
  }
}

void DequantQ6_K(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += kQ6_KBytes) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    const float d = LoadF16(b + 208);
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[is] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
    }
  }
}

}  // namespace

// The 6-bit scale and min of sub-block j (of 8) packed in the 12 bytes of a Q4_K or
// Q5_K block: j < 4 sit in the low 6 bits of bytes j / j+4, the others are split
// between a nibble of bytes j+4 and the top 2 bits of bytes j-4 / j.
void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}


void DequantizeRow(DType type, const void* row, float* out, int64_t n) {
  const DTypeInfo& info = GetDTypeInfo(type);
  Require(info.supported, "unsupported type", type);
  Require(n % info.block_elems == 0, "row length not a multiple of the block", type);
  const auto* b = static_cast<const uint8_t*>(row);
  const int64_t nb = n / info.block_elems;
  switch (type) {
    case DType::kF32:
      std::memcpy(out, row, n * sizeof(float));
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) out[i] = LoadF16(b + 2 * i);
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, b + 2 * i, 2);
        out[i] = BF16ToF32(h);
      }
      return;
    case DType::kQ8_0:
      return DequantQ8_0(b, out, nb);
    case DType::kQ4_0:
      return DequantQ4_0(b, out, nb);
    case DType::kQ4_K:
      return DequantQ45_K(b, out, nb, /*five_bits=*/false);
    case DType::kQ5_K:
      return DequantQ45_K(b, out, nb, /*five_bits=*/true);
    case DType::kQ6_K:
      return DequantQ6_K(b, out, nb);
    default:
      Require(false, "no decoder", type);
  }
}

void MatMul(const WeightView& w, const float* x, int64_t m, float* out) {
  std::vector<float> row(w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    DequantizeRow(w.type, w.row(r), row.data(), w.cols);
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * w.cols;
      double sum = 0;
      for (int64_t c = 0; c < w.cols; ++c) sum += static_cast<double>(row[c]) * xi[c];
      out[i * w.rows + r] = static_cast<float>(sum);
    }
  }
}

void QuantizeRowQ8_0(const float* x, void* out, int64_t n) {
  Require(n % 32 == 0, "row length not a multiple of 32", DType::kQ8_0);
  auto* b = static_cast<uint8_t*>(out);
  for (int64_t i = 0; i < n / 32; ++i, x += 32, b += kQ8_0Bytes) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    StoreF16(b, d);
    for (int j = 0; j < 32; ++j)
      b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
  }
}

void QuantizeRowQ4_0(const float* x, void* out, int64_t n) {
  Require(n % 32 == 0, "row length not a multiple of 32", DType::kQ4_0);
  auto* b = static_cast<uint8_t*>(out);
  for (int64_t i = 0; i < n / 32; ++i, x += 32, b += kQ4_0Bytes) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    StoreF16(b, d);
    for (int j = 0; j < 16; ++j) {
      // The int8 truncation of (v + 8.5) is ggml's rounding; keep it bit-compatible.
      const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
      const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 8.5f)));
      b[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

namespace {
// f16 of a positive f at least f (round up by one f16 ulp when rounding went down),
// so a scale derived from it never makes a 6-bit level exceed 63.
float F16AtLeast(float f, uint16_t* h) {
  *h = F32ToF16(f);
  if (F16ToF32(*h) < f) ++*h;  // positive finite f16: the next bit pattern is the next value
  return F16ToF32(*h);
}
}  // namespace

void QuantizeRowQ4_K(const float* x, void* out, int64_t n) {
  Require(n % 256 == 0, "row length not a multiple of 256", DType::kQ4_K);
  auto* b = static_cast<uint8_t*>(out);
  for (int64_t i = 0; i < n / 256; ++i, x += 256, b += kQ4_KBytes) {
    // Per sub-block: m = -min(0, min x) >= 0, so x + m >= 0.
    double mins[8], maxs[8];
    double max_m = 0;
    for (int j = 0; j < 8; ++j) {
      double lo = 0, hi = -INFINITY;
      for (int l = 0; l < 32; ++l) {
        lo = std::min(lo, static_cast<double>(x[32 * j + l]));
        hi = std::max(hi, static_cast<double>(x[32 * j + l]));
      }
      mins[j] = -lo;
      maxs[j] = hi;
      max_m = std::max(max_m, mins[j]);
    }
    uint16_t dmin_h = 0, d_h = 0;
    const float dmin = max_m > 0 ? F16AtLeast(static_cast<float>(max_m / 63), &dmin_h) : 0.0f;
    int lm[8], ls[8];
    double m1[8], step[8], max_step = 0;
    for (int j = 0; j < 8; ++j) {
      lm[j] = dmin > 0 ? std::min(63, static_cast<int>(std::ceil(mins[j] / dmin))) : 0;
      m1[j] = static_cast<double>(dmin) * lm[j];
      step[j] = std::max(0.0, (maxs[j] + m1[j]) / 15);  // the step that reaches max from -m1
      max_step = std::max(max_step, step[j]);
    }
    const float d = max_step > 0 ? F16AtLeast(static_cast<float>(max_step / 63), &d_h) : 0.0f;
    for (int j = 0; j < 8; ++j) ls[j] = d > 0 ? std::min(63, static_cast<int>(std::ceil(step[j] / d))) : 0;
    std::memcpy(b, &d_h, 2);
    std::memcpy(b + 2, &dmin_h, 2);
    uint8_t* scales = b + 4;
    std::memset(scales, 0, 12);
    for (int j = 0; j < 8; ++j) {  // the packing ScaleMinK4 reads
      if (j < 4) {
        scales[j] = static_cast<uint8_t>(ls[j]);
        scales[j + 4] = static_cast<uint8_t>(lm[j]);
      } else {
        scales[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
        scales[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
        scales[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
      }
    }
    // The decoder computes d * sc * q - dmin * m in f32: quantize against those values.
    uint8_t q[256];
    for (int j = 0; j < 8; ++j) {
      const float d1 = d * static_cast<float>(ls[j]);
      const float dm1 = dmin * static_cast<float>(lm[j]);
      for (int l = 0; l < 32; ++l) {
        const float v = d1 > 0 ? std::nearbyint((x[32 * j + l] + dm1) / d1) : 0.0f;
        q[32 * j + l] = static_cast<uint8_t>(std::clamp(v, 0.0f, 15.0f));
      }
    }
    uint8_t* qs = b + 16;
    for (int c = 0; c < 4; ++c) {  // chunk c of 64: sub-block 2c in the low nibbles, 2c+1 high
      for (int l = 0; l < 32; ++l) {
        qs[32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
      }
    }
  }
}

}  // namespace mesa::ref
