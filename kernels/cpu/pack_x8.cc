// Packing into the AVX2 "x8" layouts (8 rows interleaved per 256-bit vector; see
// matmul_cpu_internal.h). Plain C++, run once per matrix at load.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/matmul_cpu_internal.h"
#include "kernels/matmul.h"
#include "kernels/ref/quant_ref.h"

namespace mesa::cpu::internal {
namespace {

constexpr int kRows = kPackRowsX8;

// Q8_0 (elem_bytes 32: 4 bytes per step, 8 steps) and Q4_0 (16 bytes: 4 per step, 4
// steps) share the shape: per pair of blocks the scales, then each block's steps with
// the 8 rows' 4-byte pieces side by side.
void PackQ0Group(const WeightView& w, int64_t g, uint8_t* dst, int src_block, int qs_bytes) {
  const int64_t nb = w.cols / 32;
  const int64_t row_bytes = w.row_bytes();
  const auto* src = static_cast<const uint8_t*>(w.data);
  const int block_q = kRows * qs_bytes;  // packed quant bytes per block
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* pair = dst + (b / 2) * (32 + 2 * block_q);
    uint8_t* d = pair + 16 * (b % 2);
    uint8_t* q = pair + 32 + block_q * (b % 2);
    for (int i = 0; i < kRows; ++i) {
      const int64_t r = g * kRows + i;
      if (r >= w.rows) break;  // padding rows: d = 0, quants 0
      const uint8_t* blk = src + r * row_bytes + b * src_block;
      std::memcpy(d + 2 * i, blk, 2);
      for (int k = 0; k < qs_bytes / 4; ++k) std::memcpy(q + (k * kRows + i) * 4, blk + 2 + 4 * k, 4);
    }
  }
}

// Q4_K (144-byte blocks: d, dmin, scales[12], qs[128]) and Q5_K (176 bytes: d, dmin,
// scales[12], qh[32], qs[128]): the same scales, mins and nibbles; Q5_K adds its qh.
void PackQ45KGroup(const WeightView& w, int64_t g, uint8_t* dst, bool q5) {
  const int64_t nb = w.cols / 256;
  const int64_t row_bytes = w.row_bytes();
  const auto* src = static_cast<const uint8_t*>(w.data);
  const int src_block = q5 ? 176 : 144, qs_at = q5 ? 48 : 16;
  const int block_bytes = q5 ? kQ5KX8BlockBytes : kQ4KX8BlockBytes;
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* blkp = dst + b * block_bytes;
    uint8_t* sc = blkp;
    uint8_t* mn = blkp + 64;
    uint8_t* d = blkp + 128;
    uint8_t* q = blkp + 160;
    uint8_t* qh = blkp + kQ4KX8BlockBytes;
    for (int i = 0; i < kRows; ++i) {
      const int64_t r = g * kRows + i;
      if (r >= w.rows) break;  // padding rows: d = dmin = 0
      const uint8_t* blk = src + r * row_bytes + b * src_block;
      for (int s = 0; s < 8; ++s) {
        int scale, min;
        ref::ScaleMinK4(s, blk + 4, &scale, &min);
        sc[s * kRows + i] = static_cast<uint8_t>(scale);
        mn[((s / 2) * kRows + i) * 2 + (s % 2)] = static_cast<uint8_t>(min);
      }
      std::memcpy(d + 2 * i, blk, 2);              // d
      std::memcpy(d + 2 * kRows + 2 * i, blk + 2, 2);  // dmin
      for (int c = 0; c < 4; ++c) {
        for (int k = 0; k < 8; ++k) std::memcpy(q + ((c * 8 + k) * kRows + i) * 4, blk + qs_at + 32 * c + 4 * k, 4);
      }
      if (q5) {
        for (int k = 0; k < 8; ++k) std::memcpy(qh + (k * kRows + i) * 4, blk + 16 + 4 * k, 4);
      }
    }
  }
}

void PackQ6KGroup(const WeightView& w, int64_t g, uint8_t* dst) {
  const int64_t nb = w.cols / 256;
  const int64_t row_bytes = w.row_bytes();
  const auto* src = static_cast<const uint8_t*>(w.data);
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* out = dst + b * kQ6KX8BlockBytes;
    for (int i = 0; i < kRows; ++i) {
      const int64_t r = g * kRows + i;
      if (r >= w.rows) break;  // padding rows: d = 0
      const uint8_t* blk = src + r * row_bytes + b * 210;
      uint8_t q[256];
      UnpackQ6KQuants(blk, q);
      for (int sb = 0; sb < 16; ++sb) {
        for (int e = 0; e < 4; ++e) {
          auto at = [&](int step) { return q[16 * sb + 4 * step + e]; };
          uint8_t* vecs = out + 160 + 96 * sb + i * 4 + e;  // nib0, nib1, qh, 32 bytes apart
          vecs[0] = static_cast<uint8_t>((at(0) & 0xF) | ((at(1) & 0xF) << 4));
          vecs[32] = static_cast<uint8_t>((at(2) & 0xF) | ((at(3) & 0xF) << 4));
          uint8_t high = 0;
          for (int j = 0; j < 4; ++j) high |= static_cast<uint8_t>((at(j) >> 4) << (2 * j));
          vecs[64] = high;
        }
        out[((sb / 2) * kRows + i) * 2 + (sb % 2)] = blk[192 + sb];
      }
      std::memcpy(out + 128 + 2 * i, blk + 208, 2);
    }
  }
}

}  // namespace

void PackGroupX8(const WeightView& w, int64_t g, uint8_t* dst) {
  switch (w.type) {
    case DType::kQ8_0:
      return PackQ0Group(w, g, dst, 34, 32);
    case DType::kQ4_0:
      return PackQ0Group(w, g, dst, 18, 16);
    case DType::kQ4_K:
      return PackQ45KGroup(w, g, dst, false);
    case DType::kQ5_K:
      return PackQ45KGroup(w, g, dst, true);
    case DType::kQ6_K:
      return PackQ6KGroup(w, g, dst);
    default:
      std::abort();  // the dispatcher packs only these (HasPackedForm)
  }
}

}  // namespace mesa::cpu::internal
