// Forward pass, top to bottom. Buffer shapes (n = tokens in the micro-batch):
//   x      [n][n_embd]      residual stream
//   xn     [n][n_embd]      normed input of attention / ffn
//   q      [n][n_head][head_dim];  k, v  [n][n_head_kv][head_dim]
//   attn   [n][n_head][head_dim]
//   ffn_a, ffn_b [n][n_ff]
#include "engine/forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/thread_pool.h"
#include "kernels/attention.h"

namespace mesa {

ModelRunner::ModelRunner(const Model& model, ThreadPool& pool, int64_t max_batch)
    : model_(model), pool_(pool), max_batch_(std::max<int64_t>(max_batch, 1)) {
  const ModelConfig& c = model_.config;
  rope_.head_dim = c.head_dim;
  rope_.rope_dims = c.rope_dims > 0 ? c.rope_dims : c.head_dim;
  rope_.freq_base = c.rope_freq_base;
  rope_.freq_scale = c.rope_freq_scale;
  rope_.neox = c.rope_style == RopeStyle::kNeox;
  if (c.position == PositionType::kAlibi) {
    alibi_slopes_.resize(c.n_head);
    AlibiSlopes(c.n_head, c.alibi_bias_max, alibi_slopes_.data());
  }
  const int64_t b = max_batch_;
  const int64_t q_width = c.n_head * c.head_dim;
  const int64_t kv_width = c.n_head_kv * c.head_dim;
  x_.resize(b * c.n_embd);
  xn_.resize(b * c.n_embd);
  q_.resize(b * q_width);
  k_.resize(b * kv_width);
  v_.resize(b * kv_width);
  if (!model_.weights.layers.empty() && model_.weights.layers[0].fused_qkv()) {
    qkv_.resize(b * (q_width + 2 * kv_width));
  }
  attn_.resize(b * q_width);
  ffn_a_.resize(b * c.n_ff);
  ffn_b_.resize(b * c.n_ff);
  rope_cs_.resize(b * rope_.rope_dims);
  pos_.resize(b);
}

absl::Status ModelRunner::Forward(absl::Span<const int32_t> tokens, KvCache& cache,
                                  LogitsMode mode, std::vector<float>* logits,
                                  const AttentionSetup& setup) {
  const ModelConfig& c = model_.config;
  if (tokens.empty()) return absl::InvalidArgumentError("no tokens to run");
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.n_vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                     " is outside the vocabulary [0, ",
                                                     c.n_vocab, ")"));
    }
  }
  if (cache.n_layer() != c.n_layer || cache.n_head_kv() != c.n_head_kv ||
      cache.head_dim() != c.head_dim) {
    return absl::InvalidArgumentError("KV cache shape does not match the model");
  }
  if (cache.encoding() != setup.keys) {
    return absl::InvalidArgumentError("the KV cache's key encoding does not match the attention setup");
  }
  if (setup.keys == KeyEncoding::kRotated && setup.rel.kind != RelativePosition::Kind::kExact &&
      c.position == PositionType::kRope) {
    return absl::InvalidArgumentError("relative-position variants need a cache of raw keys");
  }
  setup_ = setup;
  cache.Reserve(cache.size() + static_cast<int64_t>(tokens.size()));
  const int64_t n_total = static_cast<int64_t>(tokens.size());
  if (logits) {
    logits->assign(mode == LogitsMode::kAll ? n_total * c.n_vocab
                   : mode == LogitsMode::kLast ? c.n_vocab
                                               : 0,
                   0.0f);
  }
  for (int64_t start = 0; start < n_total; start += max_batch_) {
    const int64_t n = std::min(max_batch_, n_total - start);
    const bool last_batch = start + n == n_total;
    const bool want = logits && (mode == LogitsMode::kAll || (mode == LogitsMode::kLast && last_batch));
    float* out = nullptr;
    if (want) out = mode == LogitsMode::kAll ? logits->data() + start * c.n_vocab : logits->data();
    RunBatch(tokens.subspan(start, n), cache, want, mode == LogitsMode::kAll, out);
  }
  return absl::OkStatus();
}

void ModelRunner::Linear(const WeightView& w, const float* bias, const float* x, int64_t n,
                         float* out) {
  cpu::MatMul(w, x, n, out, pool_);
  if (bias) {
    for (int64_t i = 0; i < n; ++i) cpu::Add(bias, w.rows, out + i * w.rows);
  }
}

void ModelRunner::Linears(std::initializer_list<LinearOut> outs, const float* x, int64_t n) {
  cpu::MatMulTarget targets[4];
  int count = 0;
  for (const LinearOut& o : outs) targets[count++] = cpu::MatMulTarget{o.w, o.out};
  cpu::MatMulShared(targets, count, x, n, pool_);
  for (const LinearOut& o : outs) {
    if (!o.bias) continue;
    for (int64_t i = 0; i < n; ++i) cpu::Add(o.bias, o.w.rows, o.out + i * o.w.rows);
  }
}

void ModelRunner::Norm(const float* w, const float* b, const float* x, int64_t n, float* out) {
  const ModelConfig& c = model_.config;
  const int64_t d = c.n_embd;
  pool_.ParallelFor(n, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (c.norm == NormType::kRms) {
        cpu::RmsNorm(x + i * d, w, c.norm_eps, d, out + i * d);
      } else {
        cpu::LayerNorm(x + i * d, w, b, c.norm_eps, d, out + i * d);
      }
    }
  });
}

void ModelRunner::RunBatch(absl::Span<const int32_t> tokens, KvCache& cache, bool want_logits,
                           bool all_logits, float* logits) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = c.n_embd;
  const int64_t first = cache.size();

  // Embedding lookup: dequantize one row per token.
  pool_.ParallelFor(n, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      cpu::DequantizeRow(w.token_embd.type, w.token_embd.row(tokens[i]), x_.data() + i * d, d);
    }
  });
  for (int64_t i = 0; i < n; ++i) pos_[i] = cache.pos0() + first + i;
  if (c.position == PositionType::kRope && setup_.keys == KeyEncoding::kRotated) {
    // Raw-key setups rotate inside attention instead.
    for (int64_t i = 0; i < n; ++i) {
      cpu::RopeCosSin(rope_, static_cast<double>(pos_[i]), rope_cs_.data() + i * rope_.rope_dims);
    }
  }

  for (int64_t l = 0; l < c.n_layer; ++l) Layer(l, n, cache, pos_.data());
  cache.Commit(n);

  if (!want_logits) return;
  const int64_t rows = all_logits ? n : 1;
  const float* src = x_.data() + (all_logits ? 0 : (n - 1) * d);
  Norm(w.output_norm, w.output_norm_b, src, rows, xn_.data());
  cpu::MatMul(w.output, xn_.data(), rows, logits, pool_);
}

void ModelRunner::Layer(int64_t l, int64_t n, KvCache& cache, const int64_t* pos) {
  const ModelConfig& c = model_.config;
  const LayerWeights& lw = model_.weights.layers[l];
  const int64_t d = c.n_embd;
  const int64_t hd = c.head_dim;
  const int64_t q_width = c.n_head * hd;
  const int64_t kv_width = c.n_head_kv * hd;
  const int64_t first = cache.size();

  // --- attention block ---
  Norm(lw.attn_norm, lw.attn_norm_b, x_.data(), n, xn_.data());
  if (lw.fused_qkv()) {
    const int64_t width = q_width + 2 * kv_width;
    Linear(lw.wqkv, lw.bqkv, xn_.data(), n, qkv_.data());
    for (int64_t i = 0; i < n; ++i) {
      const float* row = qkv_.data() + i * width;
      std::memcpy(q_.data() + i * q_width, row, q_width * sizeof(float));
      std::memcpy(k_.data() + i * kv_width, row + q_width, kv_width * sizeof(float));
      std::memcpy(v_.data() + i * kv_width, row + q_width + kv_width, kv_width * sizeof(float));
    }
  } else {
    Linears({{lw.wq, lw.bq, q_.data()}, {lw.wk, lw.bk, k_.data()}, {lw.wv, lw.bv, v_.data()}},
            xn_.data(), n);
  }
  if (c.clamp_kqv > 0) {
    auto clamp = [&](std::vector<float>& buf, int64_t count) {
      for (int64_t i = 0; i < count; ++i) buf[i] = std::clamp(buf[i], -c.clamp_kqv, c.clamp_kqv);
    };
    clamp(q_, n * q_width);
    clamp(k_, n * kv_width);
    clamp(v_, n * kv_width);
  }
  if (c.position == PositionType::kRope && setup_.keys == KeyEncoding::kRotated) {
    pool_.ParallelFor(n, 1, [&](int, int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float* cs = rope_cs_.data() + i * rope_.rope_dims;
        cpu::RopeApply(rope_, cs, c.n_head, q_.data() + i * q_width);
        cpu::RopeApply(rope_, cs, c.n_head_kv, k_.data() + i * kv_width);
      }
    });
  }
  // Append K/V to the cache: [n][n_head_kv][hd] -> [n_head_kv][capacity][hd].
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < c.n_head_kv; ++h) {
      std::memcpy(cache.k_row(l, h, first + i), k_.data() + i * kv_width + h * hd, hd * sizeof(float));
      std::memcpy(cache.v_row(l, h, first + i), v_.data() + i * kv_width + h * hd, hd * sizeof(float));
    }
  }
  AttentionParams ap;
  ap.q = q_.data();
  ap.k = cache.k(l);
  ap.v = cache.v(l);
  ap.out = attn_.data();
  ap.n_q = n;
  ap.n_kv = first + n;
  ap.kv_stride = cache.capacity();
  ap.kv_pos0 = cache.pos0();
  ap.q_pos = pos;
  ap.n_head = c.n_head;
  ap.n_head_kv = c.n_head_kv;
  ap.head_dim = hd;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  if (c.position == PositionType::kAlibi) {
    ap.mode = AttentionPositionMode::kAlibi;
    ap.alibi_slopes = alibi_slopes_.data();
  } else if (setup_.keys == KeyEncoding::kRaw) {
    ap.mode = AttentionPositionMode::kRopeRaw;
  }
  ap.rel = setup_.rel;
  ap.rope = rope_;
  ap.logn_train_length = setup_.logn_train_length;
  cpu::Attention(ap, pool_);
  // Output projection into xn (free now), then the residual add.
  Linear(lw.wo, lw.bo, attn_.data(), n, xn_.data());
  cpu::Add(xn_.data(), n * d, x_.data());

  // --- feed-forward block ---
  Norm(lw.ffn_norm, lw.ffn_norm_b, x_.data(), n, xn_.data());
  const int64_t ff = c.n_ff;
  if (c.ffn == FfnType::kSwiGlu) {
    Linears({{lw.w_gate, nullptr, ffn_a_.data()}, {lw.w_up, lw.b_up, ffn_b_.data()}},
            xn_.data(), n);
    pool_.ParallelFor(n, 1, [&](int, int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        cpu::SwiGlu(ffn_a_.data() + i * ff, ffn_b_.data() + i * ff, ff, ffn_a_.data() + i * ff);
      }
    });
  } else {
    Linear(lw.w_up, lw.b_up, xn_.data(), n, ffn_b_.data());
    cpu::Gelu(ffn_b_.data(), n * ff, ffn_a_.data());
  }
  Linear(lw.w_down, lw.b_down, ffn_a_.data(), n, xn_.data());
  cpu::Add(xn_.data(), n * d, x_.data());
}

}  // namespace mesa
