// Bodies of the x86 MatMul kernels, compiled once per ISA: matmul_x86_avx2.cc
// (AVX2 + FMA + F16C) and matmul_x86_avx512.cc (adds AVX-512 VL/BW/VNNI, which gives
// dpbusd/dpwssd and 32 vector registers). Include only after defining MESA_ISA_NS.
//
// Every kernel is a "tile": R weight rows x T tokens, computing R*T dot products at
// once so each weight block is loaded and decoded once per tile and each activation
// block once per row group. Each (row, token) accumulator sees the same sequence of
// operations whatever R and T are, so results never depend on tiling or threads.
// Only intrinsics and plain C here, and no calls to inline functions of other headers
// (WeightView::row() and the like): these files are compiled with ISA flags, and an
// out-of-line copy of such a function emitted here could be picked by the linker for
// code that must run on any x86-64.
#ifndef MESA_ISA_NS
#error "define MESA_ISA_NS before including matmul_x86-inl.h"
#endif

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), whose self-initialized
// value -Wuninitialized reports wherever they are inlined (GCC PR 105593, fixed in
// GCC 12.3 and 13; bookworm has 12.2): silenced for the intrinsic headers' own lines only, not for this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/matmul_cpu_internal.h"
#include "kernels/ref/quant_ref.h"

namespace mesa::cpu::internal::MESA_ISA_NS {
namespace {

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
constexpr bool kVnni = true;
constexpr int kRegs = 32;
#else
constexpr bool kVnni = false;
constexpr int kRegs = 16;
#endif

#ifndef MESA_WEIGHT_BLOCK_KIB
#define MESA_WEIGHT_BLOCK_KIB 128
#endif
#ifndef MESA_ACT_BLOCK_KIB
#define MESA_ACT_BLOCK_KIB 256
#endif
#define MESA_INLINE inline __attribute__((always_inline))
// Loops over tile rows/tokens/sub-blocks must unroll fully, or the arrays of vectors
// they index go to the stack.
#define MESA_UNROLL _Pragma("GCC unroll 16")

// acc + sum of 4 adjacent u8*s8 products per int32 lane. Without VNNI the 16-bit
// intermediate saturates above 32767, so callers keep u <= 128 (|s| <= 127).
MESA_INLINE __m256i DotU8S8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  const __m256i p = _mm256_maddubs_epi16(u, s);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

// acc + sum of 2 adjacent s16*s16 products per int32 lane.
MESA_INLINE __m256i DotS16(__m256i acc, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, a, b);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

MESA_INLINE float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

MESA_INLINE float LoadF16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

MESA_INLINE __m256i Load256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

// Weight rows are streamed once in decode; the hardware prefetcher alone leaves too
// few misses in flight when each block takes many instructions, so ask for the lines
// of the block kAhead bytes further on.
constexpr int kAhead = 1024;
template <int kBytes>
MESA_INLINE void PrefetchAhead(const uint8_t* p) {
  MESA_UNROLL for (int o = 0; o < kBytes; o += 64)
      _mm_prefetch(reinterpret_cast<const char*>(p + kAhead + o), _MM_HINT_T0);
}

// Prefill blocks the weight rows (RunRows, PackedRows) into pieces of about this many
// bytes, which stay in L2 (512 KiB and up on the CPUs we target) while the tokens pass.
constexpr int64_t kWeightBlockBytes = MESA_WEIGHT_BLOCK_KIB * 1024;
// ... and the tokens into pieces of about this many bytes of quantized activations.
constexpr int64_t kActBlockBytes = MESA_ACT_BLOCK_KIB * 1024;
// Tokens per block: a multiple of the tile's T, at least T.
MESA_INLINE int64_t TokenBlock(int64_t t, int64_t act_stride) {
  return t * (t * act_stride < kActBlockBytes ? kActBlockBytes / (t * act_stride) : 1);
}

// What one tile needs; pointers are already at (row r0, token t0).
struct TileArgs {
  const uint8_t* w;  // first weight row
  int64_t w_stride;  // bytes between weight rows
  int64_t cols;
  const uint8_t* act;  // quantized activations of the first token (A32 / A256)
  int64_t act_stride;
  const float* x;  // f32 activations of the first token (float weights)
  float* out;      // out[t * out_stride + r]
  int64_t out_stride;
};

// Sets every accumulator of a tile.
template <class V, int R, int T>
MESA_INLINE void Fill(V (&v)[R][T], V x) {
  MESA_UNROLL for (int r = 0; r < R; ++r) { MESA_UNROLL for (int t = 0; t < T; ++t) v[r][t] = x; }
}

// Writes the tile's R x T dot products: out[t][r] = lane sum of acc[r][t].
template <int R, int T>
MESA_INLINE void StoreSums(__m256 (&acc)[R][T], const TileArgs& a) {
  MESA_UNROLL for (int r = 0; r < R; ++r) {
    MESA_UNROLL for (int t = 0; t < T; ++t) a.out[t * a.out_stride + r] = HSum(acc[r][t]);
  }
}

// ---------------------------------------------------------------------------------
// Float weights (F32, F16, BF16): 8 columns per step with FMA, scalar column tail.

struct LoadF32 {
  static MESA_INLINE __m256 Load8(const uint8_t* row, int64_t k) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
  }
#if defined(__AVX512F__)
  static MESA_INLINE __m512 Load16(const uint8_t* row, int64_t k) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + k);
  }
#endif
  static MESA_INLINE float Load1(const uint8_t* row, int64_t k) {
    float f;
    std::memcpy(&f, row + 4 * k, 4);
    return f;
  }
};
struct LoadF16x {
  static MESA_INLINE __m256 Load8(const uint8_t* row, int64_t k) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
  }
#if defined(__AVX512F__)
  static MESA_INLINE __m512 Load16(const uint8_t* row, int64_t k) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k)));
  }
#endif
  static MESA_INLINE float Load1(const uint8_t* row, int64_t k) { return LoadF16(row + 2 * k); }
};
struct LoadBF16 {
  static MESA_INLINE __m256 Load8(const uint8_t* row, int64_t k) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
#if defined(__AVX512F__)
  static MESA_INLINE __m512 Load16(const uint8_t* row, int64_t k) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
#endif
  static MESA_INLINE float Load1(const uint8_t* row, int64_t k) {
    uint16_t h;
    std::memcpy(&h, row + 2 * k, 2);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};

#include "kernels/cpu/matmul_float_x86-inl.h"  // FloatTile, FloatRows

// ---------------------------------------------------------------------------------
// Q8_0 x A32: sign trick (|w| as unsigned, sign of w moved onto the activation) so the
// u8*s8 products are exact with or without VNNI.

template <int R, int T>
struct TileQ8_0 {
  static void Run(const TileArgs& a) {
    const int64_t nb = a.cols / 32;
    __m256 acc[R][T];
    Fill(acc, _mm256_setzero_ps());
    const float* ad[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) ad[t] =
        reinterpret_cast<const float*>(a.act + t * a.act_stride + a.cols);
    for (int64_t b = 0; b < nb; ++b) {
      // With VNNI: (a + 128) as unsigned times w, minus 128 * (sums of 4 w), which
      // starts the accumulator: one dpbusd per (row, token), exact in int32. Without:
      // |w| times a with w's sign (maddubs would saturate on a + 128).
      __m256i wq[R], wa[R];
      __m256 wd[R];
      MESA_UNROLL for (int r = 0; r < R; ++r) {
        const uint8_t* blk = a.w + r * a.w_stride + b * 34;
        if ((b & 1) == 0) PrefetchAhead<68>(blk);
        wd[r] = _mm256_set1_ps(LoadF16(blk));
        wq[r] = Load256(blk + 2);
        if constexpr (kVnni) {
          wa[r] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                   DotU8S8(_mm256_setzero_si256(), _mm256_set1_epi8(-128), wq[r]));
        } else {
          wa[r] = _mm256_abs_epi8(wq[r]);
        }
      }
      MESA_UNROLL for (int t = 0; t < T; ++t) {
        const __m256i aq = Load256(a.act + t * a.act_stride + b * 32);
        const __m256 d = _mm256_set1_ps(ad[t][b]);
        const __m256i au = _mm256_xor_si256(aq, _mm256_set1_epi8(-128));
        MESA_UNROLL for (int r = 0; r < R; ++r) {
          __m256i p;
          if constexpr (kVnni) {
            p = DotU8S8(wa[r], au, wq[r]);
          } else {
            p = DotU8S8(_mm256_setzero_si256(), wa[r], _mm256_sign_epi8(aq, wq[r]));
          }
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(wd[r], d), acc[r][t]);
        }
      }
    }
    StoreSums(acc, a);
  }
};

// ---------------------------------------------------------------------------------
// Q4_0 x A32: unsigned nibbles times activations, the -8 offset folded in by starting
// each block's integer sum at -8 * sum(activation quants).

template <int R, int T>
struct TileQ4_0 {
  static void Run(const TileArgs& a) {
    const int64_t nb = a.cols / 32;
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256 acc[R][T];
    Fill(acc, _mm256_setzero_ps());
    const float* ad[T];
    const int32_t* as[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) {
      ad[t] = reinterpret_cast<const float*>(a.act + t * a.act_stride + a.cols);
      as[t] = reinterpret_cast<const int32_t*>(ad[t] + nb);
    }
    for (int64_t b = 0; b < nb; ++b) {
      __m256i wq[R];
      float wd[R];
      MESA_UNROLL for (int r = 0; r < R; ++r) {
        const uint8_t* blk = a.w + r * a.w_stride + b * 18;
        if ((b & 3) == 0) PrefetchAhead<72>(blk);
        wd[r] = LoadF16(blk);
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
        // Low nibbles are elements 0..15, high nibbles 16..31.
        wq[r] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low4);
      }
      MESA_UNROLL for (int t = 0; t < T; ++t) {
        const __m256i aq = Load256(a.act + t * a.act_stride + b * 32);
        const __m256i corr = _mm256_zextsi128_si256(_mm_cvtsi32_si128(-8 * as[t][b]));
        const float d = ad[t][b];
        MESA_UNROLL for (int r = 0; r < R; ++r) {
          const __m256i p = DotU8S8(corr, wq[r], aq);
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(wd[r] * d), acc[r][t]);
        }
      }
    }
    StoreSums(acc, a);
  }
};

// ---------------------------------------------------------------------------------
// K-quants x A256. Per 256-block the integer sums sum_j scale_j * dot_j accumulate in
// int32 (maddubs to s16 pairs, then dpwssd/madd with the broadcast sub-block scale),
// so there is one int->float conversion per block and (row, token).

// The 8 6-bit scales and mins of a Q4_K/Q5_K block (see ref's ScaleMinK4), as 8 bytes
// each. With the 12 bytes as words u0, u1, u2: scales 0-3 / mins 0-3 are the low 6 bits
// of u0 / u1; scales 4-7 / mins 4-7 take a nibble of u2 and the top 2 bits of u0 / u1.
MESA_INLINE void ScalesMinsK4(const uint8_t* q, uint64_t* sc, uint64_t* mn) {
  uint32_t u0, u1, u2;
  std::memcpy(&u0, q, 4);
  std::memcpy(&u1, q + 4, 4);
  std::memcpy(&u2, q + 8, 4);
  const uint32_t sc_lo = u0 & 0x3f3f3f3fu;
  const uint32_t mn_lo = u1 & 0x3f3f3f3fu;
  const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
  const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
  *sc = sc_lo | (static_cast<uint64_t>(sc_hi) << 32);
  *mn = mn_lo | (static_cast<uint64_t>(mn_hi) << 32);
}

// Byte shuffle that broadcasts 16-bit word `lo` of each 128-bit lane to the low lane
// and word `hi` to the high lane.
MESA_INLINE __m256i WordBroadcastMask(int lo, int hi) {
  const __m128i l = _mm_set1_epi16(static_cast<int16_t>((2 * lo) | ((2 * lo + 1) << 8)));
  const __m128i h = _mm_set1_epi16(static_cast<int16_t>((2 * hi) | ((2 * hi + 1) << 8)));
  return _mm256_set_m128i(h, l);
}

// Q4_K (kBits == 4, 144-byte blocks) and Q5_K (kBits == 5, 176-byte blocks).
template <int kBits>
struct TileQ45K {
  template <int R, int T>
  struct K {
    static void Run(const TileArgs& a) {
      constexpr int kBlockBytes = kBits == 5 ? 176 : 144;
      constexpr int kQsOffset = kBits == 5 ? 48 : 16;
      const int64_t nb = a.cols / 256;
      const __m256i low4 = _mm256_set1_epi8(0x0F);
      const __m256i bit0 = _mm256_set1_epi8(0x01);
      __m256 acc[R][T];
      Fill(acc, _mm256_setzero_ps());
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk[R];
        __m256i sc16[R];  // the 8 scales as s16, in both 128-bit lanes
        __m256i mins[R];  // min j in s16 lanes 2j and 2j+1, to pair with the 16-sums
        MESA_UNROLL for (int r = 0; r < R; ++r) {
          blk[r] = a.w + r * a.w_stride + b * kBlockBytes;
          PrefetchAhead<kBlockBytes>(blk[r]);
          uint64_t sc, mn;
          ScalesMinsK4(blk[r] + 4, &sc, &mn);
          sc16[r] = _mm256_broadcastsi128_si256(
              _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(sc))));
          const __m128i m8 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(mn)));
          mins[r] = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
        }
        const BlockA256* ab[T];
        MESA_UNROLL for (int t = 0; t < T; ++t) ab[t] =
            reinterpret_cast<const BlockA256*>(a.act + t * a.act_stride) + b;
        __m256i isum[R][T];
        Fill(isum, _mm256_setzero_si256());
        MESA_UNROLL for (int c = 0; c < 4; ++c) {
          const __m256i bcast_lo = WordBroadcastMask(2 * c, 2 * c);
          const __m256i bcast_hi = WordBroadcastMask(2 * c + 1, 2 * c + 1);
          __m256i lo[R], hi[R], slo[R], shi[R];
          MESA_UNROLL for (int r = 0; r < R; ++r) {
            const __m256i q = Load256(blk[r] + kQsOffset + 32 * c);
            lo[r] = _mm256_and_si256(q, low4);
            hi[r] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
            if constexpr (kBits == 5) {
              const __m256i h = _mm256_srli_epi16(Load256(blk[r] + 16), 2 * c);
              lo[r] = _mm256_or_si256(lo[r], _mm256_slli_epi16(_mm256_and_si256(h, bit0), 4));
              hi[r] = _mm256_or_si256(
                  hi[r], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 1), bit0), 4));
            }
            slo[r] = _mm256_shuffle_epi8(sc16[r], bcast_lo);
            shi[r] = _mm256_shuffle_epi8(sc16[r], bcast_hi);
          }
          MESA_UNROLL for (int t = 0; t < T; ++t) {
            const __m256i alo = Load256(ab[t]->qs + 64 * c);
            const __m256i ahi = Load256(ab[t]->qs + 64 * c + 32);
            MESA_UNROLL for (int r = 0; r < R; ++r) {
              isum[r][t] = DotS16(isum[r][t], _mm256_maddubs_epi16(lo[r], alo), slo[r]);
              isum[r][t] = DotS16(isum[r][t], _mm256_maddubs_epi16(hi[r], ahi), shi[r]);
            }
          }
        }
        // acc += da * (d * isum - dmin * sum_j min_j * bsum_j), all in vectors.
        __m256 da[T];
        MESA_UNROLL for (int t = 0; t < T; ++t) da[t] = _mm256_set1_ps(ab[t]->d);
        MESA_UNROLL for (int r = 0; r < R; ++r) {
          const __m256 d = _mm256_set1_ps(LoadF16(blk[r]));
          const __m256 dmin = _mm256_set1_ps(LoadF16(blk[r] + 2));
          MESA_UNROLL for (int t = 0; t < T; ++t) {
            const __m256 m =
                _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(mins[r], Load256(ab[t]->bsums))), dmin);
            const __m256 v = _mm256_fmsub_ps(_mm256_cvtepi32_ps(isum[r][t]), d, m);
            acc[r][t] = _mm256_fmadd_ps(v, da[t], acc[r][t]);
          }
        }
      }
      StoreSums(acc, a);
    }
  };
};

template <int R, int T>
struct TileQ6K {
  static void Run(const TileArgs& a) {
    const int64_t nb = a.cols / 256;
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i bits45 = _mm256_set1_epi8(0x30);
    __m256 acc[R][T];
    Fill(acc, _mm256_setzero_ps());
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk[R];
      MESA_UNROLL for (int r = 0; r < R; ++r) {
        blk[r] = a.w + r * a.w_stride + b * 210;
        PrefetchAhead<210>(blk[r]);
      }
      const BlockA256* ab[T];
      MESA_UNROLL for (int t = 0; t < T; ++t) ab[t] =
          reinterpret_cast<const BlockA256*>(a.act + t * a.act_stride) + b;
      __m256i isum[R][T];
      Fill(isum, _mm256_setzero_si256());
      MESA_UNROLL for (int h = 0; h < 2; ++h) {
        // The 8 scales of this half as s16, in both lanes.
        __m256i sc16[R];
        MESA_UNROLL for (int r = 0; r < R; ++r) sc16[r] =
            _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(
                _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk[r] + 192 + 8 * h))));
        MESA_UNROLL for (int k = 0; k < 4; ++k) {
          const __m256i bcast = WordBroadcastMask(2 * k, 2 * k + 1);
          __m256i q[R], s[R];
          MESA_UNROLL for (int r = 0; r < R; ++r) {
            // Vector k of half h: elements 128h + 32k .. +31. Low nibbles of ql[0..31]
            // (k=0) / ql[32..63] (k=1), high nibbles for k=2,3; 2 high bits from qh.
            const uint8_t* ql = blk[r] + 64 * h + 32 * (k & 1);
            const __m256i l = Load256(ql);
            const __m256i hb = Load256(blk[r] + 128 + 32 * h);
            const __m256i nib =
                k < 2 ? _mm256_and_si256(l, low4) : _mm256_and_si256(_mm256_srli_epi16(l, 4), low4);
            __m256i hi;
            switch (k) {
              case 0:
                hi = _mm256_slli_epi16(hb, 4);
                break;
              case 1:
                hi = _mm256_slli_epi16(hb, 2);
                break;
              case 2:
                hi = hb;
                break;
              default:
                hi = _mm256_srli_epi16(hb, 2);
                break;
            }
            q[r] = _mm256_or_si256(nib, _mm256_and_si256(hi, bits45));
            // Scales 2k (first 16 values, low lane) and 2k+1 (high lane) of the half.
            s[r] = _mm256_shuffle_epi8(sc16[r], bcast);
          }
          MESA_UNROLL for (int t = 0; t < T; ++t) {
            const __m256i av = Load256(ab[t]->qs + 128 * h + 32 * k);
            MESA_UNROLL for (int r = 0; r < R; ++r) isum[r][t] =
                DotS16(isum[r][t], _mm256_maddubs_epi16(q[r], av), s[r]);
          }
        }
      }
      MESA_UNROLL for (int r = 0; r < R; ++r) {
        const float d = LoadF16(blk[r] + 208);
        const __m256i sc16 =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[r] + 192)));
        MESA_UNROLL for (int t = 0; t < T; ++t) {
          // The quants are stored +32: subtract 32 * sum_g scale_g * bsum_g.
          const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, Load256(ab[t]->bsums)), 5);
          const __m256i tot = _mm256_sub_epi32(isum[r][t], off);
          acc[r][t] =
              _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_set1_ps(d * ab[t]->d), acc[r][t]);
        }
      }
    }
    StoreSums(acc, a);
  }
};

// ---------------------------------------------------------------------------------
// Decode (one token): weight rows one after another, so each thread reads its slab of
// rows as one sequential stream. The hardware prefetchers ramp up on long streams; the
// R interleaved rows of a tile are R short streams (768 columns of F16 are 24 lines)
// that they never catch up with, which halved the bandwidth from DRAM.

// Float weights: four accumulators so the FMA latency does not bound the rate.
template <class L>
void FloatGemvRows(const MatMulJob& job, int64_t row_begin, int64_t row_end) {
  const int64_t cols = job.w.cols;
  const float* x = job.x;
  const uint8_t* w = static_cast<const uint8_t*>(job.w.data) + row_begin * job.row_bytes;
  for (int64_t r = row_begin; r < row_end; ++r, w += job.row_bytes) {
    // The next row's lines are requested while this one is summed: the streamers alone
    // left each thread's one stream short of the DRAM bandwidth (BM_LlamaLayers f32/1,
    // 2 threads, three interleaved rounds: 15.7-19.0 GB/s without, 17.4-22.0 with; F16
    // and AVX2 the same way; _MM_HINT_NTA halved it).
    if (r + 1 < row_end) {
      const char* next = reinterpret_cast<const char*>(w + job.row_bytes);
      for (int64_t b = 0; b < job.row_bytes; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
    }
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t k = 0;
#if defined(__AVX512F__)
    // 64 columns per step in 512-bit vectors: half the instructions per byte, so more
    // weight lines are in flight (F16 from 17.5 to 19.6 GB/s on a busy machine).
    __m512 z0 = _mm512_setzero_ps(), z1 = z0, z2 = z0, z3 = z0;
    for (; k + 64 <= cols; k += 64) {
      z0 = _mm512_fmadd_ps(L::Load16(w, k), _mm512_loadu_ps(x + k), z0);
      z1 = _mm512_fmadd_ps(L::Load16(w, k + 16), _mm512_loadu_ps(x + k + 16), z1);
      z2 = _mm512_fmadd_ps(L::Load16(w, k + 32), _mm512_loadu_ps(x + k + 32), z2);
      z3 = _mm512_fmadd_ps(L::Load16(w, k + 48), _mm512_loadu_ps(x + k + 48), z3);
    }
    const __m512 z = _mm512_add_ps(_mm512_add_ps(z0, z1), _mm512_add_ps(z2, z3));
    acc0 = _mm512_castps512_ps256(z);
    acc1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1));
#endif
    for (; k + 32 <= cols; k += 32) {
      acc0 = _mm256_fmadd_ps(L::Load8(w, k), _mm256_loadu_ps(x + k), acc0);
      acc1 = _mm256_fmadd_ps(L::Load8(w, k + 8), _mm256_loadu_ps(x + k + 8), acc1);
      acc2 = _mm256_fmadd_ps(L::Load8(w, k + 16), _mm256_loadu_ps(x + k + 16), acc2);
      acc3 = _mm256_fmadd_ps(L::Load8(w, k + 24), _mm256_loadu_ps(x + k + 24), acc3);
    }
    for (; k + 8 <= cols; k += 8) acc0 = _mm256_fmadd_ps(L::Load8(w, k), _mm256_loadu_ps(x + k), acc0);
    float s = HSum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; k < cols; ++k) s += L::Load1(w, k) * x[k];
    job.out[r] = s;
  }
}

// ---------------------------------------------------------------------------------
// Q8_0 repacked as Q8_0x16 (matmul_cpu_internal.h) x A32, AVX-512 VNNI: one int32 lane
// per weight row, so a dpbusd of a 64-byte weight vector with a broadcast of 4
// activation quants advances 16 rows at once, and the block's float epilogue (convert,
// scale, accumulate) serves 16 rows with one instruction each. Per (row, token) the
// integer block sum is exact and the float steps are the same for any T: decode
// (T = 1) and prefill agree bit for bit.

// ---------------------------------------------------------------------------------
// Packed layouts (weights in groups of rows, one int32 lane per row): the driver.

// Runs K::Run<nt> (nt <= T) through the instantiated token counts.
template <class K, int T>
MESA_INLINE void RunPackedTile(int nt, const uint8_t* group, int64_t cols, const uint8_t* act,
                               int64_t act_stride, float* out, int64_t out_stride, int nr) {
  if constexpr (T > 1) {
    if (nt < T) return RunPackedTile<K, T - 1>(nt, group, cols, act, act_stride, out, out_stride, nr);
  }
  K::template Run<T>(group, cols, act, act_stride, out, out_stride, nr);
}

// Rows [row_begin, row_end) of a packed job (row_begin a multiple of K::kGroupRows: 16
// in the AVX-512 layouts, 8 in the AVX2 ones). A tile is a group's rows x K::kTokens
// tokens: weights are reused over fewer tokens than activations
// over rows, so a group's weights stay in L1 while the tokens pass, in blocks of about
// kActBlockBytes of activations that stay in L2 (all tokens at once made the rate fall
// once the batch outgrew L2).
template <class K>
void PackedRows(const MatMulJob& job, int64_t row_begin, int64_t row_end) {
  const int64_t cols = job.w.cols;
  const int64_t group_bytes = K::GroupBytes(cols);
  const int64_t block_tokens = TokenBlock(K::kTokens, job.act_stride);
  for (int64_t tb = 0; tb < job.m; tb += block_tokens) {
    const int64_t tb_end = job.m - tb < block_tokens ? job.m : tb + block_tokens;
    for (int64_t r0 = row_begin; r0 < row_end; r0 += K::kGroupRows) {
      const int nr = static_cast<int>(row_end - r0 < K::kGroupRows ? row_end - r0 : K::kGroupRows);
      const uint8_t* group = job.packed + (r0 / K::kGroupRows) * group_bytes;
      for (int64_t t0 = tb; t0 < tb_end; t0 += K::kTokens) {
        const int nt = static_cast<int>(tb_end - t0 < K::kTokens ? tb_end - t0 : K::kTokens);
        RunPackedTile<K, K::kTokens>(nt, group, cols, job.act + t0 * job.act_stride, job.act_stride,
                                     job.out + t0 * job.w.rows + r0, job.w.rows, nr);
      }
    }
  }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
template <int T>
MESA_INLINE void Q8x16Tile(const uint8_t* group, int64_t nb, const uint8_t* act, int64_t act_stride,
                           int64_t cols, float* out, int64_t out_stride, int nr) {
  __m512 acc[T];
  const int8_t* aq[T];
  const float* ad[T];
  const int32_t* as[T];
  MESA_UNROLL for (int t = 0; t < T; ++t) {
    acc[t] = _mm512_setzero_ps();
    aq[t] = reinterpret_cast<const int8_t*>(act + t * act_stride);
    ad[t] = reinterpret_cast<const float*>(act + t * act_stride + cols);
    as[t] = reinterpret_cast<const int32_t*>(ad[t] + cols / 32);
  }
  // No software prefetch: one sequential stream per thread suits the hardware
  // prefetchers (prefetching 512-2048 bytes ahead measured 10-30% slower from DRAM).
  const uint8_t* blk = group;
  for (int64_t b = 0; b < nb; ++b, blk += kQ8PackBlockBytes) {
    // Two integer chains per token (steps 0-3 and 4-7) so few tokens are not bound by
    // dpbusd latency; integer sums are exact, so the split changes no result.
    __m512i isum[T], isum2[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) {
      isum[t] = _mm512_set1_epi32(-128 * as[t][b]);
      isum2[t] = _mm512_setzero_si512();
    }
    MESA_UNROLL for (int k = 0; k < 8; ++k) {
      const __m512i w = _mm512_load_si512(blk + 64 * k);
      MESA_UNROLL for (int t = 0; t < T; ++t) {
        int32_t a4;
        std::memcpy(&a4, aq[t] + 32 * b + 4 * k, 4);
        if (k < 4) {
          isum[t] = _mm512_dpbusd_epi32(isum[t], w, _mm512_set1_epi32(a4));
        } else {
          isum2[t] = _mm512_dpbusd_epi32(isum2[t], w, _mm512_set1_epi32(a4));
        }
      }
    }
    MESA_UNROLL for (int t = 0; t < T; ++t) isum[t] = _mm512_add_epi32(isum[t], isum2[t]);
    const __m512 wd = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + 512)));
    MESA_UNROLL for (int t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(
        _mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(wd, _mm512_set1_ps(ad[t][b])), acc[t]);
  }
  const __mmask16 keep = static_cast<__mmask16>((1u << nr) - 1);
  MESA_UNROLL for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(out + t * out_stride, keep, acc[t]);
}


// Q4_K / Q5_K repacked as Q4_Kx16 / Q5_Kx16 x A256, AVX-512 VNNI: per sub-block and
// token one dpbusd chain of 4- or 5-bit quants (u8) against broadcast activation quants
// (s8) gives 16 rows' sums;
// they are scaled by the rows' sub-block scales in int32 and the mins enter through
// one dpwssd per sub-block pair against the activations' 32-sums. Integer sums are
// exact; per (row, token) the float steps are the same for any T.
template <int kBits, int T>
MESA_INLINE void Q45Kx16Tile(const uint8_t* group, int64_t nb, const uint8_t* act, int64_t act_stride,
                             float* out, int64_t out_stride, int nr) {
  constexpr int kPairBytes = kBits == 5 ? 640 : 512;
  constexpr int kBlockBytes = kBits == 5 ? kQ5KPackBlockBytes : kQ4KPackBlockBytes;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i bit4 = _mm512_set1_epi8(0x10);
  __m512 acc[T];
  MESA_UNROLL for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const uint8_t* blk = group;
  for (int64_t b = 0; b < nb; ++b, blk += kBlockBytes) {
    const BlockA256* ab[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) ab[t] = reinterpret_cast<const BlockA256*>(act + t * act_stride) + b;
    __m512i isum[T], msum[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) isum[t] = msum[t] = _mm512_setzero_si512();
    MESA_UNROLL for (int c = 0; c < 4; ++c) {
      __m512i slo[T], shi[T];
      MESA_UNROLL for (int t = 0; t < T; ++t) slo[t] = shi[t] = _mm512_setzero_si512();
      const uint8_t* pair = blk + 320 + c * kPairBytes;
      MESA_UNROLL for (int k = 0; k < 8; ++k) {
        const __m512i q = _mm512_load_si512(pair + k * 64);
        __m512i lo = _mm512_and_si512(q, low4);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), low4);
        if constexpr (kBits == 5) {
          // Fifth bits of step k: bits 2j (sub-block 2c) and 2j+1 (2c+1), j = k % 4,
          // moved to bit 4 of each byte (16-bit shifts: spills miss bit 4).
          const __m512i h = _mm512_load_si512(pair + 512 + (k / 4) * 64);
          const int j = k % 4;
          const __m512i hl = 2 * j <= 4 ? _mm512_slli_epi16(h, 4 - 2 * j) : _mm512_srli_epi16(h, 2 * j - 4);
          const __m512i hh = 2 * j + 1 <= 4 ? _mm512_slli_epi16(h, 3 - 2 * j) : _mm512_srli_epi16(h, 2 * j - 3);
          lo = _mm512_or_si512(lo, _mm512_and_si512(hl, bit4));
          hi = _mm512_or_si512(hi, _mm512_and_si512(hh, bit4));
        }
        MESA_UNROLL for (int t = 0; t < T; ++t) {
          int32_t a_lo, a_hi;
          std::memcpy(&a_lo, ab[t]->qs + 64 * c + 4 * k, 4);
          std::memcpy(&a_hi, ab[t]->qs + 64 * c + 32 + 4 * k, 4);
          slo[t] = _mm512_dpbusd_epi32(slo[t], lo, _mm512_set1_epi32(a_lo));
          shi[t] = _mm512_dpbusd_epi32(shi[t], hi, _mm512_set1_epi32(a_hi));
        }
      }
      const __m512i sc_lo = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + 32 * c)));
      const __m512i sc_hi = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + 32 * c + 16)));
      const __m512i mins = _mm512_cvtepu8_epi16(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * c)));
      MESA_UNROLL for (int t = 0; t < T; ++t) {
        isum[t] = _mm512_add_epi32(isum[t], _mm512_add_epi32(_mm512_mullo_epi32(slo[t], sc_lo),
                                                             _mm512_mullo_epi32(shi[t], sc_hi)));
        int32_t bs;
        std::memcpy(&bs, ab[t]->bsums32 + 2 * c, 4);
        msum[t] = _mm512_dpwssd_epi32(msum[t], mins, _mm512_set1_epi32(bs));
      }
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + 256)));
    const __m512 dmin = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + 288)));
    // acc += da * (d * isum - dmin * msum), as the unpacked kernel.
    MESA_UNROLL for (int t = 0; t < T; ++t) {
      const __m512 v = _mm512_fmsub_ps(_mm512_cvtepi32_ps(isum[t]), d,
                                       _mm512_mul_ps(_mm512_cvtepi32_ps(msum[t]), dmin));
      acc[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(ab[t]->d), acc[t]);
    }
  }
  const __mmask16 keep = static_cast<__mmask16>((1u << nr) - 1);
  MESA_UNROLL for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(out + t * out_stride, keep, acc[t]);
}

// Q6_K repacked as Q6_Kx16 x A256, AVX-512 VNNI: per sub-block of 16 elements, three
// vector loads give the 6-bit quants of 16 rows for its 4 steps; per token one dpbusd
// chain (started at -32 * the activations' 16-sum, which removes the +32 offset)
// times the rows' int8 scales in int32. Exact integer sums, so any T gives the same
// float steps per (row, token).
template <int T>
MESA_INLINE void Q6Kx16Tile(const uint8_t* group, int64_t nb, const uint8_t* act, int64_t act_stride,
                            float* out, int64_t out_stride, int nr) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i bits45 = _mm512_set1_epi8(0x30);
  __m512 acc[T];
  MESA_UNROLL for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  const uint8_t* blk = group;
  for (int64_t b = 0; b < nb; ++b, blk += kQ6KPackBlockBytes) {
    const BlockA256* ab[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) ab[t] = reinterpret_cast<const BlockA256*>(act + t * act_stride) + b;
    __m512i isum[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) isum[t] = _mm512_setzero_si512();
    for (int sb = 0; sb < 16; ++sb) {
      const uint8_t* v = blk + 320 + 192 * sb;
      const __m512i n0 = _mm512_load_si512(v);
      const __m512i n1 = _mm512_load_si512(v + 64);
      const __m512i qh = _mm512_load_si512(v + 128);
      __m512i q[4];
      q[0] = _mm512_or_si512(_mm512_and_si512(n0, low4), _mm512_and_si512(_mm512_slli_epi16(qh, 4), bits45));
      q[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(n0, 4), low4),
                             _mm512_and_si512(_mm512_slli_epi16(qh, 2), bits45));
      q[2] = _mm512_or_si512(_mm512_and_si512(n1, low4), _mm512_and_si512(qh, bits45));
      q[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(n1, 4), low4),
                             _mm512_and_si512(_mm512_srli_epi16(qh, 2), bits45));
      const __m512i sc = _mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + 16 * sb)));
      MESA_UNROLL for (int t = 0; t < T; ++t) {
        __m512i chain = _mm512_set1_epi32(-32 * ab[t]->bsums[sb]);
        MESA_UNROLL for (int j = 0; j < 4; ++j) {
          int32_t a4;
          std::memcpy(&a4, ab[t]->qs + 16 * sb + 4 * j, 4);
          chain = _mm512_dpbusd_epi32(chain, q[j], _mm512_set1_epi32(a4));
        }
        isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(chain, sc));
      }
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + 256)));
    MESA_UNROLL for (int t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(
        _mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, _mm512_set1_ps(ab[t]->d)), acc[t]);
  }
  const __mmask16 keep = static_cast<__mmask16>((1u << nr) - 1);
  MESA_UNROLL for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(out + t * out_stride, keep, acc[t]);
}

// The packed kernels as types, so one driver serves them all: Run<T> computes 16 rows x
// T tokens of a group.
struct Q8Packed {
  static constexpr int kTokens = 8;
  static constexpr int kGroupRows = kPackRows;
  static int64_t GroupBytes(int64_t cols) { return Q8PackGroupBytes(cols); }
  template <int T>
  static MESA_INLINE void Run(const uint8_t* group, int64_t cols, const uint8_t* act, int64_t act_stride,
                              float* out, int64_t out_stride, int nr) {
    Q8x16Tile<T>(group, cols / 32, act, act_stride, cols, out, out_stride, nr);
  }
};
template <int kBits>
struct Q45KPacked {
  static constexpr int kTokens = 4;
  static constexpr int kGroupRows = kPackRows;
  static int64_t GroupBytes(int64_t cols) { return kBits == 5 ? Q5KPackGroupBytes(cols) : Q4KPackGroupBytes(cols); }
  template <int T>
  static MESA_INLINE void Run(const uint8_t* group, int64_t cols, const uint8_t* act, int64_t act_stride,
                              float* out, int64_t out_stride, int nr) {
    Q45Kx16Tile<kBits, T>(group, cols / 256, act, act_stride, out, out_stride, nr);
  }
};
struct Q6KPacked {
  static constexpr int kTokens = 4;
  static constexpr int kGroupRows = kPackRows;
  static int64_t GroupBytes(int64_t cols) { return Q6KPackGroupBytes(cols); }
  template <int T>
  static MESA_INLINE void Run(const uint8_t* group, int64_t cols, const uint8_t* act, int64_t act_stride,
                              float* out, int64_t out_stride, int nr) {
    Q6Kx16Tile<T>(group, cols / 256, act, act_stride, out, out_stride, nr);
  }
};

#endif

// AVX2 kernels of the x8 packed layouts (PackedRowsAvx2).
#include "kernels/cpu/matmul_packed_avx2-inl.h"

// ---------------------------------------------------------------------------------
// Tiling driver.

// Runs K<nr', nt'> with the largest instantiated shape matching the tail.
template <template <int, int> class K, int R, int T>
MESA_INLINE void RunTile(int nr, int nt, const TileArgs& a) {
  if constexpr (R > 1) {
    if (nr < R) return RunTile<K, R - 1, T>(nr, nt, a);
  }
  if constexpr (T > 1) {
    if (nt < T) return RunTile<K, R, T - 1>(nr, nt, a);
  }
  K<R, T>::Run(a);
}

// Cache blocking of the tiles of rows [row_begin, row_end) x all tokens. Two orders:
//  rows inner (float weights): per block of about kWeightBlockBytes of weight rows,
//    each tile of T tokens against every R-row tile of the block. The T tokens'
//    activations stay in L1 while the block's weights come from L2, so each activation
//    is read from L3/DRAM once per block rather than once per R rows.
//  tokens inner (quantized weights, 1 byte or less per element): per block of about
//    kActBlockBytes of quantized activations, each R-row tile against every T-token
//    tile of the block: the tile's weights stay in L1, the block's activations in L2.
// Tiles of R rows against all tokens (before) read the activations from L3 once they
// outgrew L2 at a few hundred tokens, and the rate fell with the batch. Each output is
// computed the same way whatever the blocking.
template <template <int, int> class K, int R, int T>
void RunRows(const MatMulJob& job, int64_t row_begin, int64_t row_end, bool float_act) {
  const int64_t cols = job.w.cols;
  const int64_t row_bytes = job.row_bytes;
  const bool rows_inner = float_act;
  const int64_t block_rows = !rows_inner ? row_end - row_begin
                             : R * (R * row_bytes < kWeightBlockBytes ? kWeightBlockBytes / (R * row_bytes) : 1);
  const int64_t block_tokens = rows_inner ? job.m : TokenBlock(T, job.act_stride);
  auto tile = [&](int64_t r0, int nr, int64_t t0, int nt) {
    TileArgs a;
    a.w = static_cast<const uint8_t*>(job.w.data) + r0 * row_bytes;
    a.w_stride = row_bytes;
    a.cols = cols;
    if (float_act) {
      a.x = job.x + t0 * cols;
      a.act_stride = cols;
      a.act = nullptr;
    } else {
      a.act = job.act + t0 * job.act_stride;
      a.act_stride = job.act_stride;
      a.x = nullptr;
    }
    a.out = job.out + t0 * job.w.rows + r0;
    a.out_stride = job.w.rows;
    RunTile<K, R, T>(nr, nt, a);
  };
  for (int64_t tb = 0; tb < job.m; tb += block_tokens) {
    const int64_t tb_end = job.m - tb < block_tokens ? job.m : tb + block_tokens;
    for (int64_t rb = row_begin; rb < row_end; rb += block_rows) {
      const int64_t rb_end = row_end - rb < block_rows ? row_end : rb + block_rows;
      if (rows_inner) {
        for (int64_t t0 = tb; t0 < tb_end; t0 += T) {
          const int nt = static_cast<int>(tb_end - t0 < T ? tb_end - t0 : T);
          for (int64_t r0 = rb; r0 < rb_end; r0 += R) tile(r0, static_cast<int>(rb_end - r0 < R ? rb_end - r0 : R), t0, nt);
        }
      } else {
        for (int64_t r0 = rb; r0 < rb_end; r0 += R) {
          const int nr = static_cast<int>(rb_end - r0 < R ? rb_end - r0 : R);
          for (int64_t t0 = tb; t0 < tb_end; t0 += T) tile(r0, nr, t0, static_cast<int>(tb_end - t0 < T ? tb_end - t0 : T));
        }
      }
    }
  }
}

// Tile shapes: accumulators (2 per (r, t) for K-quants) plus the decoded weights must
// fit the register file: 32 vector registers with AVX-512, 16 with AVX2. K-quants on
// AVX-512 decode one row for 8 tokens: decoding nibbles and scales costs more than
// reloading activations (1x8 beat 2x4 by 20%, 2x5 and 2x6 by 6-12%); Q8_0 stays 4x4
// (2x8, 3x6, 1x12 were 3-13% slower). Measured on bench/matmul_bench BM_LlamaLayers.
constexpr int kQ8R = kRegs == 32 ? 4 : 2;
constexpr int kQ8T = kRegs == 32 ? 4 : 3;
constexpr int kKR = kRegs == 32 ? 1 : 2;
constexpr int kKT = kRegs == 32 ? 8 : 2;

template <int R, int T>
using Q4KTile = TileQ45K<4>::K<R, T>;
template <int R, int T>
using Q5KTile = TileQ45K<5>::K<R, T>;

}  // namespace

void MatMulRows(const MatMulJob& job, int64_t row_begin, int64_t row_end) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  if (job.packed != nullptr) {
    switch (job.w.type) {
      case DType::kQ8_0:
        return PackedRows<Q8Packed>(job, row_begin, row_end);
      case DType::kQ4_K:
        return PackedRows<Q45KPacked<4>>(job, row_begin, row_end);
      case DType::kQ5_K:
        return PackedRows<Q45KPacked<5>>(job, row_begin, row_end);
      case DType::kQ6_K:
        return PackedRows<Q6KPacked>(job, row_begin, row_end);
      default:
        std::abort();  // a packed form of a type without one: the dispatcher's bug
    }
  }
#else
  if (job.packed != nullptr) return PackedRowsAvx2(job, row_begin, row_end);
#endif
  if (job.m == 1) {
    // Quantized tiles of one row and one token: the same operations per output as the
    // larger tiles, so decode and prefill agree bit for bit on those types.
    switch (job.w.type) {
      case DType::kF32:
        return FloatGemvRows<LoadF32>(job, row_begin, row_end);
      case DType::kF16:
        return FloatGemvRows<LoadF16x>(job, row_begin, row_end);
      case DType::kBF16:
        return FloatGemvRows<LoadBF16>(job, row_begin, row_end);
      case DType::kQ8_0:
        return RunRows<TileQ8_0, 1, 1>(job, row_begin, row_end, false);
      case DType::kQ4_0:
        return RunRows<TileQ4_0, 1, 1>(job, row_begin, row_end, false);
      case DType::kQ4_K:
        return RunRows<Q4KTile, 1, 1>(job, row_begin, row_end, false);
      case DType::kQ5_K:
        return RunRows<Q5KTile, 1, 1>(job, row_begin, row_end, false);
      case DType::kQ6_K:
        return RunRows<TileQ6K, 1, 1>(job, row_begin, row_end, false);
      default:
        return;
    }
  }
  switch (job.w.type) {
    case DType::kF32:
      return FloatRows<LoadF32, kFloatR, kFloatT>(job, row_begin, row_end);
    case DType::kF16:
      return FloatRows<LoadF16x, kFloatR, kFloatT>(job, row_begin, row_end);
    case DType::kBF16:
      return FloatRows<LoadBF16, kFloatR, kFloatT>(job, row_begin, row_end);
    case DType::kQ8_0:
      return RunRows<TileQ8_0, kQ8R, kQ8T>(job, row_begin, row_end, false);
    case DType::kQ4_0:
      return RunRows<TileQ4_0, kQ8R, kQ8T>(job, row_begin, row_end, false);
    case DType::kQ4_K:
      return RunRows<Q4KTile, kKR, kKT>(job, row_begin, row_end, false);
    case DType::kQ5_K:
      return RunRows<Q5KTile, kKR, kKT>(job, row_begin, row_end, false);
    case DType::kQ6_K:
      return RunRows<TileQ6K, kKR, kKT>(job, row_begin, row_end, false);
    default:
      return;  // the dispatcher only sends supported types
  }
}

void DequantizeRow(DType type, const void* row, float* out, int64_t n) {
  const auto* p = static_cast<const uint8_t*>(row);
  switch (type) {
    case DType::kF16:
    case DType::kBF16: {
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(out + i,
                         type == DType::kF16 ? LoadF16x::Load8(p, i) : LoadBF16::Load8(p, i));
      }
      for (; i < n; ++i)
        out[i] = type == DType::kF16 ? LoadF16x::Load1(p, i) : LoadBF16::Load1(p, i);
      return;
    }
    case DType::kQ8_0:
      for (int64_t b = 0; b < n / 32; ++b, p += 34, out += 32) {
        const __m256 d = _mm256_set1_ps(LoadF16(p));
        for (int j = 0; j < 32; j += 8) {
          const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 2 + j));
          _mm256_storeu_ps(out + j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
        }
      }
      return;
    case DType::kQ4_0:
      for (int64_t b = 0; b < n / 32; ++b, p += 18, out += 32) {
        const __m256 d = _mm256_set1_ps(LoadF16(p));
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
        const __m128i m4 = _mm_set1_epi8(0x0F);
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), _mm_set1_epi8(8));
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_set1_epi8(8));
        const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int j = 0; j < 4; ++j)
          _mm256_storeu_ps(out + 8 * j,
                           _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[j]))));
      }
      return;
    default:
      // K-quants are decoded in bulk only for debugging and embedding lookups; the
      // reference decoder is exact and fast enough there.
      return ref::DequantizeRow(type, row, out, n);
  }
}

}  // namespace mesa::cpu::internal::MESA_ISA_NS
