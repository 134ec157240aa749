// Prefill kernels for float weights (F32, F16, BF16), part of matmul_x86-inl.h: it
// includes this file inside its namespace (after LoadF32 / LoadF16x / LoadBF16 and
// TileArgs), so no #includes here; the same rules hold (intrinsics and plain C only).
//
// Tile: R weight rows x T tokens as dot products, acc[r][t] += w[r][k..k+W) *
// x[t][k..k+W) with W = 16 (AVX-512, __m512) or 8 (AVX2, __m256), the last partial step
// masked, then all accumulators reduced together (ReduceStore) rather than one
// horizontal sum each. Every output is computed by the same sequence of operations
// whatever the tile shape, tail or thread split.
//
// F16/BF16 weights (converted exactly to f32) are converted once per block of rows into
// a per-thread f32 buffer when the batch is large enough, instead of once per T tokens
// in the tile: conversion costs FMA-port slots (vcvtph2ps is 2 uops on p0/p5), and the
// f32 tile then runs at the F32 rate. The products are the same bit for bit.

#if defined(__AVX512F__)
using FVec = __m512;
constexpr int kFW = 16;  // columns per step
MESA_INLINE FVec FZero() { return _mm512_setzero_ps(); }
MESA_INLINE FVec FFma(FVec a, FVec b, FVec c) { return _mm512_fmadd_ps(a, b, c); }
MESA_INLINE __mmask16 FTailMask(int n) { return static_cast<__mmask16>((1u << n) - 1); }
MESA_INLINE FVec FLoadX(const float* p) { return _mm512_loadu_ps(p); }
MESA_INLINE FVec FLoadXTail(const float* p, int n) { return _mm512_maskz_loadu_ps(FTailMask(n), p); }
#else
using FVec = __m256;
constexpr int kFW = 8;
MESA_INLINE FVec FZero() { return _mm256_setzero_ps(); }
MESA_INLINE FVec FFma(FVec a, FVec b, FVec c) { return _mm256_fmadd_ps(a, b, c); }
MESA_INLINE __m256i FTailMask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
MESA_INLINE FVec FLoadX(const float* p) { return _mm256_loadu_ps(p); }
MESA_INLINE FVec FLoadXTail(const float* p, int n) { return _mm256_maskload_ps(p, FTailMask(n)); }
// n < 8 halves at p, zero-extended to 8 (AVX2 has no 16-bit masked load).
MESA_INLINE __m128i LoadHalvesTail(const uint8_t* p, int n) {
  uint16_t h[8] = {};
  std::memcpy(h, p, 2 * n);
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(h));
}
#endif

// W weights of a row from column k (Full), or n < W of them, zero-filled (Tail).
template <class L>
struct FLoadW;
template <>
struct FLoadW<LoadF32> {
  static constexpr bool kIsF32 = true;
#if defined(__AVX512F__)
  static MESA_INLINE FVec Full(const uint8_t* row, int64_t k) { return LoadF32::Load16(row, k); }
  static MESA_INLINE FVec Tail(const uint8_t* row, int64_t k, int n) {
    return _mm512_maskz_loadu_ps(FTailMask(n), reinterpret_cast<const float*>(row) + k);
  }
#else
  static MESA_INLINE FVec Full(const uint8_t* row, int64_t k) { return LoadF32::Load8(row, k); }
  static MESA_INLINE FVec Tail(const uint8_t* row, int64_t k, int n) {
    return _mm256_maskload_ps(reinterpret_cast<const float*>(row) + k, FTailMask(n));
  }
#endif
};
template <>
struct FLoadW<LoadF16x> {
  static constexpr bool kIsF32 = false;
#if defined(__AVX512F__)
  static MESA_INLINE FVec Full(const uint8_t* row, int64_t k) { return LoadF16x::Load16(row, k); }
  static MESA_INLINE FVec Tail(const uint8_t* row, int64_t k, int n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(FTailMask(n), row + 2 * k));
  }
#else
  static MESA_INLINE FVec Full(const uint8_t* row, int64_t k) { return LoadF16x::Load8(row, k); }
  static MESA_INLINE FVec Tail(const uint8_t* row, int64_t k, int n) {
    return _mm256_cvtph_ps(LoadHalvesTail(row + 2 * k, n));
  }
#endif
};
template <>
struct FLoadW<LoadBF16> {
  static constexpr bool kIsF32 = false;
#if defined(__AVX512F__)
  static MESA_INLINE FVec Full(const uint8_t* row, int64_t k) { return LoadBF16::Load16(row, k); }
  static MESA_INLINE FVec Tail(const uint8_t* row, int64_t k, int n) {
    const __m256i h = _mm256_maskz_loadu_epi16(FTailMask(n), row + 2 * k);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
#else
  static MESA_INLINE FVec Full(const uint8_t* row, int64_t k) { return LoadBF16::Load8(row, k); }
  static MESA_INLINE FVec Tail(const uint8_t* row, int64_t k, int n) {
    const __m128i h = LoadHalvesTail(row + 2 * k, n);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
#endif
};

// Lane sums of the accumulators of 4 rows x G tokens (G = 16 / 4 on AVX-512, 8 / 4 on
// AVX2), a[G * r + t], as one vector whose 128-bit chunk t holds rows 0..3 of token t.
// Every accumulator is summed by the same tree: lanes (i, i+W/2), then (i, i+W/4), ...
constexpr int kFGroupTokens = kFW / 4;
#if defined(__AVX512F__)
MESA_INLINE FVec ReduceGroup(const FVec (&a)[16]) {
  FVec c[8], d[4], e[2];
  // [a.lo256 | b.lo256] + [a.hi256 | b.hi256]: chunks 0-1 hold a, 2-3 hold b.
  MESA_UNROLL for (int j = 0; j < 8; ++j) c[j] = _mm512_add_ps(
      _mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], 0x44), _mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], 0xEE));
  // chunk k of d[j] = a[4j + k], 4 partial sums.
  MESA_UNROLL for (int j = 0; j < 4; ++j) d[j] = _mm512_add_ps(
      _mm512_shuffle_f32x4(c[2 * j], c[2 * j + 1], 0x88), _mm512_shuffle_f32x4(c[2 * j], c[2 * j + 1], 0xDD));
  // chunk k of e[j] = a[8j + k] (2 partials), a[8j + 4 + k] (2 partials).
  MESA_UNROLL for (int j = 0; j < 2; ++j) e[j] = _mm512_add_ps(
      _mm512_shuffle_ps(d[2 * j], d[2 * j + 1], 0x44), _mm512_shuffle_ps(d[2 * j], d[2 * j + 1], 0xEE));
  // chunk k = a[k], a[4 + k], a[8 + k], a[12 + k]: lane 4k + r = a[4r + k].
  return _mm512_add_ps(_mm512_shuffle_ps(e[0], e[1], 0x88), _mm512_shuffle_ps(e[0], e[1], 0xDD));
}
template <int NR>
MESA_INLINE void StoreRows(float* out, __m512 v, int k) {
  const __m128 s = k == 0 ? _mm512_castps512_ps128(v)
                   : k == 1 ? _mm512_extractf32x4_ps(v, 1)
                   : k == 2 ? _mm512_extractf32x4_ps(v, 2)
                            : _mm512_extractf32x4_ps(v, 3);
  if constexpr (NR == 4) {
    _mm_storeu_ps(out, s);
  } else {
    _mm_mask_storeu_ps(out, static_cast<__mmask8>((1u << NR) - 1), s);
  }
}
#else
MESA_INLINE FVec ReduceGroup(const FVec (&a)[8]) {
  FVec c[4], e[2];
  // chunk 0 of c[j] = a[2j], chunk 1 = a[2j + 1], 4 partials each.
  MESA_UNROLL for (int j = 0; j < 4; ++j) c[j] = _mm256_add_ps(
      _mm256_permute2f128_ps(a[2 * j], a[2 * j + 1], 0x20), _mm256_permute2f128_ps(a[2 * j], a[2 * j + 1], 0x31));
  // chunk k of e[j] = a[4j + k] (2 partials), a[4j + 2 + k] (2 partials).
  MESA_UNROLL for (int j = 0; j < 2; ++j) e[j] = _mm256_add_ps(
      _mm256_shuffle_ps(c[2 * j], c[2 * j + 1], 0x44), _mm256_shuffle_ps(c[2 * j], c[2 * j + 1], 0xEE));
  // chunk k = a[k], a[2 + k], a[4 + k], a[6 + k]: lane 4k + r = a[2r + k].
  return _mm256_add_ps(_mm256_shuffle_ps(e[0], e[1], 0x88), _mm256_shuffle_ps(e[0], e[1], 0xDD));
}
template <int NR>
MESA_INLINE void StoreRows(float* out, __m256 v, int k) {
  const __m128 s = k == 0 ? _mm256_castps256_ps128(v) : _mm256_extractf128_ps(v, 1);
  if constexpr (NR == 4) {
    _mm_storeu_ps(out, s);
  } else {
    _mm_maskstore_ps(out, _mm_cmpgt_epi32(_mm_set1_epi32(NR), _mm_setr_epi32(0, 1, 2, 3)), s);
  }
}
#endif

// out[t][r] = lane sum of acc[r][t], in groups of 4 rows x kFGroupTokens tokens
// (missing rows and tokens reduced as zeros and not stored).
template <int R, int T>
MESA_INLINE void ReduceStore(const FVec (&acc)[R][T], float* out, int64_t out_stride) {
  MESA_UNROLL for (int r0 = 0; r0 < R; r0 += 4) {
    MESA_UNROLL for (int t0 = 0; t0 < T; t0 += kFGroupTokens) {
      FVec g[4 * kFGroupTokens];
      MESA_UNROLL for (int r = 0; r < 4; ++r) {
        MESA_UNROLL for (int t = 0; t < kFGroupTokens; ++t) {
          g[kFGroupTokens * r + t] = r0 + r < R && t0 + t < T ? acc[r0 + r < R ? r0 + r : 0][t0 + t < T ? t0 + t : 0]
                                                              : FZero();
        }
      }
      const FVec s = ReduceGroup(g);
      MESA_UNROLL for (int t = 0; t < kFGroupTokens; ++t) {
        if (t0 + t < T) {
          float* o = out + (t0 + t) * out_stride + r0;
          if (R - r0 >= 4) {
            StoreRows<4>(o, s, t);
          } else if (R - r0 == 3) {
            StoreRows<3>(o, s, t);
          } else if (R - r0 == 2) {
            StoreRows<2>(o, s, t);
          } else {
            StoreRows<1>(o, s, t);
          }
        }
      }
    }
  }
}

// R rows x T tokens; weights of type L (or f32 when converted ahead), act_stride = floats
// between tokens of a.x.
template <class L>
struct FloatTile {
  template <int R, int T>
  struct K {
    static void Run(const TileArgs& a) {
      FVec acc[R][T];
      Fill(acc, FZero());
      const int64_t xs = a.act_stride;
      int64_t k = 0;
      for (; k + kFW <= a.cols; k += kFW) {
        FVec wv[R];
        MESA_UNROLL for (int r = 0; r < R; ++r) wv[r] = FLoadW<L>::Full(a.w + r * a.w_stride, k);
        MESA_UNROLL for (int t = 0; t < T; ++t) {
          const FVec xv = FLoadX(a.x + t * xs + k);
          MESA_UNROLL for (int r = 0; r < R; ++r) acc[r][t] = FFma(wv[r], xv, acc[r][t]);
        }
      }
      if (k < a.cols) {
        const int n = static_cast<int>(a.cols - k);
        FVec wv[R];
        MESA_UNROLL for (int r = 0; r < R; ++r) wv[r] = FLoadW<L>::Tail(a.w + r * a.w_stride, k, n);
        MESA_UNROLL for (int t = 0; t < T; ++t) {
          const FVec xv = FLoadXTail(a.x + t * xs + k, n);
          MESA_UNROLL for (int r = 0; r < R; ++r) acc[r][t] = FFma(wv[r], xv, acc[r][t]);
        }
      }
      ReduceStore(acc, a.out, a.out_stride);
    }
  };
};

// Runs K<nr', nt'> with the largest instantiated shape matching the tail (as RunTile).
template <template <int, int> class K, int R, int T>
MESA_INLINE void RunFloatTile(int nr, int nt, const TileArgs& a) {
  if constexpr (R > 1) {
    if (nr < R) return RunFloatTile<K, R - 1, T>(nr, nt, a);
  }
  if constexpr (T > 1) {
    if (nt < T) return RunFloatTile<K, R, T - 1>(nr, nt, a);
  }
  K<R, T>::Run(a);
}

// Tile shapes (accumulators + R weight vectors + 1 activation vector <= registers) and
// block size, measured with bench/matmul_bench BM_LlamaLayers (single thread, CPU-time
// minima, m = 128 / 512; bench/PERF_NOTES.md): AVX-512 4x6 ~ 4x4 ~ 6x4, 3x8 and 2x12
// 10-30% slower; AVX2 3x4 and 4x3 12% faster than 2x4, 2x6 and 1x8 slower. Blocks of
// 512 KiB beat 128 KiB by 10% (m = 128) to 30% (m = 2048): every block re-reads all
// tokens' activations, from L3 once they outgrow L2 (this machine: 2 MiB L2 per core).
#ifndef MESA_FLOAT_R512
#define MESA_FLOAT_R512 4
#define MESA_FLOAT_T512 6
#endif
#ifndef MESA_FLOAT_R256
#define MESA_FLOAT_R256 3
#define MESA_FLOAT_T256 4
#endif
constexpr int kFloatR = kRegs == 32 ? MESA_FLOAT_R512 : MESA_FLOAT_R256;
constexpr int kFloatT = kRegs == 32 ? MESA_FLOAT_T512 : MESA_FLOAT_T256;
#ifndef MESA_FLOAT_BLOCK_KIB
#define MESA_FLOAT_BLOCK_KIB 512
#endif
constexpr int64_t kFloatBlockBytes = MESA_FLOAT_BLOCK_KIB * 1024;

// Per-thread f32 copy of a block of converted weight rows.
struct FloatScratch {
  float* p = nullptr;
  int64_t cap = 0;  // floats
  ~FloatScratch() { _mm_free(p); }
  float* Get(int64_t n) {
    if (n > cap) {
      _mm_free(p);
      p = static_cast<float*>(_mm_malloc(static_cast<size_t>(n) * 4, 64));
      if (p == nullptr) std::abort();  // a block of rows (about 512 KiB): out of memory
      cap = n;
    }
    return p;
  }
};
thread_local FloatScratch t_float_scratch;

// Converts n weights of type L to f32 (exactly).
template <class L>
MESA_INLINE void ConvertRow(const uint8_t* row, int64_t n, float* out) {
  int64_t k = 0;
  for (; k + kFW <= n; k += kFW) {
#if defined(__AVX512F__)
    _mm512_storeu_ps(out + k, FLoadW<L>::Full(row, k));
#else
    _mm256_storeu_ps(out + k, FLoadW<L>::Full(row, k));
#endif
  }
  for (; k < n; ++k) out[k] = L::Load1(row, k);
}

// Rows [row_begin, row_end) x all tokens, rows inner: per block of about
// kFloatBlockBytes of (f32) weight rows, each tile of T tokens against every R-row tile
// of the block, so the T tokens' activations stay in L1 and the block in L2 (the
// activations are read once per block).
// From kPackTokens tokens on, each block of weight rows is first copied (converted to
// f32) into a per-thread buffer with 64-byte aligned rows, and so is each group of T
// tokens whose rows are not 64-byte aligned: a 512-bit load that straddles two cache
// lines costs two. The copies are exact: the results do not change.
template <class L, int R, int T>
void FloatRows(const MatMulJob& job, int64_t row_begin, int64_t row_end) {
  constexpr int64_t kPackTokens = 2 * T;
  const int64_t cols = job.w.cols;
  const bool pack = job.m >= kPackTokens;
  const int64_t stride = (cols + 15) / 16 * 16;  // floats per packed row
  const int64_t row_f32_bytes = (pack ? stride : cols) * 4;
  const int64_t block_rows =
      R * (R * row_f32_bytes < kFloatBlockBytes ? kFloatBlockBytes / (R * row_f32_bytes) : 1);
  const bool pack_x = pack && ((reinterpret_cast<uintptr_t>(job.x) & 63) != 0 || (cols & 15) != 0);
  float* wbuf = pack ? t_float_scratch.Get((block_rows + T) * stride) : nullptr;
  float* xbuf = pack ? wbuf + block_rows * stride : nullptr;
  const uint8_t* wbase = static_cast<const uint8_t*>(job.w.data);
  for (int64_t rb = row_begin; rb < row_end; rb += block_rows) {
    const int64_t rb_end = row_end - rb < block_rows ? row_end : rb + block_rows;
    TileArgs a;
    a.cols = cols;
    a.act = nullptr;
    a.out_stride = job.w.rows;
    if (pack) {
      for (int64_t r = rb; r < rb_end; ++r) ConvertRow<L>(wbase + r * job.row_bytes, cols, wbuf + (r - rb) * stride);
      a.w_stride = stride * 4;
    } else {
      a.w_stride = job.row_bytes;
    }
    for (int64_t t0 = 0; t0 < job.m; t0 += T) {
      const int nt = static_cast<int>(job.m - t0 < T ? job.m - t0 : T);
      if (pack_x) {
        for (int t = 0; t < nt; ++t) std::memcpy(xbuf + t * stride, job.x + (t0 + t) * cols, cols * 4);
        a.x = xbuf;
        a.act_stride = stride;
      } else {
        a.x = job.x + t0 * cols;
        a.act_stride = cols;
      }
      for (int64_t r0 = rb; r0 < rb_end; r0 += R) {
        const int nr = static_cast<int>(rb_end - r0 < R ? rb_end - r0 : R);
        a.out = job.out + t0 * job.w.rows + r0;
        if (pack) {
          a.w = reinterpret_cast<const uint8_t*>(wbuf + (r0 - rb) * stride);
          RunFloatTile<FloatTile<LoadF32>::K, R, T>(nr, nt, a);
        } else {
          a.w = wbase + r0 * job.row_bytes;
          RunFloatTile<FloatTile<L>::template K, R, T>(nr, nt, a);
        }
      }
    }
  }
}
