// Internal contract between the MatMul dispatcher (matmul_cpu.cc) and the per-ISA
// kernels (matmul_x86_*.cc, bodies in matmul_x86-inl.h): the layouts of the 8-bit
// activation buffers, the job description, and a test hook to force an ISA.
#pragma once

#include <cstdint>

#include "kernels/matmul.h"

namespace mesa::cpu::internal {

// Activations quantized for Q8_0 / Q4_0 weights ("A32"), per token, 64-byte aligned:
//   int8  qs[cols]        round(x / d) per block of 32
//   float d[cols / 32]    max|x| / 127 of the block
//   int32 sum[cols / 32]  sum of qs of the block (folds Q4_0's -8 offset into one term)
inline int64_t A32Stride(int64_t cols) { return (cols + (cols / 32) * 8 + 63) / 64 * 64; }

// Activations quantized for K-quant weights ("A256"): one block per 256 inputs, laid
// out so the quants start 64-byte aligned. bsums (sums of 16 consecutive quants) let
// the kernels apply per-sub-block mins/offsets without touching the quants again.
struct alignas(64) BlockA256 {
  int8_t qs[256];
  int16_t bsums[16];
  float d;
  int16_t bsums32[8];  // sums of 32 consecutive quants (packed Q4_K's mins)
  uint8_t pad[12];
};
static_assert(sizeof(BlockA256) == 320);
inline int64_t A256Stride(int64_t cols) { return cols / 256 * sizeof(BlockA256); }

// Q8_0 weights repacked for AVX-512 VNNI ("Q8_0x16"). Rows in groups of 16 (the last
// group padded with zero rows); each group is one contiguous run of nb = cols / 32
// blocks of 576 bytes, 64-byte aligned:
//   uint8 q[8][16][4]  step k, row i: quants 4k..4k+3 of the row's block, plus 128 (so
//                      unsigned: dpbusd takes the weights as its u8 operand and a
//                      broadcast of 4 signed activation quants as the s8 one)
//   uint16 d[16]       the rows' f16 scales
//   uint8 pad[32]      keeps every block aligned
// The +128 adds 128 * (sum of the block's activation quants), which A32 already holds.
// Scales inside each block keep one sequential stream per group: with the scales of a
// group in a run of their own, decode from DRAM measured 25-40% slower.
inline constexpr int kPackRows = 16;  // rows per group in every packed layout below
inline constexpr int kQ8PackBlockBytes = 576;
inline int64_t Q8PackGroupBytes(int64_t cols) { return cols / 32 * kQ8PackBlockBytes; }

// Q4_K weights repacked for AVX-512 VNNI ("Q4_Kx16"), rows in groups of 16 as for
// Q8_0x16; per 256-block 2368 bytes (64-byte aligned), read front to back (one
// forward stream per group, which the hardware prefetchers follow best):
//   uint8 sc[8][16]       6-bit scale of sub-block s, row i
//   uint8 mn[4][16][2]    6-bit mins of sub-blocks 2p and 2p+1, row i (word pairs for
//                         dpwssd against the activations' 32-sums)
//   uint16 d[16], dmin[16]
//   uint8 q[4][8][16][4]  pair c, step k, row i, j: byte 32c + 4k + j of the row's qs,
//                         whose low nibble is element 4k+j of sub-block 2c and high
//                         nibble that of sub-block 2c+1 (one load, two nibble masks)
inline constexpr int kQ4KPackBlockBytes = 2048 + 128 + 128 + 64;
inline int64_t Q4KPackGroupBytes(int64_t cols) { return cols / 256 * kQ4KPackBlockBytes; }
// Q5_K ("Q5_Kx16"): as Q4_Kx16, with each pair's 512 bytes of quants followed by two
// 64-byte vectors of fifth bits (steps 0-3, then 4-7): lane i, byte e, bits 2j and
// 2j+1 = the fifth bits of element e of step j in sub-blocks 2c and 2c+1.
inline constexpr int kQ5KPackBlockBytes = 320 + 4 * (512 + 128);
inline int64_t Q5KPackGroupBytes(int64_t cols) { return cols / 256 * kQ5KPackBlockBytes; }

// Q6_K weights repacked for AVX-512 VNNI ("Q6_Kx16"), rows in groups of 16; per
// 256-block 3392 bytes (64-byte aligned), read front to back:
//   int8 sc[16][16]; uint16 d[16]; 32 bytes of padding
//   then per sub-block s (16 elements = 4 steps of 4) three 64-byte vectors whose lane
//   i holds row i and whose byte e is element e of a step:
//     nib0, nib1  low nibble = low 4 bits of step 2h, high nibble = those of step 2h+1
//     qh          bits 2j..2j+1 = the top 2 bits of step j
// The quants stay offset by 32; the kernels start each sub-block's sum at
// -32 * (its activations' 16-sum), which A256 holds. Everything a block needs is in
// one forward stream: with the quants and high bits in separate runs, decode from DRAM
// was 2x slower than the unpacked kernel.
inline constexpr int kQ6KPackBlockBytes = 2048 + 1024 + 256 + 32 + 32;
inline int64_t Q6KPackGroupBytes(int64_t cols) { return cols / 256 * kQ6KPackBlockBytes; }

// AVX2 packed layouts ("x8"): 8 rows interleaved, one int32 lane of a 256-bit vector
// per row, so one maddubs of a weight vector with a broadcast of 4 activation quants
// advances 8 rows and the float epilogue serves 8 rows per instruction. Rows in groups
// of 8 (the last padded with zero rows), each group one contiguous run, 32-byte
// aligned, read front to back. Only the AVX2 kernel set reads them
// (matmul_packed_avx2-inl.h; packing in pack_avx2.cc). AVX2 has no dpbusd, and maddubs
// sums two u8 x s8 products into a saturating int16; the layouts are chosen so that
// every int16 sum the kernels form stays below 2^15 (see each).
inline constexpr int kPackRowsX8 = 8;
// Q8_0x8: per pair of 32-blocks (b, b+1), 544 bytes:
//   uint16 d[2][8]        the rows' f16 scales of both blocks
//   int8 q[2][8][8][4]    block, step k, row i: quants 4k..4k+3 (as stored, signed)
// A last unpaired block takes 32 + 256 bytes. Same bytes per row as Q8_0 (34 per 32).
// The kernel uses the sign trick (|w| times a with w's sign: <= 2 * 128 * 127 per
// int16) and widens every step with madd.
inline constexpr int kQ8X8PairBytes = 32 + 512;
inline int64_t Q8X8GroupBytes(int64_t cols) {
  const int64_t nb = cols / 32;
  return nb / 2 * kQ8X8PairBytes + (nb % 2) * (32 + 256);
}
// Q4_0x8: per pair of 32-blocks, 288 bytes:
//   uint16 d[2][8]
//   uint8 q[2][4][8][4]   block, step k, row i: bytes 4k..4k+3 of the row's qs, whose
//                         low nibbles are elements 4k.. and high nibbles 16 + 4k..
// A last unpaired block takes 32 + 128 bytes. A block's 8 maddubs of nibbles (<= 15)
// and quants (|a| <= 127) sum in int16 (<= 8 * 2 * 15 * 127 = 30480) before widening.
inline constexpr int kQ4X8PairBytes = 32 + 256;
inline int64_t Q4X8GroupBytes(int64_t cols) {
  const int64_t nb = cols / 32;
  return nb / 2 * kQ4X8PairBytes + (nb % 2) * (32 + 128);
}
// Q4_Kx8: per 256-block 1184 bytes:
//   uint8 sc[8][8]        6-bit scale of sub-block s, row i
//   uint8 mn[4][8][2]     6-bit mins of sub-blocks 2p and 2p+1, row i (word pairs
//                         after widening, for madd against the activations' 32-sums)
//   uint16 d[8], dmin[8]
//   uint8 q[4][8][8][4]   pair c, step k, row i: bytes 32c + 4k.. of the row's qs; low
//                         nibbles are sub-block 2c, high nibbles 2c+1
// A sub-block's 8 maddubs sum in int16 (<= 30480, as Q4_0x8), then one madd with the
// rows' scales widens and scales them. +2.8% bytes.
inline constexpr int kQ4KX8BlockBytes = 64 + 64 + 32 + 1024;
inline int64_t Q4KX8GroupBytes(int64_t cols) { return cols / 256 * kQ4KX8BlockBytes; }
// Q5_Kx8: per 256-block 1440 bytes: the Q4_Kx8 block (the low 4 bits as Q4_K's
// nibbles), then
//   uint8 qh[8][8][4]     step k, row i: the row's qh bytes 4k..4k+3; bit 2c of byte e
//                         is the fifth bit of element 64c + 4k + e (sub-block 2c),
//                         bit 2c + 1 that of element 64c + 32 + 4k + e (2c + 1)
// The quants reach 31: four maddubs sum in int16 (<= 4 * 2 * 31 * 127 = 31496), so a
// sub-block's 8 steps are madd-scaled as two halves. +2.3% bytes.
inline constexpr int kQ5KX8BlockBytes = kQ4KX8BlockBytes + 256;
inline int64_t Q5KX8GroupBytes(int64_t cols) { return cols / 256 * kQ5KX8BlockBytes; }
// Q6_Kx8: per 256-block 1696 bytes:
//   int8 sc[8][8][2]      scales of sub-blocks 2p and 2p+1, row i (word pairs after
//                         widening: madd against the activations' 16-sums, and
//                         duplicated per sub-block to scale its int16 sums)
//   uint16 d[8]; 16 bytes of padding
//   then per sub-block s (16 elements = 4 steps of 4) three 32-byte vectors, lane i =
//   row i, byte e = element e of a step:
//     nib0, nib1  low nibble = low 4 bits of step 2h, high nibble = those of step 2h+1
//     qh          bits 2j..2j+1 = the top 2 bits of step j
// The quants stay offset by 32 (0..63); two steps' maddubs sum in int16 (<= 2 * 2 *
// 63 * 127 = 32004) before a madd with the scales, and -32 * sum_s sc_s * bsum_s
// removes the offset. +1% bytes.
inline constexpr int kQ6KX8BlockBytes = 128 + 32 + 16 * 96;
inline int64_t Q6KX8GroupBytes(int64_t cols) { return cols / 256 * kQ6KX8BlockBytes; }
// Packs rows [8g, 8g + 8) of `w` (Q8_0, Q4_0, Q4_K, Q5_K or Q6_K) into `dst` (zero-filled,
// the group's bytes above).
void PackGroupX8(const WeightView& w, int64_t g, uint8_t* dst);

// The 256 6-bit quants (still offset by 32) of one 210-byte Q6_K block, in element order,
// as ref::DequantizeRow reads them: what both packers (Q6_Kx16, Q6_Kx8) start from.
void UnpackQ6KQuants(const uint8_t* blk, uint8_t* q);

// Which activation form a weight type is multiplied with.
enum class ActKind { kFloat, kA32, kA256 };
ActKind ActKindFor(DType type);

// One product: out[t][r] = sum_c x[t][c] * w[r][c]. `act` holds the quantized
// activations (act_stride bytes per token) for kA32 / kA256 types, else unused.
struct MatMulJob {
  WeightView w;
  int64_t row_bytes = 0;  // w.row_bytes(), computed outside the ISA-specific files
  const float* x = nullptr;
  int64_t m = 0;
  float* out = nullptr;
  const uint8_t* act = nullptr;
  int64_t act_stride = 0;
  // w.packed when the running kernel set reads that layout, else null.
  const uint8_t* packed = nullptr;
};

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
// The best ISA this machine runs.
Isa BestIsa();
bool IsaSupported(Isa isa);
// The kernel set every CPU kernel (matmul, attention) runs now: the one ForceIsa set,
// else MESA_CPU_ISA (read once), else BestIsa(). An unusable MESA_CPU_ISA aborts with
// its message here (programs call cpu::CheckIsaSetting at startup to fail cleanly).
Isa CurrentIsa();
// Makes the CPU kernels use `isa` (must be supported) until ClearForcedIsa; for tests
// and benchmarks, not thread-safe against concurrent products.
void ForceIsa(Isa isa);
void ClearForcedIsa();
const char* IsaName(Isa isa);

// Per-ISA entry points: rows [row_begin, row_end) of the job, all m tokens.
// Each output element is computed the same way whatever the range, so results do not
// depend on how rows are split across threads.
namespace avx2 {
void MatMulRows(const MatMulJob& job, int64_t row_begin, int64_t row_end);
void DequantizeRow(DType type, const void* row, float* out, int64_t n);
}  // namespace avx2
namespace avx512 {
void MatMulRows(const MatMulJob& job, int64_t row_begin, int64_t row_end);
void DequantizeRow(DType type, const void* row, float* out, int64_t n);
}  // namespace avx512

}  // namespace mesa::cpu::internal
