// Benchmarks cpu::Attention per position mode at the shapes Mesa runs:
//   prefill: n_q = n_kv = 4096, causal (the full / Self-Extend / ReRoPE baselines and
//            the last chunk of Mesa are this shape, longer);
//   decode:  n_q = 1 over n_kv = 32768 keys (one generated token, memory bound).
// 8 query heads, 4 kv heads (GQA 2), head_dim 64. GFLOP/s counts 4 * head_dim flops
// per visible (query, key, head) triple: QK^T and PV, nothing for softmax or
// rotations, so modes that rotate show their overhead as lower GFLOP/s.
// Threads default to 2; set MESA_BENCH_THREADS to change. MESA_CPU_ISA=avx512|avx2|scalar
// runs that ISA's kernel (an ISA this CPU lacks is an error). Numbers on a shared
// machine are noisy: compare runs taken back to back.
//
// Roofline (BM_Roofline_*): the FMA peak of the threads (independent FMA chains in
// registers, per ISA) and the streaming read bandwidth of a 2 GiB buffer (far past
// any cache), to judge the attention numbers against.
//
// Long context (BM_AttentionLong/n_q/n_kv/shape/variant): one layer's attention for
// one final chunk (n_q = 512) or one decode step (n_q = 1) over n_kv keys, with the
// shapes of a 32-head / 8-kv-head x 128 model (shape 0, Llama-3-8B-like) and of the
// project's random bench model (shape 1: 12 / 12 x 64). Each iteration reads the
// K/V of another "layer" (buffers totalling >= 1 GiB, cycled), so the cache holds no
// layer from the last visit, as in a real forward pass. Counters: KV_GB/s (K and V
// bytes of the visible keys per second) and GFLOP/s. bench/attention_long.sh runs it
// per ISA and writes bench/results/attention_long.md.
#include <benchmark/benchmark.h>

#include <time.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/cpu/attention_cpu_internal.h"
#include "kernels/cpu/matmul_cpu_internal.h"

namespace mesa {
namespace {

int BenchThreads() {
  const char* env = std::getenv("MESA_BENCH_THREADS");
  return env != nullptr ? std::atoi(env) : 2;
}

using cpu::internal::Isa;

// MESA_CPU_ISA for this benchmark: forces MatMul's ISA and attention's (the kernels
// library reads the variable itself once matmul_cpu.cc implements it; forcing here
// as well keeps the benchmark independent of that).
Isa BenchIsa() {
  static const Isa isa = [] {
    const char* env = std::getenv("MESA_CPU_ISA");
    const std::string v = env != nullptr ? env : "auto";
    Isa want = cpu::internal::BestIsa();
    if (v == "avx512") want = Isa::kAvx512;
    else if (v == "avx2") want = Isa::kAvx2;
    else if (v == "scalar") want = Isa::kScalar;
    else if (v != "auto" && !v.empty()) {
      std::fprintf(stderr, "MESA_CPU_ISA=%s: expected avx512, avx2, scalar or auto\n", v.c_str());
      std::exit(2);
    }
    if (!cpu::internal::IsaSupported(want)) {
      std::fprintf(stderr, "MESA_CPU_ISA=%s: this CPU cannot run it\n", v.c_str());
      std::exit(2);
    }
    cpu::internal::ForceIsa(want);
    cpu::attn_internal::OverrideIsa(static_cast<int>(want));
    return want;
  }();
  return isa;
}

double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

enum class Variant { kNone, kAlibi, kRopeExact, kRopeStair, kRopeClamp, kRopeSelfExtend };

const char* VariantName(Variant v) {
  switch (v) {
    case Variant::kNone: return "none";
    case Variant::kAlibi: return "alibi";
    case Variant::kRopeExact: return "rope_exact";
    case Variant::kRopeStair: return "rope_stair";
    case Variant::kRopeClamp: return "rope_clamp";
    case Variant::kRopeSelfExtend: return "rope_self_extend";
  }
  return "?";
}

void BM_Attention(benchmark::State& state, Variant variant) {
  const int64_t n_q = state.range(0), n_kv = state.range(1);
  const int64_t n_head = 8, n_head_kv = 4, hd = 64;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(n_q * n_head * hd), k(n_head_kv * n_kv * hd), v(k.size()),
      out(q.size());
  for (float& x : q) x = nd(rng);
  for (float& x : k) x = nd(rng);
  for (float& x : v) x = nd(rng);
  std::vector<int64_t> pos(n_q);
  for (int64_t i = 0; i < n_q; ++i) pos[i] = n_kv - n_q + i;
  std::vector<float> slopes(n_head);
  AlibiSlopes(n_head, 8.0f, slopes.data());

  AttentionParams p;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.out = out.data();
  p.n_q = n_q;
  p.n_kv = n_kv;
  p.kv_stride = n_kv;
  p.q_pos = pos.data();
  p.n_head = n_head;
  p.n_head_kv = n_head_kv;
  p.head_dim = hd;
  p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  p.alibi_slopes = slopes.data();
  p.rope.head_dim = hd;
  p.rope.rope_dims = hd;
  p.rope.neox = true;
  switch (variant) {
    case Variant::kNone: break;
    case Variant::kAlibi: p.mode = AttentionPositionMode::kAlibi; break;
    case Variant::kRopeExact: p.mode = AttentionPositionMode::kRopeRaw; break;
    case Variant::kRopeStair:
      // Mesa's defaults for a model trained on 4096 tokens: N = 512, E = 50 (the
      // woven region holds most pairs), with log-n scaling.
      p.mode = AttentionPositionMode::kRopeRaw;
      p.rel.kind = RelativePosition::Kind::kStair;
      p.rel.n = 512;
      p.rel.e = 50;
      p.logn_train_length = 4096;
      break;
    case Variant::kRopeClamp:
      p.mode = AttentionPositionMode::kRopeRaw;
      p.rel.kind = RelativePosition::Kind::kClamp;
      p.rel.window = 512;
      break;
    case Variant::kRopeSelfExtend:
      p.mode = AttentionPositionMode::kRopeRaw;
      p.rel.kind = RelativePosition::Kind::kSelfExtend;
      p.rel.window = 512;
      p.rel.group = 8;
      break;
  }
  const Isa isa = BenchIsa();
  ThreadPool pool(BenchThreads());
  cpu::Attention(p, pool);  // warm up (builds the rotation table once)
  const double cpu0 = ProcessCpuSeconds();
  for (auto _ : state) {
    cpu::Attention(p, pool);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double cpu_s = ProcessCpuSeconds() - cpu0;
  double pairs = 0;
  for (int64_t i = 0; i < n_q; ++i) pairs += static_cast<double>(pos[i] + 1);
  const double flops = pairs * n_head * 4.0 * hd;
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  // Per second of CPU time of the whole process (summed over threads): what one core
  // does while it runs, robust to other work sharing the cores (the real-time rate is
  // not). Compare with BM_Roofline_*'s per-core figures.
  state.counters["GFLOP/core_s"] = flops * static_cast<double>(state.iterations()) / 1e9 / cpu_s;
  state.SetLabel(std::string(VariantName(variant)) + " threads=" + std::to_string(pool.size()) +
                 " isa=" + cpu::internal::IsaName(isa));
}

#define MESA_ATTENTION_BENCH(name, variant)      \
  BENCHMARK_CAPTURE(BM_Attention, name, variant) \
      ->Args({4096, 4096})                       \
      ->Args({1, 32768})                         \
      ->UseRealTime()                            \
      ->Unit(benchmark::kMillisecond)

MESA_ATTENTION_BENCH(none, Variant::kNone);
MESA_ATTENTION_BENCH(alibi, Variant::kAlibi);
MESA_ATTENTION_BENCH(rope_exact, Variant::kRopeExact);
MESA_ATTENTION_BENCH(rope_stair, Variant::kRopeStair);
MESA_ATTENTION_BENCH(rope_clamp, Variant::kRopeClamp);
MESA_ATTENTION_BENCH(rope_self_extend, Variant::kRopeSelfExtend);

// --- Roofline.

// FMA peak: kAcc independent accumulator chains of one ISA's vectors (enough to cover
// the FMA latency of two pipes), all in registers. 2 * lanes * kAcc flops per step.
#define MESA_FMA_LOOP(Name, Target, Lanes, Acc)                                       \
  __attribute__((target(Target), noinline)) float Name(int64_t steps, float x) {      \
    typedef float Vt __attribute__((vector_size(4 * (Lanes))));                       \
    Vt a[Acc];                                                                        \
    for (int i = 0; i < (Acc); ++i) a[i] = Vt{} + x * static_cast<float>(i);          \
    const Vt m = Vt{} + 0.999999f, c = Vt{} + 1e-7f;                                  \
    for (int64_t s = 0; s < steps; ++s) {                                             \
      _Pragma("GCC unroll 16") for (int i = 0; i < (Acc); ++i) a[i] = a[i] * m + c;   \
    }                                                                                 \
    Vt t = a[0];                                                                      \
    for (int i = 1; i < (Acc); ++i) t += a[i];                                        \
    float r = 0;                                                                      \
    for (int i = 0; i < (Lanes); ++i) r += t[i];                                      \
    return r;                                                                         \
  }
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
MESA_FMA_LOOP(FmaAvx512, "avx512f,fma", 16, 16)
MESA_FMA_LOOP(FmaAvx2, "avx2,fma", 8, 10)
#endif
MESA_FMA_LOOP(FmaScalar, "sse2", 4, 12)

void BM_Roofline_Fma(benchmark::State& state) {
  const Isa isa = BenchIsa();
  ThreadPool pool(BenchThreads());
  const int64_t steps = 20'000'000;
  int lanes = 4, acc = 12;
  float (*fn)(int64_t, float) = FmaScalar;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (isa == Isa::kAvx512) fn = FmaAvx512, lanes = 16, acc = 16;
  if (isa == Isa::kAvx2) fn = FmaAvx2, lanes = 8, acc = 10;
#endif
  std::atomic<float> sink{0};
  const double cpu0 = ProcessCpuSeconds();
  for (auto _ : state) {
    pool.RunOnAll([&](int i) { sink.store(fn(steps, 1.0f + i)); });
  }
  const double cpu_s = ProcessCpuSeconds() - cpu0;
  const double flops = 2.0 * lanes * acc * steps * pool.size() * state.iterations();
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP/core_s"] = flops / 1e9 / cpu_s;
  state.SetLabel(std::string("threads=") + std::to_string(pool.size()) +
                 " isa=" + cpu::internal::IsaName(isa));
}
BENCHMARK(BM_Roofline_Fma)->UseRealTime()->Unit(benchmark::kMillisecond);

// Streaming read bandwidth: the threads sum disjoint parts of a 2 GiB buffer.
void BM_Roofline_Read(benchmark::State& state) {
  ThreadPool pool(BenchThreads());
  const int64_t n = int64_t{1} << 29;  // floats: 2 GiB
  std::vector<float> buf(n);
  pool.ParallelFor(n, 1 << 20, [&](int, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buf[i] = static_cast<float>(i & 7);
  });
  std::atomic<double> sink{0};
  const double cpu0 = ProcessCpuSeconds();
  for (auto _ : state) {
    pool.ParallelFor(n, n / pool.size(), [&](int, int64_t b, int64_t e) {
      // Eight streams per thread (its range in eighths, walked together), as attention
      // walks K and V of one or more kv heads: one stream alone leaves bandwidth unused.
      typedef float V8 __attribute__((vector_size(32)));
      V8 s[8] = {};
      const int64_t q = (e - b) / 8 / 16 * 16;
      const float* p0 = buf.data() + b;
      for (int64_t i = 0; i < q; i += 16) {
        for (int st = 0; st < 8; ++st) {
          V8 x0, x1;
          std::memcpy(&x0, p0 + st * q + i, 32);
          std::memcpy(&x1, p0 + st * q + i + 8, 32);
          s[st] += x0 + x1;
        }
      }
      const V8 t = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
      sink.store(t[0] + t[7]);
    });
  }
  const double cpu_s = ProcessCpuSeconds() - cpu0;
  state.counters["GB/s"] = benchmark::Counter(4.0 * n * state.iterations() / 1e9,
                                              benchmark::Counter::kIsRate);
  // Per second of CPU time (summed over threads): what one core reads while it runs.
  state.counters["GB/core_s"] = 4.0 * n * state.iterations() / 1e9 / cpu_s;
  state.SetLabel(std::string("threads=") + std::to_string(pool.size()) + " bytes=2GiB");
}
BENCHMARK(BM_Roofline_Read)->UseRealTime()->Unit(benchmark::kMillisecond);

// --- Long context: one layer's attention per iteration, K/V cycled over layers.

struct LongShape {
  int64_t n_head, n_head_kv, hd;
};
constexpr LongShape kLongShapes[] = {{32, 8, 128}, {12, 12, 64}};

void BM_AttentionLong(benchmark::State& state) {
  const int64_t n_q = state.range(0), n_kv = state.range(1);
  const LongShape sh = kLongShapes[state.range(2)];
  const Variant variant = static_cast<Variant>(state.range(3));
  const Isa isa = BenchIsa();
  const int64_t layer_floats = sh.n_head_kv * n_kv * sh.hd;
  const int64_t layers =
      std::max<int64_t>(2, ((int64_t{1} << 30) + 8 * layer_floats - 1) / (8 * layer_floats));
  ThreadPool pool(BenchThreads());
  std::vector<std::vector<float>> k(layers), v(layers);
  for (int64_t l = 0; l < layers; ++l) {
    k[l].resize(layer_floats);
    v[l].resize(layer_floats);
    float* kp = k[l].data();
    float* vp = v[l].data();
    // Uniform in [-1.7, 1.7) (variance about 1) from a cheap per-element hash: gigabytes
    // of normal draws would take longer than the benchmark.
    pool.ParallelFor(layer_floats, 1 << 16, [&](int, int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        uint64_t x = static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(l);
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9ull;
        x ^= x >> 32;
        kp[i] = static_cast<float>(static_cast<int32_t>(x)) * (1.7f / 2147483648.0f);
        vp[i] = static_cast<float>(static_cast<int32_t>(x >> 32)) * (1.7f / 2147483648.0f);
      }
    });
  }
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(n_q * sh.n_head * sh.hd), out(q.size());
  for (float& x : q) x = nd(rng);
  std::vector<int64_t> pos(n_q);
  for (int64_t i = 0; i < n_q; ++i) pos[i] = n_kv - n_q + i;
  std::vector<float> slopes(sh.n_head);
  AlibiSlopes(sh.n_head, 8.0f, slopes.data());
  AttentionParams p;
  p.q = q.data();
  p.out = out.data();
  p.n_q = n_q;
  p.n_kv = n_kv;
  p.kv_stride = n_kv;
  p.q_pos = pos.data();
  p.n_head = sh.n_head;
  p.n_head_kv = sh.n_head_kv;
  p.head_dim = sh.hd;
  p.scale = 1.0f / std::sqrt(static_cast<float>(sh.hd));
  p.alibi_slopes = slopes.data();
  p.rope.head_dim = sh.hd;
  p.rope.rope_dims = sh.hd;
  p.rope.neox = true;
  if (variant == Variant::kRopeStair) {
    // Mesa's final phase for a model trained on T = 4096: N = 512, E raised so that
    // R(n_kv - 1) <= T - 1 (MESA_SPEC section 1), log-n on.
    const int64_t t_train = 4096, n = 512;
    p.mode = AttentionPositionMode::kRopeRaw;
    p.rel.kind = RelativePosition::Kind::kStair;
    p.rel.n = n;
    p.rel.e = std::max<int64_t>(1, (n_kv - 1 - n) / (t_train - n) + 1);
    p.logn_train_length = t_train;
  } else if (variant != Variant::kNone) {
    state.SkipWithError("long-context modes: none and rope_stair");
    return;
  }
  int64_t layer = 0;
  auto run = [&] {
    p.k = k[layer].data();
    p.v = v[layer].data();
    layer = (layer + 1) % layers;
    cpu::Attention(p, pool);
  };
  {
    // Warm up the rotation table with the last query alone (it needs the largest
    // position), not with a whole (possibly 30 s) call.
    AttentionParams one = p;
    one.q = q.data() + (n_q - 1) * sh.n_head * sh.hd;
    one.q_pos = pos.data() + n_q - 1;
    one.out = out.data();
    one.n_q = 1;
    one.k = k[0].data();
    one.v = v[0].data();
    cpu::Attention(one, pool);
  }
  const double cpu0 = ProcessCpuSeconds();
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double cpu_s = ProcessCpuSeconds() - cpu0;
  double pairs = 0;
  for (int64_t i = 0; i < n_q; ++i) pairs += static_cast<double>(pos[i] + 1);
  const double iters = static_cast<double>(state.iterations());
  const double flops = pairs * sh.n_head * 4.0 * sh.hd * iters;
  const double kv_bytes = 2.0 * 4.0 * sh.n_head_kv * sh.hd * n_kv * iters;
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP/core_s"] = flops / 1e9 / cpu_s;
  state.counters["KV_GB/s"] = benchmark::Counter(kv_bytes / 1e9, benchmark::Counter::kIsRate);
  state.counters["KV_GB/core_s"] = kv_bytes / 1e9 / cpu_s;
  state.SetLabel(std::string(VariantName(variant)) + " heads=" + std::to_string(sh.n_head) +
                 "/" + std::to_string(sh.n_head_kv) + "x" + std::to_string(sh.hd) +
                 " threads=" + std::to_string(pool.size()) +
                 " isa=" + cpu::internal::IsaName(isa) + " layers=" + std::to_string(layers));
}
BENCHMARK(BM_AttentionLong)
    ->ArgsProduct({{1, 512},
                   {8192, 32768, 131072},
                   {0, 1},
                   {static_cast<int64_t>(Variant::kNone), static_cast<int64_t>(Variant::kRopeStair)}})
    ->ArgNames({"n_q", "n_kv", "shape", "variant"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace mesa

BENCHMARK_MAIN();
