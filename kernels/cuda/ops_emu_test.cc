// The CUDA kernels of ops_basic.cu and ops_kv.cu (ops_basic_kernels.cuh,
// ops_kv_kernels.cuh) run on the CPU under the fiber emulator (cuda_emu.h) and compared
// with their kernels/ref twins, with the launchers' own grids and with a one-block grid
// (every grid-stride loop taken), on fresh random data of odd sizes, outputs poisoned
// with NaN, at the tolerances of ops_basic_test.cc (which runs the same kernels on a GPU):
//   norms, RoPE   1e-5 * max |ref| of the row
//   SwiGLU, GELU  1e-5 * (|ref| + 1e-3 * |linear part|)
//   Add, AddRows, Clamp, StoreRows (f32)  exact
//   Embed         1e-6 * max |ref| of the row
//   MatMul (matrix-vector kernel, m <= 8)  1e-5 * sum_c |W[r][c] x[i][c]|
// The host compiler's libm stands in for CUDA's (expf, sincos, pow): a kernel's indexing,
// reductions and synchronization are checked here, the device math only on a GPU.
// MESA_CUDA_HOST_SIM is defined by the build (dequant.cuh's host decoders).
#include "kernels/cuda/cuda_emu.h"  // the CUDA names, before the kernels

#include "kernels/cuda/ops_basic_kernels.cuh"
#include "kernels/cuda/ops_kv_kernels.cuh"
#include "kernels/cuda/matvec_kernel.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/ops_test_util.h"
#include "kernels/matmul.h"
#include "kernels/nn.h"
#include "tests/testing/random_weights.h"

namespace mesa::cuda {
namespace {

using namespace basic_kernels;  // NOLINT
using namespace kv_kernels;     // NOLINT
using namespace matvec_kernels;  // NOLINT
using ::mesa::cuda::testing::GeluInputs;
using ::mesa::cuda::testing::Normal;
using ::mesa::cuda::testing::RowMaxBound;
using ::mesa::cuda::testing::Within;
using ::mesa::cuda::testing::ElementBound;
using ::mesa::cuda::testing::Exact;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
const int64_t kDims[] = {1, 7, 33, 300};
const int64_t kRows[] = {1, 3, 5};


// The launcher's grid, then a single block (grid-stride over everything).
std::vector<unsigned> Grids(unsigned launcher) {
  return launcher == 1 ? std::vector<unsigned>{1} : std::vector<unsigned>{launcher, 1};
}

std::string Trace(int64_t d, int64_t n, unsigned grid) {
  return "d=" + std::to_string(d) + " n=" + std::to_string(n) + " grid=" + std::to_string(grid);
}

class CudaOpsEmu : public ::testing::Test {
 protected:
  std::mt19937 rng_{20261130};
};

TEST_F(CudaOpsEmu, RmsNorm) {
  for (int64_t d : kDims)
    for (int64_t n : kRows)
      for (unsigned grid : Grids(RowGrid(n)))
        for (bool with_w : {false, true}) {
          const bool in_place = with_w;
            SCOPED_TRACE(Trace(d, n, grid) + " w=" + std::to_string(with_w) +
                         " in_place=" + std::to_string(in_place));
            std::vector<float> x = Normal(rng_, n * d, 2.0f);
            const std::vector<float> w = Normal(rng_, d);
            const float eps = 1e-5f;
            std::vector<float> want(n * d), out(n * d, kNaN);
            for (int64_t i = 0; i < n; ++i)
              ref::RmsNorm(x.data() + i * d, with_w ? w.data() : nullptr, eps, d,
                           want.data() + i * d);
            float* o = in_place ? x.data() : out.data();
            mesa_emu::Launch(dim3(grid), kThreads, 0, [&] {
              RmsNormKernel(x.data(), with_w ? w.data() : nullptr, eps, n, d, o);
            });
            EXPECT_TRUE(Within(in_place ? x : out, want, RowMaxBound(want, d, 1e-5)));
          }
}

TEST_F(CudaOpsEmu, LayerNorm) {
  for (int64_t d : kDims)
    for (int64_t n : kRows)
      for (unsigned grid : Grids(RowGrid(n)))
        for (int variant = 0; variant < 3; ++variant) {  // no w/b; w only; w and b
          SCOPED_TRACE(Trace(d, n, grid) + " variant=" + std::to_string(variant));
          const std::vector<float> x = Normal(rng_, n * d, 2.0f, 3.0f);
          const std::vector<float> w = Normal(rng_, d), b = Normal(rng_, d);
          const float* hw = variant >= 1 ? w.data() : nullptr;
          const float* hb = variant >= 2 ? b.data() : nullptr;
          const float eps = 1e-5f;
          std::vector<float> want(n * d), out(n * d, kNaN);
          for (int64_t i = 0; i < n; ++i)
            ref::LayerNorm(x.data() + i * d, hw, hb, eps, d, want.data() + i * d);
          mesa_emu::Launch(dim3(grid), kThreads, 0,
                           [&] { LayerNormKernel(x.data(), hw, hb, eps, n, d, out.data()); });
          EXPECT_TRUE(Within(out, want, RowMaxBound(want, d, 1e-5)));
        }
}

TEST_F(CudaOpsEmu, AddRowsAndAdd) {
  for (int64_t d : kDims)
    for (int64_t n : kRows) {
      const int64_t total = n * d;
      for (unsigned grid : Grids(GridFor(total))) {
        SCOPED_TRACE(Trace(d, n, grid));
        const std::vector<float> bias = Normal(rng_, d), x = Normal(rng_, total);
        const std::vector<float> y0 = Normal(rng_, total);
        std::vector<float> want_rows = y0, want_add = y0, y1 = y0, y2 = y0;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t c = 0; c < d; ++c) want_rows[i * d + c] += bias[c];
        for (int64_t i = 0; i < total; ++i) want_add[i] += x[i];
        mesa_emu::Launch(dim3(grid), kThreads, 0,
                         [&] { AddRowsKernel(bias.data(), d, total, y1.data()); });
        mesa_emu::Launch(dim3(grid), kThreads, 0, [&] { AddKernel(x.data(), total, y2.data()); });
        EXPECT_TRUE(Within(y1, want_rows, Exact(total)));
        EXPECT_TRUE(Within(y2, want_add, Exact(total)));
      }
    }
}

TEST_F(CudaOpsEmu, SwiGluAndGelu) {
  for (int64_t d : kDims)
    for (int64_t n : kRows) {
      const int64_t total = n * d;
      for (unsigned grid : Grids(GridFor(total)))
        for (bool alias : {false, true}) {
          SCOPED_TRACE(Trace(d, n, grid) + " alias=" + std::to_string(alias));
          std::vector<float> gate = Normal(rng_, total, 4.0f);
          const std::vector<float> up = Normal(rng_, total, 2.0f);
          std::vector<float> want(total), out(total, kNaN);
          std::vector<double> scale(total);
          for (int64_t i = 0; i < total; ++i) {
            want[i] = ref::Silu(gate[i]) * up[i];
            scale[i] = std::fabs(static_cast<double>(gate[i]) * up[i]);
          }
          float* o = alias ? gate.data() : out.data();
          mesa_emu::Launch(dim3(grid), kThreads, 0,
                           [&] { SwiGluKernel(gate.data(), up.data(), total, o); });
          EXPECT_TRUE(Within(alias ? gate : out, want, ElementBound(want, scale, 1e-5)));

          std::vector<float> x = GeluInputs(rng_, total);  // both tails, zero
          std::vector<float> gwant(total), gout(total, kNaN);
          for (int64_t i = 0; i < total; ++i) {
            gwant[i] = ref::Gelu(x[i]);
            scale[i] = std::fabs(static_cast<double>(x[i]));
          }
          mesa_emu::Launch(dim3(grid), kThreads, 0,
                           [&] { GeluKernel(x.data(), total, gout.data()); });
          EXPECT_TRUE(Within(gout, gwant, ElementBound(gwant, scale, 1e-5)));
        }
    }
}

TEST_F(CudaOpsEmu, Clamp) {
  for (int64_t d : kDims)
    for (int64_t n : kRows) {
      const int64_t total = n * d;
      for (unsigned grid : Grids(GridFor(total))) {
        SCOPED_TRACE(Trace(d, n, grid));
        std::vector<float> x = Normal(rng_, total, 6.0f);
        const float limit = 4.5f;
        if (total > 4) {
          x[0] = std::numeric_limits<float>::infinity();
          x[1] = -std::numeric_limits<float>::infinity();
          x[2] = limit;
          x[3] = kNaN;
        }
        std::vector<float> got = x;
        mesa_emu::Launch(dim3(grid), kThreads, 0, [&] { ClampKernel(got.data(), total, limit); });
        for (int64_t i = 0; i < total; ++i) {
          if (std::isnan(x[i])) {
            EXPECT_TRUE(std::isnan(got[i])) << i;
          } else {
            EXPECT_EQ(got[i], std::clamp(x[i], -limit, limit)) << i;
          }
        }
      }
    }
}

TEST_F(CudaOpsEmu, Rope) {
  struct RopeCase {
    int64_t head_dim, rope_dims;
    bool neox;
    float base, scale;
  };
  const RopeCase cases[] = {
      {64, 64, false, 10000.0f, 1.0f},  {128, 128, true, 500000.0f, 1.0f},
      {64, 32, false, 10000.0f, 1.0f},  {96, 64, true, 10000.0f, 0.25f},
      {6, 4, false, 10000.0f, 1.0f},    {7, 5, true, 10000.0f, 1.0f},  // odd: one dim passes
  };
  for (const RopeCase& rc : cases)
    for (int64_t n : kRows)
      for (int64_t n_heads : {1, 3}) {
        RopeParams p;
        p.head_dim = rc.head_dim;
        p.rope_dims = rc.rope_dims;
        p.neox = rc.neox;
        p.freq_base = rc.base;
        p.freq_scale = rc.scale;
        const int64_t half = p.rope_dims / 2;
        for (unsigned grid : Grids(GridFor(n * half))) {
          SCOPED_TRACE("head_dim=" + std::to_string(rc.head_dim) + " rope_dims=" +
                       std::to_string(rc.rope_dims) + " neox=" + std::to_string(rc.neox) +
                       " heads=" + std::to_string(n_heads) + " " + Trace(0, n, grid));
          std::uniform_int_distribution<int64_t> any_pos(0, 300000);
          std::vector<int64_t> pos(n);
          const int64_t fixed[] = {0, 131072, 262143};
          for (int64_t i = 0; i < n; ++i) pos[i] = i < 3 && n > 1 ? fixed[i] : any_pos(rng_);
          const int64_t row = n_heads * rc.head_dim;
          const std::vector<float> x = Normal(rng_, n * row);
          std::vector<float> want = x, got = x;
          for (int64_t i = 0; i < n; ++i)
            ref::Rope(p, static_cast<double>(pos[i]), n_heads, want.data() + i * row);
          mesa_emu::Launch(dim3(grid), kThreads, 0,
                           [&] { RopeKernel(p, pos.data(), n, n_heads, got.data()); });
          EXPECT_TRUE(Within(got, want, RowMaxBound(want, row, 1e-5)));
          for (int64_t i = 0; i < n * n_heads; ++i)
            for (int64_t c = rc.rope_dims; c < rc.head_dim; ++c)
              ASSERT_EQ(got[i * rc.head_dim + c], x[i * rc.head_dim + c]);
        }
      }
}

template <DType T>
void RunEmbed(const uint8_t* table, const int32_t* tokens, int64_t n, int64_t d, unsigned grid,
              float* out) {
  mesa_emu::Launch(dim3(grid), kThreads, 0,
                   [&] { EmbedKernel<T>(table, RowBytes(T, d), tokens, n, d, out); });
}

TEST_F(CudaOpsEmu, EmbedEveryType) {
  const int64_t vocab = 13;
  const DType types[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                         DType::kQ4_0, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
  for (DType type : types) {
    const int block = GetDTypeInfo(type).block_elems;
    std::vector<int64_t> dims;
    if (block == 1) dims.assign(std::begin(kDims), std::end(kDims));
    else dims = {block, 3 * block};
    for (int64_t d : dims)
      for (int64_t n : kRows)
        for (unsigned grid : Grids(RowGrid(n))) {
          SCOPED_TRACE(std::string(DTypeName(type)) + " " + Trace(d, n, grid));
          const std::vector<uint8_t> table = mesa::testing::RandomWeights(type, vocab, d, rng_);
          std::uniform_int_distribution<int32_t> any_tok(0, vocab - 1);
          std::vector<int32_t> tokens(n);
          for (int64_t i = 0; i < n; ++i) tokens[i] = any_tok(rng_);
          if (n > 1) {
            tokens[0] = 0;
            tokens[1] = vocab - 1;
          }
          const WeightView view{type, vocab, d, table.data()};
          std::vector<float> want(n * d), out(n * d, kNaN);
          for (int64_t i = 0; i < n; ++i)
            ref::DequantizeRow(type, view.row(tokens[i]), want.data() + i * d, d);
          const uint8_t* t = table.data();
          switch (type) {
            case DType::kF32: RunEmbed<DType::kF32>(t, tokens.data(), n, d, grid, out.data()); break;
            case DType::kF16: RunEmbed<DType::kF16>(t, tokens.data(), n, d, grid, out.data()); break;
            case DType::kBF16: RunEmbed<DType::kBF16>(t, tokens.data(), n, d, grid, out.data()); break;
            case DType::kQ8_0: RunEmbed<DType::kQ8_0>(t, tokens.data(), n, d, grid, out.data()); break;
            case DType::kQ4_0: RunEmbed<DType::kQ4_0>(t, tokens.data(), n, d, grid, out.data()); break;
            case DType::kQ4_K: RunEmbed<DType::kQ4_K>(t, tokens.data(), n, d, grid, out.data()); break;
            case DType::kQ5_K: RunEmbed<DType::kQ5_K>(t, tokens.data(), n, d, grid, out.data()); break;
            case DType::kQ6_K: RunEmbed<DType::kQ6_K>(t, tokens.data(), n, d, grid, out.data()); break;
            default: FAIL() << "type";
          }
          EXPECT_TRUE(Within(out, want, RowMaxBound(want, d, 1e-6)));
        }
  }
}

// f32 rows into a strided cache (f16/bf16 conversions exist only under nvcc).
TEST_F(CudaOpsEmu, StoreRowsF32) {
  for (int64_t width : {1, 7, 33, 300})
    for (int64_t rows : kRows) {
      dim3 grid;
      ASSERT_TRUE(StoreRowsGrid(width, rows, &grid));
      for (bool narrow : {false, true}) {
        if (narrow) grid = dim3(1, grid.y, grid.z);  // grid-stride over columns
        SCOPED_TRACE(Trace(width, rows, grid.x));
        const int64_t src_stride = width + 3, dst_stride = width + 5;
        const std::vector<float> src = Normal(rng_, rows * src_stride);
        std::vector<float> dst(rows * dst_stride, kNaN), want = dst;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < width; ++c) want[r * dst_stride + c] = src[r * src_stride + c];
        mesa_emu::Launch(grid, kStoreThreads, 0, [&] {
          StoreRowsKernel<float>(dst.data(), dst_stride, src.data(), src_stride, width, rows);
        });
        for (int64_t i = 0; i < rows * dst_stride; ++i) {
          if (i % dst_stride >= width) {
            EXPECT_TRUE(std::isnan(dst[i])) << "wrote past the row at " << i;
          } else {
            EXPECT_EQ(dst[i], want[i]) << i;
          }
        }
      }
    }
}

// The launcher's template choice for m tokens (m <= 8), one warp per output row.
template <DType T>
void RunMatVec(const uint8_t* w, int64_t rows, int64_t cols, const float* x, int m, float* out) {
  const dim3 grid(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const int64_t row_bytes = RowBytes(T, cols);
  mesa_emu::Launch(grid, kWarpsPerBlock * 32, 0, [&] {
    if (m == 1) MatVecKernel<T, 1>(w, rows, cols, row_bytes, x, m, out);
    else if (m == 2) MatVecKernel<T, 2>(w, rows, cols, row_bytes, x, m, out);
    else if (m <= 4) MatVecKernel<T, 4>(w, rows, cols, row_bytes, x, m, out);
    else MatVecKernel<T, 8>(w, rows, cols, row_bytes, x, m, out);
  });
}

TEST_F(CudaOpsEmu, MatVecEveryType) {
  const DType types[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                         DType::kQ4_0, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
  for (DType type : types) {
    const int block = GetDTypeInfo(type).block_elems;
    std::vector<int64_t> col_set;
    if (block == 1) col_set = {1, 7, 33, 300};
    else col_set = {block, 3 * block};
    for (int64_t cols : col_set)
      for (int64_t rows : {1, 9})  // a partial block of warps
        for (int m : {1, 2, 3, 5}) {  // every template (M = 1, 2, 4, 8), m < M
          SCOPED_TRACE(std::string(DTypeName(type)) + " rows=" + std::to_string(rows) +
                       " cols=" + std::to_string(cols) + " m=" + std::to_string(m));
          const testing::MatMulCase mc = testing::MakeMatMulCase(type, rows, cols, m, rng_);
          const std::vector<float>& x = mc.x;
          const std::vector<float>& want = mc.want;
          std::vector<float> out(m * rows, kNaN);
          std::vector<double> bound(mc.abs_sum.size());
          for (size_t i = 0; i < bound.size(); ++i) bound[i] = 1e-5 * mc.abs_sum[i];
          const uint8_t* w = mc.w.data();
          float* o = out.data();
          switch (type) {
            case DType::kF32: RunMatVec<DType::kF32>(w, rows, cols, x.data(), m, o); break;
            case DType::kF16: RunMatVec<DType::kF16>(w, rows, cols, x.data(), m, o); break;
            case DType::kBF16: RunMatVec<DType::kBF16>(w, rows, cols, x.data(), m, o); break;
            case DType::kQ8_0: RunMatVec<DType::kQ8_0>(w, rows, cols, x.data(), m, o); break;
            case DType::kQ4_0: RunMatVec<DType::kQ4_0>(w, rows, cols, x.data(), m, o); break;
            case DType::kQ4_K: RunMatVec<DType::kQ4_K>(w, rows, cols, x.data(), m, o); break;
            case DType::kQ5_K: RunMatVec<DType::kQ5_K>(w, rows, cols, x.data(), m, o); break;
            case DType::kQ6_K: RunMatVec<DType::kQ6_K>(w, rows, cols, x.data(), m, o); break;
            default: FAIL() << "type";
          }
          EXPECT_TRUE(Within(out, want, bound));
        }
  }
}

}  // namespace
}  // namespace mesa::cuda
