// Benchmarks cpu::MatMul for every weight type at 4096 x 4096: decode (m = 1, memory
// bound: watch weight_GB/s) and prefill (m = 128, compute bound: watch GFLOP/s).
// Threads default to 2; set MESA_BENCH_THREADS to change, and MESA_CPU_ISA=avx2 to
// measure the AVX2 kernels on an AVX-512 machine. Numbers on a shared machine
// are noisy: compare runs taken back to back.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <memory>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/matmul.h"
#include "tests/testing/random_weights.h"
#include "kernels/ref/quant_ref.h"

namespace mesa {
namespace {

int BenchThreads() {
  const char* env = std::getenv("MESA_BENCH_THREADS");
  return env != nullptr ? std::atoi(env) : 2;
}

// Random weights of the right format (tests/testing): values do not matter for speed,
// only validity of the f16 scales (random bytes could be NaN and slow paths down).
std::vector<uint8_t> MakeWeights(DType type, int64_t rows, int64_t cols) {
  std::mt19937 rng(42);
  return testing::RandomWeights(type, rows, cols, rng);
}

void BM_MatMul(benchmark::State& state, DType type) {
  const int64_t m = state.range(0);
  const int64_t rows = 4096, cols = 4096;
  const std::vector<uint8_t> wdata = MakeWeights(type, rows, cols);
  const WeightView w{type, rows, cols, wdata.data()};
  std::vector<float> x(m * cols), out(m * rows);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (float& v : x) v = u(rng);
  ThreadPool pool(BenchThreads());
  for (auto _ : state) {
    cpu::MatMul(w, x.data(), m, out.data(), pool);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * m * rows * cols * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["weight_GB/s"] = benchmark::Counter(
      static_cast<double>(wdata.size()) * iters / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(DTypeName(type)) + " threads=" + std::to_string(pool.size()));
}

#define MESA_MATMUL_BENCH(name, type)      \
  BENCHMARK_CAPTURE(BM_MatMul, name, type) \
      ->Arg(1)                             \
      ->Arg(128)                           \
      ->UseRealTime()                      \
      ->Unit(benchmark::kMillisecond)

// The matrices of one forward pass (m = 1: decode; 128, 512, 2048: prefill chunks, whose
// rate must not fall with m) of the ~86M-parameter llama of compare_llamacpp.sh
// (12 layers of q, k, v, o: 768x768; gate, up: 2048x768; down: 768x2048), all in one
// type. The set is larger than L3 (except in Q4_K), so decode (m = 1) streams from
// DRAM as in `mesa bench`, unlike the 4096 x 4096 cases above which mostly fit L3.
void BM_LlamaLayers(benchmark::State& state, DType type, bool pack) {
  const int64_t m = state.range(0);
  constexpr int kLayers = 12;
  const int64_t shapes[7][2] = {{768, 768}, {768, 768}, {768, 768}, {768, 768},
                                {2048, 768}, {2048, 768}, {768, 2048}};
  std::vector<std::vector<uint8_t>> data;
  std::vector<WeightView> views;
  std::vector<std::shared_ptr<const uint8_t>> packed;
  size_t bytes = 0;
  for (int l = 0; l < kLayers; ++l) {
    for (const auto& s : shapes) {
      data.push_back(MakeWeights(type, s[0], s[1]));
      views.push_back(WeightView{type, s[0], s[1], data.back().data()});
      if (pack && (packed.emplace_back(cpu::PackWeights(views.back())))) views.back().packed = packed.back().get();
      bytes += data.back().size();
    }
  }
  std::vector<float> x(m * 2048), out(3 * m * 2048);
  float* o[3] = {out.data(), out.data() + m * 2048, out.data() + 2 * m * 2048};
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (float& v : x) v = u(rng);
  ThreadPool pool(BenchThreads());
  for (auto _ : state) {
    // As ModelRunner::Layer: q/k/v and gate/up each in one MatMulShared.
    for (int l = 0; l < kLayers; ++l) {
      const WeightView* v = &views[7 * l];
      const cpu::MatMulTarget qkv[3] = {{v[0], o[0]}, {v[1], o[1]}, {v[2], o[2]}};
      cpu::MatMulShared(qkv, 3, x.data(), m, pool);
      cpu::MatMul(v[3], x.data(), m, out.data(), pool);
      const cpu::MatMulTarget gate_up[2] = {{v[4], o[0]}, {v[5], o[1]}};
      cpu::MatMulShared(gate_up, 2, x.data(), m, pool);
      cpu::MatMul(v[6], x.data(), m, out.data(), pool);
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["tok/s"] = benchmark::Counter(m * iters, benchmark::Counter::kIsRate);
  state.counters["weight_GB/s"] =
      benchmark::Counter(static_cast<double>(bytes) * iters / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(DTypeName(type)) + (pack && !packed.empty() && packed.back() ? " packed" : "") +
                 " threads=" + std::to_string(pool.size()));
}

#define MESA_LLAMA_BENCH(name, type, pack)            \
  BENCHMARK_CAPTURE(BM_LlamaLayers, name, type, pack) \
      ->Arg(1)                                        \
      ->Arg(128)                                      \
      ->Arg(512)                                      \
      ->Arg(2048)                                     \
      ->UseRealTime()                                 \
      ->Unit(benchmark::kMillisecond)

MESA_LLAMA_BENCH(f32, DType::kF32, false);
MESA_LLAMA_BENCH(f16, DType::kF16, false);
// *_packed: the layout PackWeights gives the model loader on this CPU (the same as the
// plain run where there is none).
MESA_LLAMA_BENCH(q8_0, DType::kQ8_0, false);
MESA_LLAMA_BENCH(q8_0_packed, DType::kQ8_0, true);
MESA_LLAMA_BENCH(q4_0, DType::kQ4_0, false);
MESA_LLAMA_BENCH(q4_0_packed, DType::kQ4_0, true);
MESA_LLAMA_BENCH(q4_K, DType::kQ4_K, false);
MESA_LLAMA_BENCH(q4_K_packed, DType::kQ4_K, true);
MESA_LLAMA_BENCH(q5_K, DType::kQ5_K, false);
MESA_LLAMA_BENCH(q5_K_packed, DType::kQ5_K, true);
MESA_LLAMA_BENCH(q6_K, DType::kQ6_K, false);
MESA_LLAMA_BENCH(q6_K_packed, DType::kQ6_K, true);

MESA_MATMUL_BENCH(f32, DType::kF32);
MESA_MATMUL_BENCH(f16, DType::kF16);
MESA_MATMUL_BENCH(bf16, DType::kBF16);
MESA_MATMUL_BENCH(q8_0, DType::kQ8_0);
MESA_MATMUL_BENCH(q4_0, DType::kQ4_0);
MESA_MATMUL_BENCH(q4_K, DType::kQ4_K);
MESA_MATMUL_BENCH(q5_K, DType::kQ5_K);
MESA_MATMUL_BENCH(q6_K, DType::kQ6_K);

}  // namespace
}  // namespace mesa

BENCHMARK_MAIN();
