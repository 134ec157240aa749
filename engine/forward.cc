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
#include "kernels/attention.h"

namespace mesa {

ModelRunner::ModelRunner(const Model& model, Backend& backend, int64_t max_batch)
    : model_(model), backend_(backend), max_batch_(std::max<int64_t>(max_batch, 1)) {
  init_ = Init();
}

absl::Status ModelRunner::Init() {
  const ModelConfig& c = model_.config;
  rope_.head_dim = c.head_dim;
  rope_.rope_dims = c.rope_dims > 0 ? c.rope_dims : c.head_dim;
  rope_.freq_base = c.rope_freq_base;
  rope_.freq_scale = c.rope_freq_scale;
  rope_.neox = c.rope_style == RopeStyle::kNeox;

  // Weights: placed once (the CPU uses them where they lie).
  const ModelWeights& mw = model_.weights;
  auto place = [&](const WeightView& v, WeightView* out) -> absl::Status {
    if (!v.data) return absl::OkStatus();
    absl::StatusOr<WeightView> p = backend_.PlaceWeight(v);
    if (!p.ok()) return p.status();
    *out = *p;
    return absl::OkStatus();
  };
  auto place_vec = [&](const float* v, int64_t n, const float** out) -> absl::Status {
    if (!v) return absl::OkStatus();
    absl::StatusOr<const float*> p = backend_.PlaceVector(v, n);
    if (!p.ok()) return p.status();
    *out = *p;
    return absl::OkStatus();
  };
  w_ = mw;
  const int64_t d = c.n_embd;
  const int64_t q_width = c.n_head * c.head_dim;
  const int64_t kv_width = c.n_head_kv * c.head_dim;
  absl::Status s;
  s.Update(place(mw.token_embd, &w_.token_embd));
  s.Update(place(mw.output, &w_.output));
  s.Update(place_vec(mw.output_norm, d, &w_.output_norm));
  s.Update(place_vec(mw.output_norm_b, d, &w_.output_norm_b));
  for (size_t l = 0; l < mw.layers.size(); ++l) {
    const LayerWeights& a = mw.layers[l];
    LayerWeights& b = w_.layers[l];
    s.Update(place_vec(a.attn_norm, d, &b.attn_norm));
    s.Update(place_vec(a.attn_norm_b, d, &b.attn_norm_b));
    for (auto [from, to] : {std::pair{&a.wq, &b.wq}, {&a.wk, &b.wk}, {&a.wv, &b.wv}, {&a.wqkv, &b.wqkv},
                            {&a.wo, &b.wo}, {&a.w_gate, &b.w_gate}, {&a.w_up, &b.w_up},
                            {&a.w_down, &b.w_down}}) {
      s.Update(place(*from, to));
    }
    s.Update(place_vec(a.bq, q_width, &b.bq));
    s.Update(place_vec(a.bk, kv_width, &b.bk));
    s.Update(place_vec(a.bv, kv_width, &b.bv));
    s.Update(place_vec(a.bqkv, q_width + 2 * kv_width, &b.bqkv));
    s.Update(place_vec(a.bo, d, &b.bo));
    s.Update(place_vec(a.ffn_norm, d, &b.ffn_norm));
    s.Update(place_vec(a.ffn_norm_b, d, &b.ffn_norm_b));
    s.Update(place_vec(a.b_up, c.n_ff, &b.b_up));
    s.Update(place_vec(a.b_down, d, &b.b_down));
    if (!s.ok()) return s;
  }
  if (!s.ok()) return s;

  // Activations.
  const int64_t b = max_batch_;
  auto alloc = [&](BackendBuffer* buf, int64_t bytes) {
    if (!s.ok()) return;
    absl::StatusOr<BackendBuffer> r = backend_.Allocate(static_cast<size_t>(bytes));
    if (r.ok()) {
      *buf = *std::move(r);
    } else {
      s = r.status();
    }
  };
  const int64_t f = sizeof(float);
  if (c.position == PositionType::kAlibi) {
    std::vector<float> slopes(c.n_head);
    AlibiSlopes(c.n_head, c.alibi_bias_max, slopes.data());
    alloc(&alibi_slopes_, c.n_head * f);
    if (s.ok()) backend_.CopyIn(alibi_slopes_.data(), slopes.data(), c.n_head * f);
  }
  alloc(&x_, b * d * f);
  alloc(&xn_, b * d * f);
  alloc(&q_, b * q_width * f);
  alloc(&k_, b * kv_width * f);
  alloc(&v_, b * kv_width * f);
  if (!mw.layers.empty() && mw.layers[0].fused_qkv()) alloc(&qkv_, b * (q_width + 2 * kv_width) * f);
  alloc(&attn_, b * q_width * f);
  alloc(&ffn_a_, b * c.n_ff * f);
  alloc(&ffn_b_, b * c.n_ff * f);
  alloc(&rope_table_, static_cast<int64_t>(backend_.RopeTableBytes(rope_, b)));
  alloc(&pos_dev_, b * static_cast<int64_t>(sizeof(int64_t)));
  pos_.resize(b);
  return s;
}

absl::Status ModelRunner::Forward(absl::Span<const int32_t> tokens, KvCache& cache,
                                  LogitsMode mode, std::vector<float>* logits,
                                  const AttentionSetup& setup) {
  const ModelConfig& c = model_.config;
  if (!init_.ok()) return init_;
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
  if (&cache.backend() != &backend_) {
    return absl::InvalidArgumentError(absl::StrCat("the KV cache lives on backend ", cache.backend().Name(),
                                                   ", this model runs on ", backend_.Name()));
  }
  setup_ = setup;
  if (absl::Status s = cache.Reserve(cache.size() + static_cast<int64_t>(tokens.size())); !s.ok()) {
    return s;
  }
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
    if (absl::Status s = backend_.status(); !s.ok()) return s;
  }
  return backend_.status();
}

void ModelRunner::Linear(const WeightView& w, const float* bias, const float* x, int64_t n,
                         float* out) {
  const MatMulTarget target{w, out};
  backend_.MatMul(&target, 1, x, n);
  if (bias) backend_.AddRows(bias, w.rows, n, out);
}

void ModelRunner::Linears(std::initializer_list<LinearOut> outs, const float* x, int64_t n) {
  MatMulTarget targets[4];
  int count = 0;
  for (const LinearOut& o : outs) targets[count++] = MatMulTarget{o.w, o.out};
  backend_.MatMul(targets, count, x, n);
  for (const LinearOut& o : outs) {
    if (o.bias) backend_.AddRows(o.bias, o.w.rows, n, o.out);
  }
}

void ModelRunner::Norm(const float* w, const float* b, const float* x, int64_t n, float* out) {
  const ModelConfig& c = model_.config;
  backend_.Norm(c.norm == NormType::kRms ? NormKind::kRms : NormKind::kLayer, w, b, c.norm_eps, x, n,
                c.n_embd, out);
}

void ModelRunner::RunBatch(absl::Span<const int32_t> tokens, KvCache& cache, bool want_logits,
                           bool all_logits, float* logits) {
  const ModelConfig& c = model_.config;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = c.n_embd;
  const int64_t first = cache.size();

  backend_.Embed(w_.token_embd, tokens.data(), n, x_.f32());
  for (int64_t i = 0; i < n; ++i) pos_[i] = cache.pos0() + first + i;
  backend_.CopyIn(pos_dev_.data(), pos_.data(), n * sizeof(int64_t));
  if (c.position == PositionType::kRope && setup_.keys == KeyEncoding::kRotated) {
    // Raw-key setups rotate inside attention instead.
    backend_.RopePrepare(rope_, pos_.data(), n, rope_table_.data());
  }

  for (int64_t l = 0; l < c.n_layer; ++l) Layer(l, n, cache);
  cache.Commit(n);

  if (!want_logits) return;
  const int64_t rows = all_logits ? n : 1;
  const float* src = x_.f32() + (all_logits ? 0 : (n - 1) * d);
  Norm(w_.output_norm, w_.output_norm_b, src, rows, xn_.f32());
  const size_t bytes = static_cast<size_t>(rows * c.n_vocab) * sizeof(float);
  if (backend_.HostAddressable()) {
    Linear(w_.output, nullptr, xn_.f32(), rows, logits);
    return;
  }
  if (logits_.bytes() < bytes) {
    absl::StatusOr<BackendBuffer> buf = backend_.Allocate(static_cast<size_t>(max_batch_ * c.n_vocab) * sizeof(float));
    if (!buf.ok()) return;  // the backend's status says why
    logits_ = *std::move(buf);
  }
  Linear(w_.output, nullptr, xn_.f32(), rows, logits_.f32());
  backend_.CopyOut(logits, logits_.data(), bytes);
}

void ModelRunner::Layer(int64_t l, int64_t n, KvCache& cache) {
  const ModelConfig& c = model_.config;
  const LayerWeights& lw = w_.layers[l];
  const int64_t d = c.n_embd;
  const int64_t hd = c.head_dim;
  const int64_t q_width = c.n_head * hd;
  const int64_t kv_width = c.n_head_kv * hd;
  const int64_t first = cache.size();
  constexpr size_t f = sizeof(float);

  // --- attention block ---
  Norm(lw.attn_norm, lw.attn_norm_b, x_.f32(), n, xn_.f32());
  if (lw.fused_qkv()) {
    const int64_t width = q_width + 2 * kv_width;
    Linear(lw.wqkv, lw.bqkv, xn_.f32(), n, qkv_.f32());
    const float* row = qkv_.f32();
    backend_.Copy2D(q_.data(), q_width * f, row, width * f, q_width * f, n);
    backend_.Copy2D(k_.data(), kv_width * f, row + q_width, width * f, kv_width * f, n);
    backend_.Copy2D(v_.data(), kv_width * f, row + q_width + kv_width, width * f, kv_width * f, n);
  } else {
    Linears({{lw.wq, lw.bq, q_.f32()}, {lw.wk, lw.bk, k_.f32()}, {lw.wv, lw.bv, v_.f32()}}, xn_.f32(), n);
  }
  if (c.clamp_kqv > 0) {
    backend_.Clamp(q_.f32(), n * q_width, c.clamp_kqv);
    backend_.Clamp(k_.f32(), n * kv_width, c.clamp_kqv);
    backend_.Clamp(v_.f32(), n * kv_width, c.clamp_kqv);
  }
  if (c.position == PositionType::kRope && setup_.keys == KeyEncoding::kRotated) {
    backend_.Rope(rope_, rope_table_.data(), n, q_.f32(), c.n_head, k_.f32(), c.n_head_kv);
  }
  // Append K/V to the cache: [n][n_head_kv][hd] f32 -> [n_head_kv][capacity][hd] of
  // the cache's element type.
  for (int64_t h = 0; h < c.n_head_kv; ++h) {
    backend_.StoreRows(cache.kv_type(), cache.k_row(l, h, first), hd, k_.f32() + h * hd, kv_width, hd, n);
    backend_.StoreRows(cache.kv_type(), cache.v_row(l, h, first), hd, v_.f32() + h * hd, kv_width, hd, n);
  }
  AttentionParams ap;
  ap.q = q_.f32();
  ap.k = cache.k(l);
  ap.v = cache.v(l);
  ap.kv_type = cache.kv_type();
  ap.out = attn_.f32();
  ap.n_q = n;
  ap.n_kv = first + n;
  ap.kv_stride = cache.capacity();
  ap.kv_pos0 = cache.pos0();
  ap.q_pos = static_cast<const int64_t*>(pos_dev_.data());
  ap.n_head = c.n_head;
  ap.n_head_kv = c.n_head_kv;
  ap.head_dim = hd;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  if (c.position == PositionType::kAlibi) {
    ap.mode = AttentionPositionMode::kAlibi;
    ap.alibi_slopes = alibi_slopes_.f32();
  } else if (setup_.keys == KeyEncoding::kRaw) {
    ap.mode = AttentionPositionMode::kRopeRaw;
  }
  ap.rel = setup_.rel;
  ap.rope = rope_;
  ap.logn_train_length = setup_.logn_train_length;
  backend_.Attention(ap);
  // Output projection into xn (free now), then the residual add.
  Linear(lw.wo, lw.bo, attn_.f32(), n, xn_.f32());
  backend_.Add(xn_.f32(), n * d, x_.f32());

  // --- feed-forward block ---
  Norm(lw.ffn_norm, lw.ffn_norm_b, x_.f32(), n, xn_.f32());
  const int64_t ff = c.n_ff;
  if (c.ffn == FfnType::kSwiGlu) {
    Linears({{lw.w_gate, nullptr, ffn_a_.f32()}, {lw.w_up, lw.b_up, ffn_b_.f32()}}, xn_.f32(), n);
    backend_.SwiGlu(ffn_a_.f32(), ffn_b_.f32(), n, ff, ffn_a_.f32());
  } else {
    Linear(lw.w_up, lw.b_up, xn_.f32(), n, ffn_b_.f32());
    backend_.Gelu(ffn_b_.f32(), n * ff, ffn_a_.f32());
  }
  Linear(lw.w_down, lw.b_down, ffn_a_.f32(), n, xn_.f32());
  backend_.Add(xn_.f32(), n * d, x_.f32());
}

}  // namespace mesa
