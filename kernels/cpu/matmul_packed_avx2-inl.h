// AVX2 kernels for the "x8" packed layouts (matmul_cpu_internal.h): Q8_0x8, Q4_0x8,
// Q4_Kx8, Q5_Kx8 and Q6_Kx8 against the A32 / A256 activations. Included by matmul_x86-inl.h
// inside its anonymous namespace, in the AVX2 kernel set only (the AVX-512 one reads
// the x16 layouts).
//
// One int32 lane per weight row: a maddubs of a 32-byte weight vector (4 quants of 8
// rows) with a broadcast of 4 activation quants gives 8 rows' pair sums, so no
// horizontal sums and the block's float epilogue (convert, scale, FMA) serves 8 rows
// per instruction; the unpacked tiles pay it per (row, token). Integer sums are exact
// and each (row, token) sees the same float steps for any token count T, so decode
// (T = 1) and prefill agree bit for bit.

#if !defined(__AVX512F__)

// The 4 bytes at p in every int32 lane (a vpbroadcastd from memory: a load, no ALU).
MESA_INLINE __m256i Bcast4(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Decode (T = 1) asks for the weight lines kAhead bytes ahead of the block it reads:
// with only the hardware prefetchers one thread streamed Q8_0x8 7% slower than the
// unpacked 1x1 tile (which prefetches). Single-thread BM_LlamaLayers m = 1 under load
// (ms, min of 3, 3 rounds), none / 2048 / 4096 bytes ahead: Q8_0x8 8.4-10.4 / 4.9-7.7 /
// 6.1-8.3; Q4_0x8 5.5-7.7 / 2.4-4.7 / 2.1-3.5; Q4_Kx8 3.2-4.8 / 2.0-2.9 / 2.1-2.3.
// Prefill reuses each group's weights over many token tiles, so it does not prefetch.
template <int T, int kAhead, int kBytes>
MESA_INLINE void PrefetchDecode(const uint8_t* p) {
  if constexpr (T == 1) {
    MESA_UNROLL for (int o = 0; o < kBytes; o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(p + kAhead + o), _MM_HINT_T0);
  }
}

// Keeps an accumulator in a register as a chain of adds: without it GCC reassociates
// the integer sums into trees whose partial products spill to the stack (measured:
// ~30 spills per sub-block in the Q4_K tile).
MESA_INLINE void Chain(__m256i& v) { asm("" : "+x"(v)); }

// Writes lanes [0, nr) of v to out.
MESA_INLINE void StoreRows(float* out, __m256 v, int nr) {
  if (nr == kPackRowsX8) {
    _mm256_storeu_ps(out, v);
  } else {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_maskstore_ps(out, _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane), v);
  }
}

// Q8_0x8 x A32: sign trick (|w| as unsigned times a with w's sign; maddubs would
// saturate on a + 128), each step widened by madd (two steps' pair sums can reach
// 2 * 32512 and would overflow int16).
template <int T>
MESA_INLINE void Q8x8Tile(const uint8_t* group, int64_t nb, const uint8_t* act, int64_t act_stride,
                          int64_t cols, float* out, int64_t out_stride, int nr) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[T];
  const int8_t* aq[T];
  const float* ad[T];
  MESA_UNROLL for (int t = 0; t < T; ++t) {
    acc[t] = _mm256_setzero_ps();
    aq[t] = reinterpret_cast<const int8_t*>(act + t * act_stride);
    ad[t] = reinterpret_cast<const float*>(act + t * act_stride + cols);
  }
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* pair = group + (b >> 1) * kQ8X8PairBytes;
    const uint8_t* q = pair + 32 + 256 * (b & 1);
    PrefetchDecode<T, 2048, 256>(q);
    __m256i isum[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
    MESA_UNROLL for (int k = 0; k < 8; ++k) {
      const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 32 * k));
      const __m256i aw = _mm256_abs_epi8(w);
      MESA_UNROLL for (int t = 0; t < T; ++t) {
        const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(Bcast4(aq[t] + 32 * b + 4 * k), w));
        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, ones));
        Chain(isum[t]);
      }
    }
    const __m256 wd = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(pair + 16 * (b & 1))));
    MESA_UNROLL for (int t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(
        _mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(wd, _mm256_set1_ps(ad[t][b])), acc[t]);
  }
  MESA_UNROLL for (int t = 0; t < T; ++t) StoreRows(out + t * out_stride, acc[t], nr);
}

// Q4_0x8 x A32: a block's 8 maddubs of nibbles and quants sum in int16 (<= 30480),
// one madd widens them, and the -8 offset enters as -8 * (the block's quant sum).
template <int T>
MESA_INLINE void Q4x8Tile(const uint8_t* group, int64_t nb, const uint8_t* act, int64_t act_stride,
                          int64_t cols, float* out, int64_t out_stride, int nr) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc[T];
  const int8_t* aq[T];
  const float* ad[T];
  const int32_t* as[T];
  MESA_UNROLL for (int t = 0; t < T; ++t) {
    acc[t] = _mm256_setzero_ps();
    aq[t] = reinterpret_cast<const int8_t*>(act + t * act_stride);
    ad[t] = reinterpret_cast<const float*>(act + t * act_stride + cols);
    as[t] = reinterpret_cast<const int32_t*>(ad[t] + cols / 32);
  }
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* pair = group + (b >> 1) * kQ4X8PairBytes;
    const uint8_t* q = pair + 32 + 128 * (b & 1);
    PrefetchDecode<T, 4096, 128>(q);
    __m256i s16[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) s16[t] = _mm256_setzero_si256();
    MESA_UNROLL for (int k = 0; k < 4; ++k) {
      const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 32 * k));
      const __m256i lo = _mm256_and_si256(w, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
      MESA_UNROLL for (int t = 0; t < T; ++t) {
        s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(lo, Bcast4(aq[t] + 32 * b + 4 * k)));
        s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(hi, Bcast4(aq[t] + 32 * b + 16 + 4 * k)));
        Chain(s16[t]);
      }
    }
    const __m256 wd = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(pair + 16 * (b & 1))));
    MESA_UNROLL for (int t = 0; t < T; ++t) {
      const __m256i isum = _mm256_add_epi32(_mm256_madd_epi16(s16[t], ones), _mm256_set1_epi32(-8 * as[t][b]));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(wd, _mm256_set1_ps(ad[t][b])), acc[t]);
    }
  }
  MESA_UNROLL for (int t = 0; t < T; ++t) StoreRows(out + t * out_stride, acc[t], nr);
}

// Q4_Kx8 (kBits 4) and Q5_Kx8 (kBits 5) x A256: per sub-block and token, 8 maddubs of
// nibbles and quants sum in int16 (Q4_K: <= 30480; Q5_K's 5-bit quants in two halves
// of 4, <= 31496 each); one madd with the rows' 6-bit scales (as word pairs) widens
// and scales them. The mins enter through one madd per sub-block pair against the
// activations' 32-sums; acc += da * (d * isum - dmin * msum) as the unpacked kernel.
// Q5_K's fifth bit: bit 2c + h of the step's qh byte, moved to bit 4 by a compare
// against that bit (0xFF where set) masked with 0x10.
template <int kBits, int T>
MESA_INLINE void QKx8Tile(const uint8_t* group, int64_t nb, const uint8_t* act, int64_t act_stride,
                          float* out, int64_t out_stride, int nr) {
  static_assert(kBits == 4 || kBits == 5);
  constexpr int kBlockBytes = kBits == 5 ? kQ5KX8BlockBytes : kQ4KX8BlockBytes;
  constexpr int kHalf = kBits == 5 ? 4 : 8;  // steps summed in int16 before the scale
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i bit4 = _mm256_set1_epi8(0x10);
  __m256 acc[T];
  MESA_UNROLL for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  const uint8_t* blk = group;
  for (int64_t b = 0; b < nb; ++b, blk += kBlockBytes) {
    PrefetchDecode<T, 4096, kBlockBytes>(blk);
    const BlockA256* ab[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) ab[t] = reinterpret_cast<const BlockA256*>(act + t * act_stride) + b;
    __m256i isum[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const uint8_t* q = blk + 160 + 256 * c;
      MESA_UNROLL for (int h = 0; h < 2; ++h) {  // low nibbles: sub-block 2c; high: 2c + 1
        const int s = 2 * c + h;
        const __m256i hbit = _mm256_set1_epi8(static_cast<char>(1 << s));
        __m256i sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 8 * s)));
        sc = _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16));
        MESA_UNROLL for (int k0 = 0; k0 < 8; k0 += kHalf) {
          __m256i s16[T];
          MESA_UNROLL for (int t = 0; t < T; ++t) s16[t] = _mm256_setzero_si256();
          MESA_UNROLL for (int k = k0; k < k0 + kHalf; ++k) {
            const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 32 * k));
            __m256i n = _mm256_and_si256(h == 0 ? w : _mm256_srli_epi16(w, 4), low4);
            if constexpr (kBits == 5) {
              const __m256i qh =
                  _mm256_load_si256(reinterpret_cast<const __m256i*>(blk + kQ4KX8BlockBytes + 32 * k));
              const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, hbit), hbit);
              n = _mm256_or_si256(n, _mm256_and_si256(set, bit4));
            }
            MESA_UNROLL for (int t = 0; t < T; ++t) {
              s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(n, Bcast4(ab[t]->qs + 32 * s + 4 * k)));
              Chain(s16[t]);
            }
          }
          MESA_UNROLL for (int t = 0; t < T; ++t) {
            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s16[t], sc));
            Chain(isum[t]);
          }
        }
      }
    }
    __m256i msum[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) msum[t] = _mm256_setzero_si256();
    MESA_UNROLL for (int c = 0; c < 4; ++c) {
      const __m256i mn = _mm256_cvtepu8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + 64 + 16 * c)));
      MESA_UNROLL for (int t = 0; t < T; ++t) msum[t] =
          _mm256_add_epi32(msum[t], _mm256_madd_epi16(mn, Bcast4(ab[t]->bsums32 + 2 * c)));
    }
    const __m256 d = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + 128)));
    const __m256 dmin = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + 144)));
    MESA_UNROLL for (int t = 0; t < T; ++t) {
      const __m256 v = _mm256_fmsub_ps(_mm256_cvtepi32_ps(isum[t]), d,
                                       _mm256_mul_ps(_mm256_cvtepi32_ps(msum[t]), dmin));
      acc[t] = _mm256_fmadd_ps(v, _mm256_set1_ps(ab[t]->d), acc[t]);
    }
  }
  MESA_UNROLL for (int t = 0; t < T; ++t) StoreRows(out + t * out_stride, acc[t], nr);
}

// Q6_Kx8 x A256: per sub-block of 16 elements, three loads give the 6-bit quants of 8
// rows for its 4 steps; per token two int16 sums of two steps' maddubs each (<= 32004),
// each widened and scaled by one madd with the rows' sub-block scales; the +32 offset
// goes as -32 * sum_s sc_s * bsum_s, one madd per sub-block pair.
template <int T>
MESA_INLINE void Q6Kx8Tile(const uint8_t* group, int64_t nb, const uint8_t* act, int64_t act_stride,
                           float* out, int64_t out_stride, int nr) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i bits45 = _mm256_set1_epi8(0x30);
  // Byte shuffles that copy word 0 / word 1 of each int32 lane over the lane.
  const __m256i lane4 = _mm256_setr_epi32(0, 0x04040404, 0x08080808, 0x0C0C0C0C, 0, 0x04040404, 0x08080808,
                                           0x0C0C0C0C);
  const __m256i dup0 = _mm256_add_epi8(_mm256_set1_epi32(0x01000100), lane4);
  const __m256i dup1 = _mm256_add_epi8(_mm256_set1_epi32(0x03020302), lane4);
  __m256 acc[T];
  MESA_UNROLL for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  const uint8_t* blk = group;
  for (int64_t b = 0; b < nb; ++b, blk += kQ6KX8BlockBytes) {
    PrefetchDecode<T, 4096, kQ6KX8BlockBytes>(blk);
    const BlockA256* ab[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) ab[t] = reinterpret_cast<const BlockA256*>(act + t * act_stride) + b;
    __m256i isum[T];
    MESA_UNROLL for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
    for (int p = 0; p < 8; ++p) {
      const __m256i scp = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + 16 * p)));
      MESA_UNROLL for (int t = 0; t < T; ++t) {
        isum[t] = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(_mm256_madd_epi16(scp, Bcast4(ab[t]->bsums + 2 * p)), 5));
        Chain(isum[t]);
      }
      MESA_UNROLL for (int h = 0; h < 2; ++h) {
        const int s = 2 * p + h;
        const __m256i sc = _mm256_shuffle_epi8(scp, h == 0 ? dup0 : dup1);
        const uint8_t* v = blk + 160 + 96 * s;
        const __m256i n0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(v));
        const __m256i n1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(v + 32));
        const __m256i qh = _mm256_load_si256(reinterpret_cast<const __m256i*>(v + 64));
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(n0, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), bits45));
        q[1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(n0, 4), low4),
                               _mm256_and_si256(_mm256_slli_epi16(qh, 2), bits45));
        q[2] = _mm256_or_si256(_mm256_and_si256(n1, low4), _mm256_and_si256(qh, bits45));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(n1, 4), low4),
                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), bits45));
        MESA_UNROLL for (int t = 0; t < T; ++t) {
          const int8_t* a = ab[t]->qs + 16 * s;
          const __m256i s01 = _mm256_add_epi16(_mm256_maddubs_epi16(q[0], Bcast4(a)),
                                               _mm256_maddubs_epi16(q[1], Bcast4(a + 4)));
          const __m256i s23 = _mm256_add_epi16(_mm256_maddubs_epi16(q[2], Bcast4(a + 8)),
                                               _mm256_maddubs_epi16(q[3], Bcast4(a + 12)));
          isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s01, sc));
          Chain(isum[t]);
          isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s23, sc));
          Chain(isum[t]);
        }
      }
    }
    const __m256 d = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + 128)));
    MESA_UNROLL for (int t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(
        _mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, _mm256_set1_ps(ab[t]->d)), acc[t]);
  }
  MESA_UNROLL for (int t = 0; t < T; ++t) StoreRows(out + t * out_stride, acc[t], nr);
}

// The x8 kernels as types for one driver: Run<T> computes 8 rows x T tokens of a group.
// Token tiles, single-thread BM_LlamaLayers m = 128 under load (CPU ms, min of 3, 3
// rounds): Q8_0x8 T=4 276-306, T=5 274-286, T=3 274-320; Q4_Kx8 and Q4_0x8 T=3..6
// were all within noise (145-250 ms, varying more between rounds than between T),
// T=4 kept. With T=4 the 4-bit tiles' int16, int32 and float accumulators fill 12 of
// the 16 registers.
struct Q8X8 {
  static constexpr int kTokens = 5;
  static constexpr int kGroupRows = kPackRowsX8;
  static int64_t GroupBytes(int64_t cols) { return Q8X8GroupBytes(cols); }
  template <int T>
  static MESA_INLINE void Run(const uint8_t* group, int64_t cols, const uint8_t* act, int64_t act_stride,
                              float* out, int64_t out_stride, int nr) {
    Q8x8Tile<T>(group, cols / 32, act, act_stride, cols, out, out_stride, nr);
  }
};
struct Q4X8 {
  static constexpr int kTokens = 4;
  static constexpr int kGroupRows = kPackRowsX8;
  static int64_t GroupBytes(int64_t cols) { return Q4X8GroupBytes(cols); }
  template <int T>
  static MESA_INLINE void Run(const uint8_t* group, int64_t cols, const uint8_t* act, int64_t act_stride,
                              float* out, int64_t out_stride, int nr) {
    Q4x8Tile<T>(group, cols / 32, act, act_stride, cols, out, out_stride, nr);
  }
};
// Q4_Kx8 (kBits 4) and Q5_Kx8 (kBits 5).
template <int kBits>
struct QKX8 {
  static constexpr int kTokens = 4;
  static constexpr int kGroupRows = kPackRowsX8;
  static int64_t GroupBytes(int64_t cols) { return kBits == 5 ? Q5KX8GroupBytes(cols) : Q4KX8GroupBytes(cols); }
  template <int T>
  static MESA_INLINE void Run(const uint8_t* group, int64_t cols, const uint8_t* act, int64_t act_stride,
                              float* out, int64_t out_stride, int nr) {
    QKx8Tile<kBits, T>(group, cols / 256, act, act_stride, out, out_stride, nr);
  }
};

struct Q6KX8 {
  static constexpr int kTokens = 4;
  static constexpr int kGroupRows = kPackRowsX8;
  static int64_t GroupBytes(int64_t cols) { return Q6KX8GroupBytes(cols); }
  template <int T>
  static MESA_INLINE void Run(const uint8_t* group, int64_t cols, const uint8_t* act, int64_t act_stride,
                              float* out, int64_t out_stride, int nr) {
    Q6Kx8Tile<T>(group, cols / 256, act, act_stride, out, out_stride, nr);
  }
};


void PackedRowsAvx2(const MatMulJob& job, int64_t row_begin, int64_t row_end) {
  switch (job.w.type) {
    case DType::kQ8_0:
      return PackedRows<Q8X8>(job, row_begin, row_end);
    case DType::kQ4_0:
      return PackedRows<Q4X8>(job, row_begin, row_end);
    case DType::kQ4_K:
      return PackedRows<QKX8<4>>(job, row_begin, row_end);
    case DType::kQ5_K:
      return PackedRows<QKX8<5>>(job, row_begin, row_end);
    case DType::kQ6_K:
      return PackedRows<Q6KX8>(job, row_begin, row_end);
    default:
      std::abort();  // a packed form of a type without one: the dispatcher's bug
  }
}

#endif  // !defined(__AVX512F__)
