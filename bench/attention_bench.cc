// Benchmarks cpu::Attention per position mode at the shapes Mesa runs:
//   prefill: n_q = n_kv = 4096, causal (the full / Self-Extend / ReRoPE baselines and
//            the last chunk of Mesa are this shape, longer);
//   decode:  n_q = 1 over n_kv = 32768 keys (one generated token, memory bound).
// 8 query heads, 4 kv heads (GQA 2), head_dim 64. GFLOP/s counts 4 * head_dim flops
// per visible (query, key, head) triple: QK^T and PV, nothing for softmax or
// rotations, so modes that rotate show their overhead as lower GFLOP/s.
// Threads default to 2; set MESA_BENCH_THREADS to change. Numbers on a shared machine
// are noisy: compare runs taken back to back.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/attention.h"

namespace mesa {
namespace {

int BenchThreads() {
  const char* env = std::getenv("MESA_BENCH_THREADS");
  return env != nullptr ? std::atoi(env) : 2;
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
  ThreadPool pool(BenchThreads());
  cpu::Attention(p, pool);  // warm up (builds the rotation table once)
  for (auto _ : state) {
    cpu::Attention(p, pool);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  double pairs = 0;
  for (int64_t i = 0; i < n_q; ++i) pairs += static_cast<double>(pos[i] + 1);
  const double flops = pairs * n_head * 4.0 * hd;
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(VariantName(variant)) + " threads=" + std::to_string(pool.size()));
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

}  // namespace
}  // namespace mesa

BENCHMARK_MAIN();
