// The forward pass of the supported architectures (Llama family, Qwen2, MPT), once, as
// ops of a Backend (kernels/backend.h: the CPU, or a GPU through the CUDA plugin). One
// ModelRunner per thread of control: it owns activation buffers in the backend's memory
// (not thread-safe); the Model it reads is shared and immutable, and its weights are
// placed on the backend when the runner is made.
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
#include "kernels/backend.h"
#include "kernels/nn.h"

namespace mesa {

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
  // `max_batch`: tokens per internal micro-batch (bounds activation memory). A failure
  // to place the weights or allocate the activations on the backend is reported by
  // status() and by every Forward.
  ModelRunner(const Model& model, Backend& backend, int64_t max_batch = 512);

  // logits (host memory): kLast -> [n_vocab] of the last token; kAll ->
  // [n_tokens][n_vocab]. The cache must live on this runner's backend.
  absl::Status Forward(absl::Span<const int32_t> tokens, KvCache& cache, LogitsMode mode,
                       std::vector<float>* logits, const AttentionSetup& setup = {});

  // A zero-filled cache on this runner's backend; aborts if the backend cannot
  // allocate it (MakeCache reports that as a status).
  KvCache NewCache(int64_t capacity, KeyEncoding keys = KeyEncoding::kRotated) const {
    return KvCache::ForModel(model_.config, capacity, keys, &backend_);
  }
  absl::StatusOr<KvCache> MakeCache(int64_t capacity, KeyEncoding keys = KeyEncoding::kRotated) const {
    return KvCache::Make(model_.config, capacity, keys, backend_);
  }
  const Model& model() const { return model_; }
  Backend& backend() const { return backend_; }
  const absl::Status& status() const { return init_; }

 private:
  absl::Status Init();
  void RunBatch(absl::Span<const int32_t> tokens, KvCache& cache, bool want_logits,
                bool all_logits, float* logits);
  void Layer(int64_t l, int64_t n, KvCache& cache);
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
  Backend& backend_;
  int64_t max_batch_;
  absl::Status init_;
  ModelWeights w_;  // the model's weights as placed on the backend
  RopeParams rope_;
  BackendBuffer alibi_slopes_;  // [n_head] (ALiBi models)
  // Activations, each [max_batch][width] f32 in backend memory.
  BackendBuffer x_, xn_, q_, k_, v_, qkv_, attn_, ffn_a_, ffn_b_;
  BackendBuffer logits_;     // [rows][n_vocab] for a backend the host cannot read
  BackendBuffer rope_table_; // the backend's RoPE table for the batch's positions
  BackendBuffer pos_dev_;    // [max_batch] int64 positions (attention's q_pos)
  std::vector<int64_t> pos_; // the same on the host
};

}  // namespace mesa
