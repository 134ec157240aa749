// Tests cpu::MatMul and cpu::DequantizeRow against their ref/ twins for every weight
// type and every kernel set this CPU runs (AVX-512, AVX2, scalar), on random non-zero
// data with odd sizes and tails, NaN-poisoned outputs, and 1/2/3 threads.
//
// Tolerances, relative to sum_c |w[r][c] * x[t][c]| of each output element:
//   1e-5  float weights, and quantized weights against ref::MatMul run on the same
//         8-bit-quantized activations the kernel uses (only the f32 summation order
//         differs);
//   2e-2  quantized weights against ref::MatMul on the unquantized activations (8-bit
//         activations with one scale per 32 or 256 values err by <= 1/254 of the
//         block's max |x|; 2e-2 leaves room for small blocks).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/cpu/isa_setting.h"
#include "kernels/cpu/matmul_cpu_internal.h"
#include "kernels/matmul.h"
#include "kernels/ref/quant_ref.h"
#include "tests/testing/random_weights.h"

namespace mesa {

// Names the type in failure messages of the parameterized tests.
void PrintTo(DType type, std::ostream* os) { *os << DTypeName(type); }

namespace {

using cpu::internal::ActKind;
using cpu::internal::Isa;

const DType kTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                        DType::kQ4_0, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

using testing::NonZero;
using testing::RandomWeights;
using testing::StoreF16At;

// What the SIMD kernels do to activations: blocks of `block` values, d = max|x| / 127,
// q = round-half-even(x / d); returns d * q.
std::vector<float> QuantizeActivations(const std::vector<float>& x, int64_t block) {
  std::vector<float> y(x.size());
  for (size_t b = 0; b < x.size(); b += block) {
    float amax = 0;
    for (int64_t j = 0; j < block; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    for (int64_t j = 0; j < block; ++j) y[b + j] = d * std::nearbyint(x[b + j] * id);
  }
  return y;
}

// sum_c |w[r][c] * x[t][c]| per output element: the scale errors are judged against.
std::vector<double> AbsDot(const WeightView& w, const std::vector<float>& x, int64_t m) {
  std::vector<double> out(m * w.rows);
  std::vector<float> row(w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    ref::DequantizeRow(w.type, w.row(r), row.data(), w.cols);
    for (int64_t t = 0; t < m; ++t) {
      double s = 0;
      for (int64_t c = 0; c < w.cols; ++c)
        s += std::fabs(static_cast<double>(row[c]) * x[t * w.cols + c]);
      out[t * w.rows + r] = s;
    }
  }
  return out;
}

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (cpu::internal::IsaSupported(isa)) isas.push_back(isa);
  return isas;
}

// Restores automatic ISA selection when a test ends.
class IsaGuard {
 public:
  explicit IsaGuard(Isa isa) { cpu::internal::ForceIsa(isa); }
  ~IsaGuard() { cpu::internal::ClearForcedIsa(); }
};

std::vector<int64_t> ColsFor(DType type) {
  const int block = GetDTypeInfo(type).block_elems;
  if (block == 256) return {256, 768, 2304};    // 1, 3 and 9 blocks
  if (block == 32) return {32, 64, 96, 288, 1056};  // 1, 2, 3, 9 and 33 blocks (x8 layouts pair them)
  return {8, 37, 256, 1029};                    // float rows need no blocks: odd tails
}

class MatMulTest : public ::testing::TestWithParam<DType> {};

// The view of `wdata` as given and, when the running kernel set has a packed form of
// the type, the same matrix packed (`keep` holds the packed copy). A packed form is
// only valid for the kernel set it was made for: call under the ISA that runs it.
std::vector<WeightView> Views(const WeightView& w, std::shared_ptr<const uint8_t>* keep) {
  std::vector<WeightView> views = {w};
  *keep = cpu::PackWeights(w);
  if (*keep) {
    WeightView p = w;
    p.packed = keep->get();
    views.push_back(p);
  }
  return views;
}

TEST_P(MatMulTest, MatchesReferenceOnAllShapes) {
  const DType type = GetParam();
  std::mt19937 rng(1234 + static_cast<int>(type));
  ThreadPool pool(2);
  for (Isa isa : SupportedIsas()) {
    IsaGuard guard(isa);
    const ActKind kind = isa == Isa::kScalar ? ActKind::kFloat : cpu::internal::ActKindFor(type);
    for (int64_t cols : ColsFor(type)) {
      for (int64_t rows : {1, 3, 16, 67}) {
        const std::vector<uint8_t> wdata = RandomWeights(type, rows, cols, rng);
        std::shared_ptr<const uint8_t> packed;
        for (const WeightView& w : Views(WeightView{type, rows, cols, wdata.data()}, &packed)) {
          for (int64_t m : {1, 2, 3, 5, 8, 9, 17, 33}) {
            SCOPED_TRACE(std::string(cpu::internal::IsaName(isa)) + " " +
                         std::string(DTypeName(type)) + (w.packed ? " packed" : "") +
                         " m=" + std::to_string(m) + " rows=" + std::to_string(rows) +
                         " cols=" + std::to_string(cols));
            std::vector<float> x(m * cols);
            for (float& v : x) v = NonZero(rng);
            std::vector<float> got(m * rows, std::numeric_limits<float>::quiet_NaN());
            cpu::MatMul(w, x.data(), m, got.data(), pool);

            std::vector<float> want(m * rows), want_exact(m * rows);
            ref::MatMul(w, x.data(), m, want_exact.data());
            if (kind == ActKind::kFloat) {
              want = want_exact;
            } else {
              const std::vector<float> xq = QuantizeActivations(x, kind == ActKind::kA32 ? 32 : 256);
              ref::MatMul(w, xq.data(), m, want.data());
            }
            const std::vector<double> scale = AbsDot(w, x, m);
            int bad = 0;
            for (int64_t i = 0; i < m * rows && bad < 5; ++i) {
              const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
              const double err_exact = std::fabs(static_cast<double>(got[i]) - want_exact[i]);
              if (!(err <= 1e-5 * scale[i]) || !(err_exact <= 2e-2 * scale[i])) {
                ADD_FAILURE() << "element " << i << ": got " << got[i] << " want " << want[i]
                              << " (unquantized " << want_exact[i] << ", scale " << scale[i] << ")";
                ++bad;
              }
            }
            if (bad) return;
          }
        }
      }
    }
  }
}

TEST_P(MatMulTest, ThreadCountDoesNotChangeResults) {
  const DType type = GetParam();
  std::mt19937 rng(99);
  const int64_t cols = GetDTypeInfo(type).block_elems == 256 ? 1024 : 992;
  const int64_t rows = 203;
  const std::vector<uint8_t> wdata = RandomWeights(type, rows, cols, rng);
  for (Isa isa : SupportedIsas()) {
    IsaGuard guard(isa);
    std::shared_ptr<const uint8_t> packed;
    for (const WeightView& w : Views(WeightView{type, rows, cols, wdata.data()}, &packed)) {
      for (int64_t m : {1, 7, 40}) {
        std::vector<float> x(m * cols);
        for (float& v : x) v = NonZero(rng);
        std::vector<float> first;
        for (int threads : {1, 2, 3}) {
          ThreadPool pool(threads);
          std::vector<float> got(m * rows, std::numeric_limits<float>::quiet_NaN());
          cpu::MatMul(w, x.data(), m, got.data(), pool);
          if (first.empty()) {
            first = got;
          } else {
            EXPECT_EQ(std::memcmp(first.data(), got.data(), got.size() * 4), 0)
                << cpu::internal::IsaName(isa) << (w.packed ? " packed" : "") << " m=" << m
                << " threads=" << threads;
          }
        }
      }
    }
  }
}

// Large batches run in cache blocks of rows and tokens (matmul_x86-inl.h: RunRows,
// PackedRows) that the shapes above do not reach. Each output must come out as in a
// small batch, bit for bit, whatever block it falls in; and the small batches match
// the reference (MatchesReferenceOnAllShapes).
TEST_P(MatMulTest, LargeBatchEqualsSmallBatches) {
  const DType type = GetParam();
  std::mt19937 rng(11);
  const int64_t cols = ColsFor(type).back();  // the widest: the fewest tokens per block
  const int64_t rows = 203, m = 613, chunk = 7;
  const std::vector<uint8_t> wdata = RandomWeights(type, rows, cols, rng);
  std::vector<float> x(m * cols);
  for (float& v : x) v = NonZero(rng);
  ThreadPool pool(2);
  for (Isa isa : SupportedIsas()) {
    IsaGuard guard(isa);
    std::shared_ptr<const uint8_t> packed;
    for (const WeightView& w : Views(WeightView{type, rows, cols, wdata.data()}, &packed)) {
      std::vector<float> all(m * rows, std::numeric_limits<float>::quiet_NaN());
      std::vector<float> parts(m * rows, std::numeric_limits<float>::quiet_NaN());
      cpu::MatMul(w, x.data(), m, all.data(), pool);
      for (int64_t t = 0; t < m; t += chunk) {
        cpu::MatMul(w, x.data() + t * cols, std::min(chunk, m - t), parts.data() + t * rows, pool);
      }
      EXPECT_EQ(std::memcmp(all.data(), parts.data(), all.size() * 4), 0)
          << cpu::internal::IsaName(isa) << (w.packed ? " packed" : "");
    }
  }
}

// The float prefill tiles (matmul_float_x86-inl.h) step 16 (AVX-512) or 8 (AVX2)
// columns with a masked last step, run R x T tiles with smaller tiles at the row and
// token tails, reduce accumulators in groups of 4 rows, and from 2T tokens on copy the
// weights (converted to f32) and unaligned token rows into aligned buffers. Every
// combination of those tails, with activations at an offset that is not 64-byte
// aligned, against the reference.
TEST(FloatMatMulTest, TileTailsMatchReference) {
  std::mt19937 rng(77);
  ThreadPool pool(2);
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int64_t cols : {1, 5, 8, 15, 16, 17, 31, 40, 100}) {
      for (int64_t rows : {1, 2, 3, 4, 5, 7, 9, 13, 18}) {
        const std::vector<uint8_t> wdata = RandomWeights(type, rows, cols, rng);
        const WeightView w{type, rows, cols, wdata.data()};
        for (int64_t m : {2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 25}) {
          for (int64_t offset : {0, 1}) {
            std::vector<float> xbuf(m * cols + 16);
            float* x = xbuf.data() + offset;
            for (int64_t i = 0; i < m * cols; ++i) x[i] = NonZero(rng);
            const std::vector<float> xv(x, x + m * cols);
            std::vector<float> want(m * rows);
            ref::MatMul(w, x, m, want.data());
            const std::vector<double> scale = AbsDot(w, xv, m);
            for (Isa isa : SupportedIsas()) {
              IsaGuard guard(isa);
              std::vector<float> got(m * rows, std::numeric_limits<float>::quiet_NaN());
              cpu::MatMul(w, x, m, got.data(), pool);
              for (int64_t i = 0; i < m * rows; ++i) {
                const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
                if (!(err <= 1e-5 * scale[i])) {
                  FAIL() << cpu::internal::IsaName(isa) << " " << DTypeName(type) << " rows=" << rows
                         << " cols=" << cols << " m=" << m << " offset=" << offset << " element " << i
                         << ": got " << got[i] << " want " << want[i] << " (scale " << scale[i] << ")";
                }
              }
            }
          }
        }
      }
    }
  }
}

// Decode (one token) and prefill (many) run different tile shapes; for quantized
// weights each output must still come out bit-identical, packed or not, so a token's
// logits do not depend on whether it was decoded or part of a prompt.
// (Float weights are not held to this: their GEMV sums in its own order.)
class QuantizedMatMulTest : public ::testing::TestWithParam<DType> {};

TEST_P(QuantizedMatMulTest, DecodeEqualsPrefill) {
  const DType type = GetParam();
  std::mt19937 rng(5);
  const int64_t cols = GetDTypeInfo(type).block_elems == 256 ? 768 : 800;
  const int64_t rows = 45, m = 11;
  const std::vector<uint8_t> wdata = RandomWeights(type, rows, cols, rng);
  std::vector<float> x(m * cols);
  for (float& v : x) v = NonZero(rng);
  ThreadPool pool(2);
  for (Isa isa : SupportedIsas()) {
    IsaGuard guard(isa);
    std::shared_ptr<const uint8_t> packed;
    for (const WeightView& w : Views(WeightView{type, rows, cols, wdata.data()}, &packed)) {
      std::vector<float> all(m * rows), one(rows);
      cpu::MatMul(w, x.data(), m, all.data(), pool);
      for (int64_t t = 0; t < m; ++t) {
        cpu::MatMul(w, x.data() + t * cols, 1, one.data(), pool);
        EXPECT_EQ(std::memcmp(one.data(), all.data() + t * rows, rows * 4), 0)
            << cpu::internal::IsaName(isa) << (w.packed ? " packed" : " plain") << " token " << t;
      }
    }
  }
}

TEST_P(MatMulTest, DequantizeRowIsBitExact) {
  const DType type = GetParam();
  std::mt19937 rng(7);
  for (int64_t cols : ColsFor(type)) {
    const std::vector<uint8_t> wdata = RandomWeights(type, 1, cols, rng);
    std::vector<float> want(cols);
    ref::DequantizeRow(type, wdata.data(), want.data(), cols);
    for (Isa isa : SupportedIsas()) {
      IsaGuard guard(isa);
      std::vector<float> got(cols, std::numeric_limits<float>::quiet_NaN());
      cpu::DequantizeRow(type, wdata.data(), got.data(), cols);
      EXPECT_EQ(std::memcmp(want.data(), got.data(), cols * 4), 0)
          << cpu::internal::IsaName(isa) << " cols=" << cols;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatMulTest, ::testing::ValuesIn(kTypes),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });
INSTANTIATE_TEST_SUITE_P(Quantized, QuantizedMatMulTest,
                         ::testing::Values(DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ5_K,
                                           DType::kQ6_K),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// The integer sums at their largest: every quant at its maximum (Q4_K 15, Q5_K 31:
// all qs and qh bits set; 6-bit scales 63) against activations that all quantize to
// +127 or -127. The packed kernels sum steps in int16 before scaling (Q4_K 8 steps,
// Q5_K two halves of 4: matmul_cpu_internal.h); an overflow there would wrap, far
// from the reference.
TEST(MatMulExtremesTest, LargestQuantsDoNotOverflowTheIntegerSums) {
  ThreadPool pool(2);
  for (DType type : {DType::kQ4_K, DType::kQ5_K}) {
    const int64_t rows = 9, cols = 512;
    const int64_t block = type == DType::kQ5_K ? 176 : 144;
    std::vector<uint8_t> wdata(static_cast<size_t>(rows * cols / 256 * block), 0xFF);
    for (size_t b = 0; b < wdata.size(); b += block) {
      const uint16_t d = F32ToF16(0.01f), dmin = 0;
      std::memcpy(&wdata[b], &d, 2);
      std::memcpy(&wdata[b + 2], &dmin, 2);
    }
    const WeightView plain{type, rows, cols, wdata.data()};
    for (Isa isa : SupportedIsas()) {
      IsaGuard guard(isa);
      std::shared_ptr<const uint8_t> packed;
      for (const WeightView& w : Views(plain, &packed)) {
        for (float sign : {1.0f, -1.0f}) {
          for (int64_t m : {1, 5}) {
            SCOPED_TRACE(std::string(cpu::internal::IsaName(isa)) + " " + std::string(DTypeName(type)) +
                         (w.packed ? " packed" : "") + " m=" + std::to_string(m) + " sign " +
                         std::to_string(sign));
            const std::vector<float> x(m * cols, sign);
            std::vector<float> got(m * rows, std::numeric_limits<float>::quiet_NaN()), want(m * rows);
            cpu::MatMul(w, x.data(), m, got.data(), pool);
            ref::MatMul(w, x.data(), m, want.data());
            for (int64_t i = 0; i < m * rows; ++i) {
              ASSERT_NEAR(got[i], want[i], 1e-5 * std::fabs(want[i])) << "element " << i;
            }
            const double d = F16ToF32(F32ToF16(0.01f));
            ASSERT_NEAR(want[0], sign * cols * d * 63 * (type == DType::kQ5_K ? 31 : 15), 1e-6 * cols);
          }
        }
      }
    }
  }
}

// Each SIMD kernel set packs the types it has a layout for, in its own layout: x16 on
// AVX-512 VNNI, x8 on AVX2 (matmul_cpu_internal.h); scalar and float types never.
TEST(PackWeightsTest, EachKernelSetPacksInItsLayout) {
  std::mt19937 rng(3);
  const int64_t rows = 20;
  std::vector<std::vector<uint8_t>> data;
  auto view = [&](DType type, int64_t cols) {
    data.push_back(RandomWeights(type, rows, cols, rng));
    return WeightView{type, rows, cols, data.back().data()};
  };
  const WeightView q8 = view(DType::kQ8_0, 96), q4 = view(DType::kQ4_0, 96), q4k = view(DType::kQ4_K, 512),
                   q5k = view(DType::kQ5_K, 512), q6k = view(DType::kQ6_K, 512), f32 = view(DType::kF32, 64);
  for (Isa isa : SupportedIsas()) {
    IsaGuard guard(isa);
    SCOPED_TRACE(cpu::internal::IsaName(isa));
    EXPECT_EQ(cpu::PackWeights(f32), nullptr);
    switch (isa) {
      case Isa::kAvx512:
        EXPECT_EQ(cpu::PackedBytes(q8), 2 * 3 * 576);  // 2 groups of 16 rows x 3 blocks
        EXPECT_EQ(cpu::PackedBytes(q4), 0);
        EXPECT_EQ(cpu::PackedBytes(q4k), 2 * 2 * 2368);
        EXPECT_GT(cpu::PackedBytes(q5k), 0);
        EXPECT_GT(cpu::PackedBytes(q6k), 0);
        break;
      case Isa::kAvx2:
        EXPECT_EQ(cpu::PackedBytes(q8), 3 * (544 + 288));  // 3 groups of 8 rows x (a pair + 1)
        EXPECT_EQ(cpu::PackedBytes(q4), 3 * (288 + 160));
        EXPECT_EQ(cpu::PackedBytes(q4k), 3 * 2 * 1184);
        EXPECT_EQ(cpu::PackedBytes(q5k), 3 * 2 * 1440);
        EXPECT_EQ(cpu::PackedBytes(q6k), 3 * 2 * 1696);
        break;
      case Isa::kScalar:
        EXPECT_EQ(cpu::PackWeights(q8), nullptr);
        break;
    }
    if (isa != Isa::kScalar) {
      ASSERT_NE(cpu::PackWeights(q8), nullptr);
    }
  }
}

// MESA_CPU_ISA: every name the CPU can run selects that kernel set; unknown names and
// ISAs beyond the CPU's are errors that say so (mesa exits with them at startup).
TEST(IsaSettingTest, ResolvesNamesAndRejectsWhatTheCpuCannotRun) {
  using cpu::internal::ResolveIsa;
  EXPECT_EQ(*ResolveIsa(nullptr, Isa::kAvx2), Isa::kAvx2);
  EXPECT_EQ(*ResolveIsa("", Isa::kAvx512), Isa::kAvx512);
  EXPECT_EQ(*ResolveIsa("auto", Isa::kAvx512), Isa::kAvx512);
  EXPECT_EQ(*ResolveIsa("avx2", Isa::kAvx512), Isa::kAvx2);
  EXPECT_EQ(*ResolveIsa("scalar", Isa::kAvx2), Isa::kScalar);
  EXPECT_EQ(*ResolveIsa("avx512", Isa::kAvx512), Isa::kAvx512);

  const absl::StatusOr<Isa> beyond = ResolveIsa("avx512", Isa::kAvx2);
  ASSERT_FALSE(beyond.ok());
  EXPECT_EQ(beyond.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(beyond.status().message().find("cannot run the avx512 kernels"), std::string_view::npos)
      << beyond.status();
  EXPECT_FALSE(ResolveIsa("avx2", Isa::kScalar).ok());

  for (const char* bad : {"AVX2", "sse", "avx-512", " avx2"}) {
    const absl::StatusOr<Isa> r = ResolveIsa(bad, Isa::kAvx512);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("not one of auto, avx512, avx2, scalar"), std::string_view::npos)
        << r.status();
  }
}

// The forced kernel set is what ActiveIsaName reports and what PackWeights packs for
// (so a run forced to AVX2 holds the weights an AVX2 machine would).
TEST(IsaSettingTest, ForcedIsaIsReportedAndPackedFor) {
  std::mt19937 rng(3);
  const std::vector<uint8_t> wdata = RandomWeights(DType::kQ8_0, 20, 64, rng);
  const WeightView w{DType::kQ8_0, 20, 64, wdata.data()};
  for (Isa isa : SupportedIsas()) {
    IsaGuard guard(isa);
    EXPECT_STREQ(cpu::ActiveIsaName(), cpu::internal::IsaName(isa));
    EXPECT_EQ(cpu::PackedBytes(w) > 0, isa != Isa::kScalar) << cpu::internal::IsaName(isa);
  }
  EXPECT_TRUE(cpu::CheckIsaSetting().ok()) << "the test runs with a usable MESA_CPU_ISA";
}

// MatMulShared splits the rows of all its targets over the threads at once and
// quantizes the activations once per form: the results must be those of separate
// MatMul calls, bit for bit, for every mix of types, token count and thread count.
TEST(MatMulSharedTest, EqualsSeparateProducts) {
  std::mt19937 rng(5);
  const int64_t cols = 768;  // a multiple of every block size
  const int64_t rows[] = {67, 3, 16, 1, 40, 9, 24, 5};
  std::vector<std::vector<uint8_t>> wdata;
  std::vector<WeightView> views;
  for (size_t i = 0; i < std::size(kTypes); ++i) {
    wdata.push_back(RandomWeights(kTypes[i], rows[i], cols, rng));
    views.push_back(WeightView{kTypes[i], rows[i], cols, wdata.back().data()});
  }
  // Views 8-11: the Q8_0, Q4_0, Q4_K and Q6_K matrices packed for the kernel set under
  // test, where it has a packed form (else as is).
  for (int i : {3, 4, 5, 7}) views.push_back(views[i]);
  // Mixes: all types; float-only; the q/k/v of a Q4_K_M layer (Q4_K, Q4_K, Q6_K);
  // packed Q8_0 alone and beside others.
  const std::vector<std::vector<int>> mixes = {{0, 1, 2, 3, 4, 5, 6, 7}, {0, 1}, {5, 5, 7}, {3},
                                               {8}, {8, 4, 8, 1}, {10, 10, 11}, {9, 8, 10, 2}};
  for (Isa isa : SupportedIsas()) {
    IsaGuard guard(isa);
    std::shared_ptr<const uint8_t> packed[4];
    for (int j = 0; j < 4; ++j) {
      packed[j] = cpu::PackWeights(views[8 + j]);
      views[8 + j].packed = packed[j].get();
    }
    for (int64_t m : {1, 5, 40}) {
      std::vector<float> x(m * cols);
      for (float& v : x) v = NonZero(rng);
      for (const auto& mix : mixes) {
        for (int threads : {1, 2, 3}) {
          ThreadPool pool(threads);
          std::vector<std::vector<float>> want, got;
          std::vector<cpu::MatMulTarget> targets;
          for (int i : mix) {
            want.emplace_back(m * views[i].rows, std::numeric_limits<float>::quiet_NaN());
            got.emplace_back(m * views[i].rows, std::numeric_limits<float>::quiet_NaN());
          }
          for (size_t j = 0; j < mix.size(); ++j) {
            cpu::MatMul(views[mix[j]], x.data(), m, want[j].data(), pool);
            targets.push_back(cpu::MatMulTarget{views[mix[j]], got[j].data()});
          }
          cpu::MatMulShared(targets.data(), static_cast<int>(targets.size()), x.data(), m, pool);
          for (size_t j = 0; j < mix.size(); ++j) {
            EXPECT_EQ(std::memcmp(want[j].data(), got[j].data(), want[j].size() * 4), 0)
                << cpu::internal::IsaName(isa) << " m=" << m << " threads=" << threads << " "
                << DTypeName(views[mix[j]].type) << " of a mix of " << mix.size();
            EXPECT_FALSE(std::isnan(got[j][0]));
          }
        }
      }
    }
  }
}

// Hand-made blocks pin the reference decoders to ggml's layouts, so the comparisons
// above cannot pass with a reference and a kernel that share a misreading.
TEST(QuantRefTest, Q8_0AndQ4_0Layouts) {
  uint8_t q8[34];
  StoreF16At(q8, 0.5f);
  for (int j = 0; j < 32; ++j) q8[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j - 16));
  float y[32];
  ref::DequantizeRow(DType::kQ8_0, q8, y, 32);
  EXPECT_EQ(y[0], -8.0f);
  EXPECT_EQ(y[31], 7.5f);

  uint8_t q4[18];
  StoreF16At(q4, 2.0f);
  for (int j = 0; j < 16; ++j) q4[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  ref::DequantizeRow(DType::kQ4_0, q4, y, 32);
  EXPECT_EQ(y[0], -16.0f);  // low nibble 0 -> (0 - 8) * 2, element 0
  EXPECT_EQ(y[15], 14.0f);  // low nibble 15, element 15
  EXPECT_EQ(y[16], 14.0f);  // high nibble of byte 0 is element 16
  EXPECT_EQ(y[31], -16.0f);
}

TEST(QuantRefTest, Q4_KAndQ5_KScalePacking) {
  uint8_t blk[176] = {};
  StoreF16At(blk, 1.0f);      // d
  StoreF16At(blk + 2, 0.5f);  // dmin
  uint8_t* s = blk + 4;
  // Sub-block 1: scale 3 (byte 1 low 6 bits), min 5 (byte 5).
  s[1] = 3;
  s[5] = 5;
  // Sub-block 6: scale = (s[10] & 15) | (s[2] >> 6) << 4 = 2 | 1 << 4 = 18,
  //              min   = (s[10] >> 4) | (s[6] >> 6) << 4 = 1 | 2 << 4 = 33.
  s[2] = 0x40;
  s[6] = 0x80;
  s[10] = 0x12;
  float y[256];
  // Q4_K: qs at 16. Element 40 is sub-block 1 (high nibble of byte 8 of chunk 0).
  blk[16 + 8] = 0x70;
  ref::DequantizeRow(DType::kQ4_K, blk, y, 256);
  EXPECT_EQ(y[40], 3.0f * 7 - 0.5f * 5);
  // Element 200 is chunk 3, low nibble (sub-block 6), byte 200 - 192 = 8.
  blk[16 + 96 + 8] = 0x09;
  ref::DequantizeRow(DType::kQ4_K, blk, y, 256);
  EXPECT_EQ(y[200], 18.0f * 9 - 0.5f * 33);

  // Q5_K: qh at 16, qs at 48. Element 200: qh[8] bit 6 is its fifth bit.
  std::memset(blk + 16, 0, 160);
  blk[48 + 96 + 8] = 0x09;
  blk[16 + 8] = 1 << 6;
  ref::DequantizeRow(DType::kQ5_K, blk, y, 256);
  EXPECT_EQ(y[200], 18.0f * (9 + 16) - 0.5f * 33);
}

TEST(QuantRefTest, Q6_KLayout) {
  uint8_t blk[210] = {};
  StoreF16At(blk + 208, 0.25f);
  auto* sc = reinterpret_cast<int8_t*>(blk + 192);
  for (int i = 0; i < 16; ++i) sc[i] = static_cast<int8_t>(i - 8);
  // Element 128 + 64 + 20 = 212: second half, high nibble of ql[64 + 20], qh[32 + 20]
  // bits 4..5, scale index 8 + 4 + 1 = 13.
  blk[64 + 20] = 0x50;
  blk[128 + 32 + 20] = 0x20;
  float y[256];
  ref::DequantizeRow(DType::kQ6_K, blk, y, 256);
  EXPECT_EQ(y[212], 0.25f * 5 * ((5 | (2 << 4)) - 32));
  EXPECT_EQ(y[0], 0.25f * -8 * -32);
}

TEST(QuantRefTest, QuantizersRoundTrip) {
  std::mt19937 rng(5);
  std::vector<float> x(256), y(256);
  for (float& v : x) v = NonZero(rng);
  std::vector<uint8_t> q(RowBytes(DType::kQ8_0, 256));
  ref::QuantizeRowQ8_0(x.data(), q.data(), 256);
  ref::DequantizeRow(DType::kQ8_0, q.data(), y.data(), 256);
  for (int i = 0; i < 256; ++i) EXPECT_NEAR(y[i], x[i], 1.0f / 127) << i;
  q.resize(RowBytes(DType::kQ4_0, 256));
  ref::QuantizeRowQ4_0(x.data(), q.data(), 256);
  ref::DequantizeRow(DType::kQ4_0, q.data(), y.data(), 256);
  for (int i = 0; i < 256; ++i) EXPECT_NEAR(y[i], x[i], 1.0f / 8 + 1e-3) << i;
}

}  // namespace
}  // namespace mesa
