// The CUDA kernels of ops.h's "elementwise and row ops" and "weights" sections against
// their kernels/ref twins, on fresh random data per check, odd sizes and tails, with
// NaN-poisoned outputs (an element a kernel fails to write fails the comparison, and
// NaN never passes: every check is !(|got - want| <= bound)).
//
// Tolerances:
//   norms, RoPE       1e-5 * max |ref| of the row (the kernels compute in double as the
//                     ref does; only the order of the row sums differs)
//   SwiGLU, GELU      1e-5 * (|ref| + 1e-3 * |linear part|) per element (f32 expf, a few
//                     ulp; see ElementBound)
//   Add, AddRows,     exact (the same single f32 operation as the CPU)
//   Clamp
//   Embed             1e-6 * max |ref| of the row (the decoders are written to be
//                     bit-exact; the margin only absorbs a host compiler's FMA)
//   MatMul            relative to S = sum_c |W[r][c] * x[i][c]| of each output element:
//                     1e-5 S  matrix-vector kernels (m <= 8, every type) and F32 weights
//                             through cuBLAS (f32 in, f32 compute): f32 sums of exact
//                             products, bounded by ~(cols/32 + 5) ulp of S
//                     1e-2 S  the bf16 GEMM (m > 8, other types): x and W rounded to bf16
//                             (each product within 2 * 2^-9 relative, so the sum within
//                             ~3.9e-3 S) plus f32 accumulation
//
// Every test skips, with the reason, where no CUDA device can be used. The argument
// checks, which need no device, are in ops_basic_args_test.cc (a unit test).
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_test_util.h"
#include "kernels/cuda/ops_test_util.h"
#include "kernels/cuda/ops.h"
#include "kernels/matmul.h"
#include "kernels/nn.h"
#include "tests/testing/random_weights.h"

namespace mesa {

// Names the type in the parameterized tests' failure messages.
void PrintTo(DType type, std::ostream* os) { *os << DTypeName(type); }

namespace cuda {
namespace {

namespace ct = ::mesa::cuda::testing;
using ::mesa::cuda::testing::GeluInputs;
using ::mesa::cuda::testing::Normal;
using ::mesa::cuda::testing::RowMaxBound;
using ::mesa::cuda::testing::Within;
using ::mesa::cuda::testing::ElementBound;
using ::mesa::cuda::testing::Exact;
namespace mt = ::mesa::testing;
using ct::DeviceArray;

const DType kWeightTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                              DType::kQ4_0, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

// Row lengths each type allows: odd ones for plain floats, 1 and 3 blocks and a long
// row (4096 + a tail) for the block formats.
std::vector<int64_t> LengthsFor(DType type) {
  const int block = GetDTypeInfo(type).block_elems;
  if (block == 1) return {1, 7, 33, 4096 + 5};
  return {block, 3 * block, 4096 + block};
}



// Every test on the device: a stream and a cuBLAS handle bound to it. Skips (with the
// reason) where no CUDA device can be used.
class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MESA_REQUIRE_GPU();
    MESA_CUDA_OK(cudaStreamCreate(&stream_));
    ASSERT_EQ(cublasCreate(&cublas_), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasSetStream(cublas_, stream_), CUBLAS_STATUS_SUCCESS);
  }
  void TearDown() override {
    if (cublas_) cublasDestroy(cublas_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  // Waits for the stream; the launch status and any error of the run must be success.
  ::testing::AssertionResult Finish(cudaError_t launch) {
    if (launch != cudaSuccess)
      return ::testing::AssertionFailure() << "launch: " << cudaGetErrorString(launch);
    const cudaError_t err = cudaStreamSynchronize(stream_);
    if (err != cudaSuccess)
      return ::testing::AssertionFailure() << "run: " << cudaGetErrorString(err);
    return ::testing::AssertionSuccess();
  }

  // Runs MatMul on a fresh random rows x cols matrix of `type` and m random tokens with
  // `ws_bytes` of workspace (default: MatMulWorkspaceBytes for exactly this shape) and
  // compares with ref::MatMul.
  void CheckMatMul(DType type, int64_t rows, int64_t cols, int64_t m, int64_t ws_bytes = -1) {
    SCOPED_TRACE(std::string(DTypeName(type)) + " rows=" + std::to_string(rows) +
                 " cols=" + std::to_string(cols) + " m=" + std::to_string(m) +
                 " ws=" + std::to_string(ws_bytes));
    const ct::MatMulCase mc = ct::MakeMatMulCase(type, rows, cols, m, rng_);
    const std::vector<uint8_t>& wdata = mc.w;
    const std::vector<float>& x = mc.x;
    const std::vector<float>& want = mc.want;
    const std::vector<double>& s = mc.abs_sum;
    const bool f32_path = m <= 8 || type == DType::kF32;
    const double tol = f32_path ? 1e-5 : 1e-2;
    std::vector<double> bound(s.size());
    for (size_t i = 0; i < s.size(); ++i) bound[i] = tol * s[i];

    const size_t bytes =
        ws_bytes >= 0 ? static_cast<size_t>(ws_bytes) : MatMulWorkspaceBytes(rows, cols, m);
    DeviceArray<uint8_t> dw(wdata), ws_buf(bytes);
    DeviceArray<float> dx(x), dout(m * rows);
    dout.Poison();
    const DeviceWeight w{type, rows, cols, dw.ptr};
    const MatMulWorkspace ws{cublas_, bytes ? ws_buf.ptr : nullptr, bytes};
    ASSERT_TRUE(Finish(MatMul(w, dx.ptr, m, dout.ptr, ws, stream_)));
    EXPECT_TRUE(Within(dout.ToHost(), want, bound)) << "tolerance " << tol << " * sum|w x|";
  }

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::mt19937 rng_{20240607};
};

// --- norms ---

TEST_F(CudaOpsTest, RmsNormMatchesRef) {
  for (int64_t d : {1, 7, 33, 4096 + 5}) {
    for (int64_t n : {1, 3, 17}) {
      for (bool with_w : {false, true}) {
        for (bool in_place : {false, true}) {
          SCOPED_TRACE("d=" + std::to_string(d) + " n=" + std::to_string(n) +
                       " w=" + std::to_string(with_w) + " in_place=" + std::to_string(in_place));
          const std::vector<float> x = Normal(rng_, n * d, 2.0f);
          const std::vector<float> w = Normal(rng_, d);
          const float eps = 1e-5f;
          std::vector<float> want(n * d);
          for (int64_t i = 0; i < n; ++i)
            ref::RmsNorm(x.data() + i * d, with_w ? w.data() : nullptr, eps, d,
                         want.data() + i * d);
          DeviceArray<float> dx(x), dw(w), dout(n * d);
          dout.Poison();
          float* out = in_place ? dx.ptr : dout.ptr;
          ASSERT_TRUE(Finish(RmsNorm(dx.ptr, with_w ? dw.ptr : nullptr, eps, n, d, out, stream_)));
          const std::vector<float> got = in_place ? dx.ToHost() : dout.ToHost();
          EXPECT_TRUE(Within(got, want, RowMaxBound(want, d, 1e-5)));
        }
      }
    }
  }
}

TEST_F(CudaOpsTest, LayerNormMatchesRef) {
  for (int64_t d : {1, 7, 33, 4096 + 5}) {
    for (int64_t n : {1, 3, 17}) {
      for (int variant = 0; variant < 3; ++variant) {  // no w/b; w only; w and b
        SCOPED_TRACE("d=" + std::to_string(d) + " n=" + std::to_string(n) +
                     " variant=" + std::to_string(variant));
        const std::vector<float> x = Normal(rng_, n * d, 2.0f, 3.0f);  // a mean to remove
        const std::vector<float> w = Normal(rng_, d), b = Normal(rng_, d);
        const float* hw = variant >= 1 ? w.data() : nullptr;
        const float* hb = variant >= 2 ? b.data() : nullptr;
        const float eps = 1e-5f;
        std::vector<float> want(n * d);
        for (int64_t i = 0; i < n; ++i)
          ref::LayerNorm(x.data() + i * d, hw, hb, eps, d, want.data() + i * d);
        DeviceArray<float> dx(x), dw(w), db(b), dout(n * d);
        dout.Poison();
        ASSERT_TRUE(Finish(LayerNorm(dx.ptr, hw ? dw.ptr : nullptr, hb ? db.ptr : nullptr, eps, n,
                                     d, dout.ptr, stream_)));
        // d = 1 normalizes to exactly 0 (+ b): a row max of 0 would allow no error at all,
        // which the kernel meets (x - mean is exactly 0).
        EXPECT_TRUE(Within(dout.ToHost(), want, RowMaxBound(want, d, 1e-5)));
      }
    }
  }
}

// --- residual, bias, activations, clamp ---

TEST_F(CudaOpsTest, AddAndAddRowsAreExact) {
  for (int64_t width : {1, 7, 33, 4096 + 5}) {
    for (int64_t n : {1, 3, 17}) {
      SCOPED_TRACE("width=" + std::to_string(width) + " n=" + std::to_string(n));
      const std::vector<float> bias = Normal(rng_, width);
      const std::vector<float> y0 = Normal(rng_, n * width);
      const std::vector<float> x = Normal(rng_, n * width);
      std::vector<float> want_rows = y0, want_add = y0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < width; ++c) want_rows[i * width + c] += bias[c];
      for (int64_t i = 0; i < n * width; ++i) want_add[i] += x[i];
      DeviceArray<float> dbias(bias), dx(x), dy1(y0), dy2(y0);
      ASSERT_TRUE(Finish(AddRows(dbias.ptr, width, n, dy1.ptr, stream_)));
      ASSERT_TRUE(Finish(Add(dx.ptr, n * width, dy2.ptr, stream_)));
      EXPECT_TRUE(Within(dy1.ToHost(), want_rows, Exact(want_rows.size())));
      EXPECT_TRUE(Within(dy2.ToHost(), want_add, Exact(want_add.size())));
    }
  }
}

TEST_F(CudaOpsTest, SwiGluMatchesRef) {
  for (int64_t n : {1, 7, 33, 4096 + 5, 300001}) {
    for (bool alias : {false, true}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " alias=" + std::to_string(alias));
      const std::vector<float> gate = Normal(rng_, n, 4.0f), up = Normal(rng_, n, 2.0f);
      std::vector<float> want(n);
      std::vector<double> scale(n);
      for (int64_t i = 0; i < n; ++i) {
        want[i] = ref::Silu(gate[i]) * up[i];
        scale[i] = std::fabs(static_cast<double>(gate[i]) * up[i]);
      }
      DeviceArray<float> dgate(gate), dup(up), dout(n);
      dout.Poison();
      float* out = alias ? dgate.ptr : dout.ptr;
      ASSERT_TRUE(Finish(SwiGlu(dgate.ptr, dup.ptr, n, out, stream_)));
      EXPECT_TRUE(
          Within(alias ? dgate.ToHost() : dout.ToHost(), want, ElementBound(want, scale, 1e-5)));
    }
  }
}

TEST_F(CudaOpsTest, GeluMatchesRef) {
  for (int64_t n : {1, 7, 33, 4096 + 5, 300001}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::vector<float> x = GeluInputs(rng_, n);  // both tails, zero
    std::vector<float> want(n);
    std::vector<double> scale(n);
    for (int64_t i = 0; i < n; ++i) {
      want[i] = ref::Gelu(x[i]);
      scale[i] = std::fabs(static_cast<double>(x[i]));
    }
    DeviceArray<float> dx(x), dout(n);
    dout.Poison();
    ASSERT_TRUE(Finish(Gelu(dx.ptr, n, dout.ptr, stream_)));
    EXPECT_TRUE(Within(dout.ToHost(), want, ElementBound(want, scale, 1e-5)));
  }
}

TEST_F(CudaOpsTest, ClampIsStdClamp) {
  for (int64_t n : {1, 7, 33, 4096 + 5}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::vector<float> x = Normal(rng_, n, 6.0f);
    const float limit = 4.5f;
    if (n > 4) {
      x[0] = std::numeric_limits<float>::infinity();
      x[1] = -std::numeric_limits<float>::infinity();
      x[2] = limit;
      x[3] = std::numeric_limits<float>::quiet_NaN();
    }
    DeviceArray<float> dx(x);
    ASSERT_TRUE(Finish(Clamp(dx.ptr, n, limit, stream_)));
    const std::vector<float> got = dx.ToHost();
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(x[i])) {
        EXPECT_TRUE(std::isnan(got[i])) << i;  // as std::clamp: NaN passes through
      } else {
        EXPECT_EQ(got[i], std::clamp(x[i], -limit, limit)) << i;
      }
    }
  }
}

// --- RoPE ---

struct RopeCase {
  int64_t head_dim, rope_dims;
  bool neox;
  float base, scale;
};

TEST_F(CudaOpsTest, RopeMatchesRef) {
  const RopeCase cases[] = {
      {64, 64, false, 10000.0f, 1.0f},    // Llama style, every dim rotated
      {128, 128, true, 500000.0f, 1.0f},  // NeoX / Qwen2 style
      {64, 32, false, 10000.0f, 1.0f},    // half the dims pass through
      {96, 64, true, 10000.0f, 0.25f},    // NeoX with pass-through and linear scaling
      {6, 4, false, 10000.0f, 1.0f},      // tiny head
      {128, 128, false, 1000000.0f, 0.125f},
  };
  for (const RopeCase& rc : cases) {
    for (int64_t n : {1, 3, 17}) {
      for (int64_t n_heads : {1, 3, 8}) {
        SCOPED_TRACE("head_dim=" + std::to_string(rc.head_dim) +
                     " rope_dims=" + std::to_string(rc.rope_dims) +
                     " neox=" + std::to_string(rc.neox) + " scale=" + std::to_string(rc.scale) +
                     " n=" + std::to_string(n) + " heads=" + std::to_string(n_heads));
        RopeParams p;
        p.head_dim = rc.head_dim;
        p.rope_dims = rc.rope_dims;
        p.neox = rc.neox;
        p.freq_base = rc.base;
        p.freq_scale = rc.scale;
        // Positions up to 300k, with 0 and the long-context landmarks among them.
        std::uniform_int_distribution<int64_t> any_pos(0, 300000);
        std::vector<int64_t> pos(n);
        const int64_t fixed[] = {0, 131072, 262143};
        for (int64_t i = 0; i < n; ++i) pos[i] = i < 3 && n > 1 ? fixed[i] : any_pos(rng_);
        const int64_t row = n_heads * rc.head_dim;
        const std::vector<float> x = Normal(rng_, n * row);
        std::vector<float> want = x;
        for (int64_t i = 0; i < n; ++i)
          ref::Rope(p, static_cast<double>(pos[i]), n_heads, want.data() + i * row);
        DeviceArray<float> dx(x);
        DeviceArray<int64_t> dpos(pos);
        ASSERT_TRUE(Finish(Rope(p, dpos.ptr, n, n_heads, dx.ptr, stream_)));
        const std::vector<float> got = dx.ToHost();
        EXPECT_TRUE(Within(got, want, RowMaxBound(want, row, 1e-5)));
        // Dims past rope_dims are untouched, bit for bit.
        for (int64_t i = 0; i < n * n_heads; ++i)
          for (int64_t c = rc.rope_dims; c < rc.head_dim; ++c)
            ASSERT_EQ(got[i * rc.head_dim + c], x[i * rc.head_dim + c]);
      }
    }
  }
}

// --- embedding ---

TEST_F(CudaOpsTest, EmbedMatchesRefForEveryType) {
  const int64_t vocab = 13;
  for (DType type : kWeightTypes) {
    for (int64_t d : LengthsFor(type)) {
      for (int64_t n : {1, 3, 17}) {
        SCOPED_TRACE(std::string(DTypeName(type)) + " d=" + std::to_string(d) +
                     " n=" + std::to_string(n));
        const std::vector<uint8_t> table = mt::RandomWeights(type, vocab, d, rng_);
        std::uniform_int_distribution<int32_t> any_tok(0, vocab - 1);
        std::vector<int32_t> tokens(n);
        for (int64_t i = 0; i < n; ++i) tokens[i] = any_tok(rng_);
        if (n > 1) {  // the first and last rows of the table
          tokens[0] = 0;
          tokens[1] = vocab - 1;
        }
        const WeightView view{type, vocab, d, table.data()};
        std::vector<float> want(n * d);
        for (int64_t i = 0; i < n; ++i)
          ref::DequantizeRow(type, view.row(tokens[i]), want.data() + i * d, d);
        DeviceArray<uint8_t> dtable(table);
        DeviceArray<int32_t> dtok(tokens);
        DeviceArray<float> dout(n * d);
        dout.Poison();
        ASSERT_TRUE(Finish(Embed(type, dtable.ptr, dtok.ptr, n, d, dout.ptr, stream_)));
        EXPECT_TRUE(Within(dout.ToHost(), want, RowMaxBound(want, d, 1e-6)));
      }
    }
  }
}

// --- matrix products ---

class MatMulTest : public CudaOpsTest, public ::testing::WithParamInterface<DType> {};

TEST_P(MatMulTest, MatchesRefAtEveryTokenCount) {
  const DType type = GetParam();
  for (int64_t cols : LengthsFor(type)) {
    for (int64_t m : {1, 3, 8, 9, 64, 200}) CheckMatMul(type, 37, cols, m);
  }
  // A single output row, both paths.
  CheckMatMul(type, 1, LengthsFor(type).back(), 1);
  CheckMatMul(type, 1, LengthsFor(type).back(), 9);
}

// The workspace bounds the dequantized tile: rows in tiles of 128 (rounded) and of 50
// (fewer than 128 rows fit), the last one partial.
TEST_P(MatMulTest, TilesTheRowsToTheWorkspace) {
  const DType type = GetParam();
  const int64_t cols = LengthsFor(type)[1], m = 20, rows = 300;
  const int64_t x_bytes = (m * cols * 2 + 255) / 256 * 256;
  for (int64_t tile_rows : {128, 50})
    CheckMatMul(type, rows, cols, m, x_bytes + tile_rows * cols * 2 + cols);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatMulTest, ::testing::ValuesIn(kWeightTypes),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// More tokens than one bf16 chunk of x (2^24 elements = 4096 tokens of 4096): two rounds.
TEST_F(CudaOpsTest, MatMulChunksLongPrefills) { CheckMatMul(DType::kQ8_0, 3, 4096, 4100); }

TEST_F(CudaOpsTest, MatMulRefusesAMissingOrSmallWorkspace) {
  const int64_t rows = 5, cols = 64, m = 9;
  const std::vector<uint8_t> wdata = mt::RandomWeights(DType::kQ8_0, rows, cols, rng_);
  DeviceArray<uint8_t> dw(wdata), small(64);
  DeviceArray<float> dx(m * cols), dout(m * rows);
  const DeviceWeight w{DType::kQ8_0, rows, cols, dw.ptr};
  EXPECT_EQ(MatMul(w, dx.ptr, m, dout.ptr, MatMulWorkspace{cublas_, nullptr, 0}, stream_),
            cudaErrorInvalidValue);
  EXPECT_EQ(MatMul(w, dx.ptr, m, dout.ptr, MatMulWorkspace{cublas_, small.ptr, 64}, stream_),
            cudaErrorInvalidValue);
  // A handle bound to another stream than the kernels': refused, not raced.
  cudaStream_t other = nullptr;
  MESA_CUDA_OK(cudaStreamCreate(&other));
  ASSERT_EQ(cublasSetStream(cublas_, other), CUBLAS_STATUS_SUCCESS);
  const size_t bytes = MatMulWorkspaceBytes(rows, cols, m);
  DeviceArray<uint8_t> ws_buf(bytes);
  EXPECT_EQ(MatMul(w, dx.ptr, m, dout.ptr, MatMulWorkspace{cublas_, ws_buf.ptr, bytes}, stream_),
            cudaErrorInvalidValue);
  ASSERT_EQ(cublasSetStream(cublas_, stream_), CUBLAS_STATUS_SUCCESS);
  cudaStreamDestroy(other);
}

}  // namespace
}  // namespace cuda
}  // namespace mesa
