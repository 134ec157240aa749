// The forward pass of the supported architectures (Llama family, Qwen2, MPT) on the
// CPU. One ModelRunner per thread of control: it owns scratch buffers (not
// thread-safe); the Model it reads is shared and immutable.
//
// Forward() runs a batch of tokens at consecutive positions after what the cache
// holds (prefill when the batch is long, decode when it is one token), appends their
// keys and values to the cache, and returns logits.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "kernels/attention.h"
#include "kernels/nn.h"

namespace mesa {

class ThreadPool;

enum class LogitsMode { kNone, kLast, kAll };

// How the batch attends. Default: ordinary causal attention, keys rotated at their own
// positions (the base model). With raw keys (pre-rotation) the kernel applies the
// relative position rel(t, i) at attention time: Mesa's Stair PE, ReRoPE, Self-Extend,
// or kExact (ordinary attention computed from raw keys). ALiBi models use rel too.
struct AttentionSetup {
  KeyEncoding keys = KeyEncoding::kRotated;
  RelativePosition rel;
  int64_t logn_train_length = 0;  // log-n query scaling for t >= T; 0: off
};

class ModelRunner {
 public:
  // `max_batch`: tokens per internal micro-batch (bounds activation memory).
  ModelRunner(const Model& model, ThreadPool& pool, int64_t max_batch = 512);

  // logits: kLast -> [n_vocab] of the last token; kAll -> [n_tokens][n_vocab].
  absl::Status Forward(absl::Span<const int32_t> tokens, KvCache& cache, LogitsMode mode,
                       std::vector<float>* logits, const AttentionSetup& setup = {});

  KvCache NewCache(int64_t capacity, KeyEncoding keys = KeyEncoding::kRotated) const {
    return KvCache::ForModel(model_.config, capacity, keys);
  }
  const Model& model() const { return model_; }

 private:
  void RunBatch(absl::Span<const int32_t> tokens, KvCache& cache, bool want_logits,
                bool all_logits, float* logits);
  void Layer(int64_t l, int64_t n, KvCache& cache, const int64_t* pos);
  AttentionSetup setup_;  // of the Forward call in progress
  void Linear(const WeightView& w, const float* bias, const float* x, int64_t n, float* out);
  // Linear layers reading the same input (q/k/v, gate/up): one pass over the pool.
  struct LinearOut {
    const WeightView& w;
    const float* bias;
    float* out;
  };
  void Linears(std::initializer_list<LinearOut> outs, const float* x, int64_t n);
  void Norm(const float* w, const float* b, const float* x, int64_t n, float* out);

  const Model& model_;
  ThreadPool& pool_;
  int64_t max_batch_;
  RopeParams rope_;
  std::vector<float> alibi_slopes_;
  // Activations, each [max_batch][width].
  std::vector<float> x_, xn_, q_, k_, v_, qkv_, attn_, ffn_a_, ffn_b_;
  std::vector<float> rope_cs_;  // [max_batch][rope_dims] cos/sin per position
  std::vector<int64_t> pos_;
};

}  // namespace mesa
