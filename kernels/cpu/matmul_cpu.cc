// cpu::MatMul and cpu::DequantizeRow: picks the kernel set for this CPU once
// (AVX-512 VNNI, AVX2, or a portable scalar fallback), quantizes the activations to
// 8 bits once per call for quantized weights, and splits weight rows over the pool.
#include <algorithm>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/huge_buffer.h"
#include "common/thread_pool.h"
#include "kernels/cpu/isa_setting.h"
#include "kernels/cpu/matmul_cpu_internal.h"
#include "kernels/matmul.h"
#include "kernels/ref/quant_ref.h"

namespace mesa::cpu {
namespace internal {
namespace {

#if defined(MESA_HAVE_X86_KERNELS) && defined(__GNUC__)
// F16C through cpuid: clang 14's __builtin_cpu_supports does not know "f16c".
bool HasF16c() {
  unsigned a, b, c, d;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
#endif

Isa DetectIsa() {
#if defined(MESA_HAVE_X86_KERNELS) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c();
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")) {
    return Isa::kAvx512;
  }
  if (avx2) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

std::atomic<int> g_forced_isa{-1};

// MESA_CPU_ISA, read and checked once per process.
const absl::StatusOr<Isa>& IsaSetting() {
  static const absl::StatusOr<Isa> setting = ResolveIsa(std::getenv("MESA_CPU_ISA"), BestIsa());
  return setting;
}

}  // namespace

absl::StatusOr<Isa> ResolveIsa(const char* setting, Isa best) {
  const std::string v = setting == nullptr ? "" : setting;
  if (v.empty() || v == "auto") return best;
  Isa isa;
  if (v == "avx512") {
    isa = Isa::kAvx512;
  } else if (v == "avx2") {
    isa = Isa::kAvx2;
  } else if (v == "scalar") {
    isa = Isa::kScalar;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("MESA_CPU_ISA=", v,
                                                   " is not one of auto, avx512, avx2, scalar"));
  }
  if (static_cast<int>(isa) > static_cast<int>(best)) {
    return absl::FailedPreconditionError(
        absl::StrCat("MESA_CPU_ISA=", v, ": this CPU cannot run the ", IsaName(isa),
                     " kernels (the best it runs is ", IsaName(best), ")"));
  }
  return isa;
}

Isa CurrentIsa() {
  const int forced = g_forced_isa.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Isa>(forced);
  const absl::StatusOr<Isa>& setting = IsaSetting();
  if (!setting.ok()) {
    // Programs check the setting at startup (cpu::CheckIsaSetting); one that did not
    // stops here, before computing anything with kernels it was told not to use.
    std::fprintf(stderr, "mesa: %s\n", std::string(setting.status().message()).c_str());
    std::abort();
  }
  return *setting;
}

Isa BestIsa() {
  static const Isa best = DetectIsa();
  return best;
}

bool IsaSupported(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(BestIsa()); }

void ForceIsa(Isa isa) {
  if (!IsaSupported(isa)) {
    std::fprintf(stderr, "mesa::cpu::ForceIsa: %s not supported here\n", IsaName(isa));
    std::abort();
  }
  g_forced_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
}

void ClearForcedIsa() { g_forced_isa.store(-1, std::memory_order_relaxed); }

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

ActKind ActKindFor(DType type) {
  switch (type) {
    case DType::kQ8_0:
    case DType::kQ4_0:
      return ActKind::kA32;
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return ActKind::kA256;
    default:
      return ActKind::kFloat;
  }
}

void UnpackQ6KQuants(const uint8_t* blk, uint8_t* q) {
  for (int half = 0; half < 2; ++half) {
    const uint8_t* ql = blk + 64 * half;
    const uint8_t* qh = blk + 128 + 32 * half;
    uint8_t* y = q + 128 * half;
    for (int l = 0; l < 32; ++l) {
      y[l] = static_cast<uint8_t>((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
      y[l + 32] = static_cast<uint8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
      y[l + 64] = static_cast<uint8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
      y[l + 96] = static_cast<uint8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
    }
  }
}

}  // namespace internal

namespace {

using internal::ActKind;
using internal::BlockA256;
using internal::Isa;
using internal::MatMulJob;
using internal::kPackRows;

// Programmer errors (unsupported type, ragged rows) abort with a message.
void Require(bool ok, const char* what, DType type) {
  if (ok) return;
  std::fprintf(stderr, "mesa::cpu::MatMul: %s (type %s)\n", what,
               std::string(DTypeName(type)).c_str());
  std::abort();
}

// A growable 64-byte aligned buffer, one per calling thread, so the hot path does not
// allocate after warm-up.
class AlignedScratch {
 public:
  ~AlignedScratch() { std::free(data_); }
  uint8_t* Get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 63) / 64 * 64;
      data_ = static_cast<uint8_t*>(std::aligned_alloc(64, size_));
      if (data_ == nullptr) std::abort();
    }
    return data_;
  }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

thread_local AlignedScratch g_act_scratch;

// Round to nearest, ties to even, for |v| < 2^22 (the quants are within +-127): adding
// and subtracting 1.5 * 2^23 leaves the rounded value. Vectorizes, unlike lrintf.
inline float RoundEven(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}

// Quantizes `n` values with one scale: d = max|x| / 127, q = round(x / d).
// Returns d; writes q.
inline float QuantizeBlock(const float* x, int n, int8_t* q) {
  float amax = 0;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127;
  const float id = d != 0 ? 1.0f / d : 0.0f;
  for (int j = 0; j < n; ++j) q[j] = static_cast<int8_t>(RoundEven(x[j] * id));
  return d;
}

void QuantizeA32(const float* x, int64_t cols, uint8_t* dst) {
  const int64_t nb = cols / 32;
  auto* qs = reinterpret_cast<int8_t*>(dst);
  auto* d = reinterpret_cast<float*>(dst + cols);
  auto* sums = reinterpret_cast<int32_t*>(d + nb);
  for (int64_t b = 0; b < nb; ++b) {
    d[b] = QuantizeBlock(x + 32 * b, 32, qs + 32 * b);
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) s += qs[32 * b + j];
    sums[b] = s;
  }
}

void QuantizeA256(const float* x, int64_t cols, uint8_t* dst) {
  auto* blocks = reinterpret_cast<BlockA256*>(dst);
  for (int64_t b = 0; b < cols / 256; ++b) {
    BlockA256& blk = blocks[b];
    blk.d = QuantizeBlock(x + 256 * b, 256, blk.qs);
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += blk.qs[16 * g + j];
      blk.bsums[g] = static_cast<int16_t>(s);
    }
    for (int g = 0; g < 8; ++g) blk.bsums32[g] = static_cast<int16_t>(blk.bsums[2 * g] + blk.bsums[2 * g + 1]);
  }
}

// Portable fallback: decode one weight row at a time into a per-thread buffer.
void ScalarRows(const MatMulJob& job, int64_t row_begin, int64_t row_end) {
  thread_local std::vector<float> row;
  const int64_t cols = job.w.cols;
  row.resize(cols);
  for (int64_t r = row_begin; r < row_end; ++r) {
    ref::DequantizeRow(job.w.type, job.w.row(r), row.data(), cols);
    for (int64_t t = 0; t < job.m; ++t) {
      const float* x = job.x + t * cols;
      float s[4] = {0, 0, 0, 0};
      int64_t c = 0;
      for (; c + 4 <= cols; c += 4)
        for (int j = 0; j < 4; ++j) s[j] += row[c + j] * x[c + j];
      for (; c < cols; ++c) s[0] += row[c] * x[c];
      job.out[t * job.w.rows + r] = (s[0] + s[1]) + (s[2] + s[3]);
    }
  }
}

// Rows are handed out in groups of this many, a multiple of every kernel's tile rows
// and of the packed layouts' row groups, so thread boundaries do not create narrow
// tail tiles or split a packed group.
constexpr int64_t kRowGroup = 16;
static_assert(kRowGroup % internal::kPackRows == 0 && kRowGroup % internal::kPackRowsX8 == 0);

// Whether the running kernel set reads a packed form of `type` (PackWeights).
// AVX-512 reads the x16 layouts, AVX2 the x8 ones (matmul_cpu_internal.h): a packed
// form is only valid for the kernel set it was made for.
bool HasPackedForm(Isa isa, DType type) {
  switch (isa) {
    case Isa::kAvx512:
      return type == DType::kQ8_0 || type == DType::kQ4_K || type == DType::kQ5_K || type == DType::kQ6_K;
    case Isa::kAvx2:
      return type == DType::kQ8_0 || type == DType::kQ4_0 || type == DType::kQ4_K || type == DType::kQ5_K ||
             type == DType::kQ6_K;
    case Isa::kScalar:
      return false;
  }
  return false;
}

// Rows per packed group of the running kernel set.
int64_t PackRows(Isa isa) { return isa == Isa::kAvx2 ? internal::kPackRowsX8 : internal::kPackRows; }

// Work pieces per thread in MatMulShared (see there).
constexpr int64_t kChunksPerThread = 4;

}  // namespace

const char* ActiveIsaName() { return internal::IsaName(internal::CurrentIsa()); }

absl::Status CheckIsaSetting() { return internal::IsaSetting().status(); }

void DequantizeRow(DType type, const void* row, float* out, int64_t n) {
  const DTypeInfo& info = GetDTypeInfo(type);
  Require(info.supported, "unsupported type", type);
  Require(n % info.block_elems == 0, "row length not a multiple of the block", type);
#if defined(MESA_HAVE_X86_KERNELS)
  switch (internal::CurrentIsa()) {
    case Isa::kAvx512:
      return internal::avx512::DequantizeRow(type, row, out, n);
    case Isa::kAvx2:
      return internal::avx2::DequantizeRow(type, row, out, n);
    default:
      break;
  }
#endif
  ref::DequantizeRow(type, row, out, n);
}

int64_t PackedBytes(const WeightView& w) {
  const Isa isa = internal::CurrentIsa();
  if (!HasPackedForm(isa, w.type) || w.rows <= 0) return 0;
  const int64_t block = GetDTypeInfo(w.type).block_elems;
  if (w.cols % block != 0) return 0;
  const int64_t groups = (w.rows + PackRows(isa) - 1) / PackRows(isa);
  if (isa == Isa::kAvx2) {
    switch (w.type) {
      case DType::kQ8_0:
        return groups * internal::Q8X8GroupBytes(w.cols);
      case DType::kQ4_0:
        return groups * internal::Q4X8GroupBytes(w.cols);
      case DType::kQ4_K:
        return groups * internal::Q4KX8GroupBytes(w.cols);
      case DType::kQ5_K:
        return groups * internal::Q5KX8GroupBytes(w.cols);
      case DType::kQ6_K:
        return groups * internal::Q6KX8GroupBytes(w.cols);
      default:
        return 0;  // HasPackedForm said no above; kept explicit so a new type is no Q6_K
    }
  }
  switch (w.type) {
    case DType::kQ8_0:
      return groups * internal::Q8PackGroupBytes(w.cols);
    case DType::kQ4_K:
      return groups * internal::Q4KPackGroupBytes(w.cols);
    case DType::kQ5_K:
      return groups * internal::Q5KPackGroupBytes(w.cols);
    case DType::kQ6_K:
      return groups * internal::Q6KPackGroupBytes(w.cols);
    default:
      return 0;  // as above
  }
}

namespace {


// One 16-row group of Q8_0x16 (matmul_cpu_internal.h); rows past `rows` stay as the
// caller zeroed them, except that their quants are stored as 0 + 128.
void PackQ8Group(const WeightView& w, int64_t g, uint8_t* q) {
  const int64_t nb = w.cols / 32;
  const int64_t row_bytes = w.row_bytes();
  const auto* src = static_cast<const uint8_t*>(w.data);
  for (int64_t b = 0; b < nb; ++b, q += internal::kQ8PackBlockBytes) {
    for (int i = 0; i < kPackRows; ++i) {
      const int64_t r = g * kPackRows + i;
      const uint8_t* blk = r < w.rows ? src + r * row_bytes + b * 34 : nullptr;
      for (int k = 0; k < 8; ++k) {
        for (int j = 0; j < 4; ++j) {
          const uint8_t v = blk ? blk[2 + 4 * k + j] : 0;
          q[(k * kPackRows + i) * 4 + j] = static_cast<uint8_t>(v ^ 0x80);  // int8 + 128
        }
      }
      if (blk) std::memcpy(q + 512 + 2 * i, blk, 2);
    }
  }
}

// One 16-row group of Q4_Kx16 or Q5_Kx16 (five_bits); padding rows stay zero (d = dmin
// = 0).
void PackQ45KGroup(const WeightView& w, int64_t g, uint8_t* q, bool five_bits) {
  const int64_t nb = w.cols / 256;
  const int64_t row_bytes = w.row_bytes();
  const int src_block = five_bits ? 176 : 144, qs_offset = five_bits ? 48 : 16;
  const int pair_bytes = five_bits ? 640 : 512;
  const auto* src = static_cast<const uint8_t*>(w.data);
  for (int64_t b = 0; b < nb; ++b, q += five_bits ? internal::kQ5KPackBlockBytes : internal::kQ4KPackBlockBytes) {
    uint8_t* sc = q;
    uint8_t* mn = sc + 128;
    uint8_t* d = mn + 128;
    for (int i = 0; i < kPackRows; ++i) {
      const int64_t r = g * kPackRows + i;
      if (r >= w.rows) break;
      const uint8_t* blk = src + r * row_bytes + b * src_block;
      for (int c = 0; c < 4; ++c) {
        uint8_t* pair = q + 320 + c * pair_bytes;
        for (int k = 0; k < 8; ++k) {
          std::memcpy(pair + (k * kPackRows + i) * 4, blk + qs_offset + 32 * c + 4 * k, 4);
          if (!five_bits) continue;
          for (int e = 0; e < 4; ++e) {
            const uint8_t h = blk[16 + 4 * k + e];  // qh[l], l = element 4k+e of the sub-blocks
            const int bits = ((h >> (2 * c)) & 1) | (((h >> (2 * c + 1)) & 1) << 1);
            pair[512 + ((k / 4) * kPackRows + i) * 4 + e] |= static_cast<uint8_t>(bits << (2 * (k % 4)));
          }
        }
      }
      for (int s = 0; s < 8; ++s) {
        int scale, min;
        ref::ScaleMinK4(s, blk + 4, &scale, &min);
        sc[s * kPackRows + i] = static_cast<uint8_t>(scale);
        mn[((s / 2) * kPackRows + i) * 2 + (s % 2)] = static_cast<uint8_t>(min);
      }
      std::memcpy(d + 2 * i, blk, 2);                   // d
      std::memcpy(d + 2 * kPackRows + 2 * i, blk + 2, 2);  // dmin
    }
  }
}

// One 16-row group of Q6_Kx16; padding rows stay zero (d = 0).
void PackQ6KGroup(const WeightView& w, int64_t g, uint8_t* out) {
  const int64_t nb = w.cols / 256;
  const int64_t row_bytes = w.row_bytes();
  const auto* src = static_cast<const uint8_t*>(w.data);
  for (int64_t b = 0; b < nb; ++b, out += internal::kQ6KPackBlockBytes) {
    for (int i = 0; i < kPackRows; ++i) {
      const int64_t r = g * kPackRows + i;
      if (r >= w.rows) break;
      const uint8_t* blk = src + r * row_bytes + b * 210;
      uint8_t q[256];
      internal::UnpackQ6KQuants(blk, q);
      for (int sb = 0; sb < 16; ++sb) {
        for (int e = 0; e < 4; ++e) {
          auto at = [&](int step) { return q[16 * sb + 4 * step + e]; };
          uint8_t* vecs = out + 320 + 192 * sb + i * 4 + e;  // nib0, nib1, qh, 64 bytes apart
          vecs[0] = static_cast<uint8_t>((at(0) & 0xF) | ((at(1) & 0xF) << 4));
          vecs[64] = static_cast<uint8_t>((at(2) & 0xF) | ((at(3) & 0xF) << 4));
          uint8_t high = 0;
          for (int j = 0; j < 4; ++j) high |= static_cast<uint8_t>((at(j) >> 4) << (2 * j));
          vecs[128] = high;
        }
        out[sb * kPackRows + i] = blk[192 + sb];
      }
      std::memcpy(out + 256 + 2 * i, blk + 208, 2);
    }
  }
}

}  // namespace

void PackWeightsInto(const WeightView& w, uint8_t* dst) {
  const int64_t bytes = PackedBytes(w);
  Require(bytes > 0, "no packed form", w.type);
  if (internal::CurrentIsa() == Isa::kAvx2) {
    constexpr int64_t kRows = internal::kPackRowsX8;
    const int64_t group_bytes = bytes / ((w.rows + kRows - 1) / kRows);
    for (int64_t g = 0; g * kRows < w.rows; ++g) internal::PackGroupX8(w, g, dst + g * group_bytes);
    return;
  }
  const int64_t group_bytes = bytes / ((w.rows + kPackRows - 1) / kPackRows);
  for (int64_t g = 0; g * kPackRows < w.rows; ++g) {
    switch (w.type) {
      case DType::kQ8_0:
        PackQ8Group(w, g, dst + g * group_bytes);
        break;
      case DType::kQ4_K:
      case DType::kQ5_K:
        PackQ45KGroup(w, g, dst + g * group_bytes, w.type == DType::kQ5_K);
        break;
      case DType::kQ6_K:
        PackQ6KGroup(w, g, dst + g * group_bytes);
        break;
      default:
        std::abort();  // PackedBytes was 0: nothing to pack into
    }
  }
}

std::shared_ptr<const uint8_t> PackWeights(const WeightView& w) {
  const int64_t bytes = PackedBytes(w);
  if (bytes == 0) return nullptr;
  std::shared_ptr<uint8_t> buffer = AllocateHugeBuffer(bytes);  // zero-filled
  Require(buffer != nullptr, "out of memory packing weights", w.type);
  PackWeightsInto(w, buffer.get());
  return buffer;
}

void MatMul(const WeightView& w, const float* x, int64_t m, float* out, ThreadPool& pool) {
  const MatMulTarget target{w, out};
  MatMulShared(&target, 1, x, m, pool);
}

void MatMulShared(const MatMulTarget* targets, int count, const float* x, int64_t m,
                  ThreadPool& pool) {
  constexpr int kMaxTargets = 8;
  Require(count >= 1 && count <= kMaxTargets, "1 to 8 targets", targets[0].w.type);
  const int64_t cols = targets[0].w.cols;
  for (int i = 0; i < count; ++i) {
    const WeightView& w = targets[i].w;
    const DTypeInfo& info = GetDTypeInfo(w.type);
    Require(info.supported, "unsupported type", w.type);
    Require(w.cols % info.block_elems == 0, "cols not a multiple of the block", w.type);
    Require(w.cols == cols, "targets of MatMulShared differ in cols", w.type);
  }
  if (m <= 0) return;
  const Isa isa = internal::CurrentIsa();

  // Quantize the activations once per form the targets need (at most kA32 and kA256,
  // in separate parts of the scratch buffer).
  const int64_t a32_stride = internal::A32Stride(cols);
  const int64_t a256_stride = internal::A256Stride(cols);
  bool need[3] = {false, false, false};
  if (isa != Isa::kScalar) {
    for (int i = 0; i < count; ++i) need[static_cast<int>(internal::ActKindFor(targets[i].w.type))] = true;
  }
  const bool need32 = need[static_cast<int>(ActKind::kA32)];
  const bool need256 = need[static_cast<int>(ActKind::kA256)];
  const int64_t a32_bytes = need32 ? a32_stride * m : 0;
  const int64_t a256_bytes = need256 ? a256_stride * m : 0;
  uint8_t* act32 = nullptr;
  uint8_t* act256 = nullptr;
  if (need32 || need256) {
    uint8_t* act = g_act_scratch.Get(static_cast<size_t>(a32_bytes + a256_bytes));
    act32 = need32 ? act : nullptr;
    act256 = need256 ? act + a32_bytes : nullptr;
    auto quantize_tokens = [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        if (act32) QuantizeA32(x + t * cols, cols, act32 + t * a32_stride);
        if (act256) QuantizeA256(x + t * cols, cols, act256 + t * a256_stride);
      }
    };
    // One token is ~1 us of work: only spread the quantization when there are many.
    if (m < 16) {
      quantize_tokens(0, m);
    } else {
      pool.ParallelFor(m, 16, [&](int, int64_t begin, int64_t end) { quantize_tokens(begin, end); });
    }
  }

  void (*rows_fn)(const MatMulJob&, int64_t, int64_t) = ScalarRows;
#if defined(MESA_HAVE_X86_KERNELS)
  if (isa == Isa::kAvx512) rows_fn = internal::avx512::MatMulRows;
  if (isa == Isa::kAvx2) rows_fn = internal::avx2::MatMulRows;
#endif

  // The row groups of all targets, laid end to end, weighted by their bytes of weights
  // (what decode waits for; prefill work is nearly proportional too), and cut into
  // contiguous chunks that the threads claim in order. Chunks long enough for the
  // prefetchers (a few per thread), claimed dynamically so a thread that started late
  // or streamed slower does not leave the other waiting.
  MatMulJob jobs[kMaxTargets];
  int64_t groups[kMaxTargets], group_cost[kMaxTargets], prefix[kMaxTargets + 1];
  prefix[0] = 0;
  int64_t macs = 0;
  for (int i = 0; i < count; ++i) {
    const WeightView& w = targets[i].w;
    MatMulJob& job = jobs[i];
    job.w = w;
    job.row_bytes = w.row_bytes();
    job.x = x;
    job.m = m;
    job.out = targets[i].out;
    if (w.packed != nullptr && HasPackedForm(isa, w.type)) job.packed = static_cast<const uint8_t*>(w.packed);
    const ActKind kind = internal::ActKindFor(w.type);
    if (isa != Isa::kScalar && kind == ActKind::kA32) {
      job.act = act32;
      job.act_stride = a32_stride;
    } else if (isa != Isa::kScalar && kind == ActKind::kA256) {
      job.act = act256;
      job.act_stride = a256_stride;
    }
    groups[i] = (w.rows + kRowGroup - 1) / kRowGroup;
    group_cost[i] = kRowGroup * job.row_bytes;
    prefix[i + 1] = prefix[i] + groups[i] * group_cost[i];
    macs += w.rows * cols * m;
  }
  const int64_t total = prefix[count];
  if (total == 0) return;
  // Waking a thread costs a few microseconds: give each at least ~256K multiply-adds.
  const int64_t threads = std::clamp<int64_t>(macs >> 18, 1, pool.size());
  const int64_t chunks = threads == 1 ? 1 : threads * kChunksPerThread;
  auto run_chunk = [&](int64_t p) {
    const int64_t lo = total * p / chunks, hi = total * (p + 1) / chunks;
    for (int i = 0; i < count; ++i) {
      // Group j of target i starts at prefix[i] + j * cost; it belongs to the part
      // whose [lo, hi) holds that start.
      auto first_at_or_after = [&](int64_t pos) {
        const int64_t rel = pos - prefix[i];
        if (rel <= 0) return int64_t{0};
        return std::min(groups[i], (rel + group_cost[i] - 1) / group_cost[i]);
      };
      const int64_t gb = first_at_or_after(lo), ge = first_at_or_after(hi);
      if (gb < ge) rows_fn(jobs[i], gb * kRowGroup, std::min(jobs[i].w.rows, ge * kRowGroup));
    }
  };
  if (chunks == 1) {
    run_chunk(0);
  } else {
    std::atomic<int64_t> next{0};
    pool.ParallelFor(threads, 1, [&](int, int64_t, int64_t) {
      for (int64_t p; (p = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) run_chunk(p);
    });
  }
}

}  // namespace mesa::cpu
