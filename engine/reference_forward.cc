#include "engine/reference_forward.h"

#include <algorithm>
#include <cmath>

#include "kernels/matmul.h"
#include "kernels/nn.h"

namespace mesa::reference {
namespace {

std::vector<float> Linear(const WeightView& w, const float* bias, const std::vector<float>& x) {
  std::vector<float> out(w.rows);
  ref::MatMul(w, x.data(), 1, out.data());
  if (bias) {
    for (int64_t r = 0; r < w.rows; ++r) out[r] += bias[r];
  }
  return out;
}

std::vector<float> Norm(const ModelConfig& c, const float* w, const float* b,
                        const std::vector<float>& x) {
  std::vector<float> out(x.size());
  if (c.norm == NormType::kRms) {
    ref::RmsNorm(x.data(), w, c.norm_eps, c.n_embd, out.data());
  } else {
    ref::LayerNorm(x.data(), w, b, c.norm_eps, c.n_embd, out.data());
  }
  return out;
}

// Rotates one head vector (double) by `pos` with the model's rotary convention.
void Rotate(const ModelConfig& c, double pos, std::vector<double>& x) {
  const int64_t dims = c.rope_dims > 0 ? c.rope_dims : c.head_dim;
  const int64_t half = dims / 2;
  const bool neox = c.rope_style == RopeStyle::kNeox;
  for (int64_t i = 0; i < half; ++i) {
    double angle = pos * c.rope_freq_scale * std::pow(double(c.rope_freq_base), -2.0 * i / dims);
    double cs = std::cos(angle), sn = std::sin(angle);
    int64_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    double x0 = x[a], x1 = x[b];
    x[a] = x0 * cs - x1 * sn;
    x[b] = x0 * sn + x1 * cs;
  }
}

}  // namespace

ReferenceModel::ReferenceModel(const Model& model) : model_(model) {
  k_.resize(model.config.n_layer);
  v_.resize(model.config.n_layer);
  if (model.config.position == PositionType::kAlibi) {
    slopes_.resize(model.config.n_head);
    AlibiSlopes(model.config.n_head, model.config.alibi_bias_max, slopes_.data());
  }
}

std::vector<float> ReferenceModel::Run(const Segment& seg) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  const int64_t n = static_cast<int64_t>(seg.tokens.size());
  const int64_t hd = c.head_dim, q_width = c.n_head * hd, kv_width = c.n_head_kv * hd;
  const int64_t group = c.n_head / c.n_head_kv;
  std::vector<std::vector<float>> x(n, std::vector<float>(c.n_embd));
  for (int64_t i = 0; i < n; ++i) {
    ref::DequantizeRow(w.token_embd.type, w.token_embd.row(seg.tokens[i]), x[i].data(), c.n_embd);
  }
  const int64_t max_global = *std::max_element(seg.global.begin(), seg.global.end());
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LayerWeights& lw = w.layers[l];
    if (static_cast<int64_t>(k_[l].size()) <= max_global) {
      k_[l].resize(max_global + 1);
      v_[l].resize(max_global + 1);
    }
    std::vector<std::vector<float>> q(n);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<float> h = Norm(c, lw.attn_norm, lw.attn_norm_b, x[i]);
      std::vector<float> qi, ki, vi;
      if (lw.fused_qkv()) {
        std::vector<float> qkv = Linear(lw.wqkv, lw.bqkv, h);
        qi.assign(qkv.begin(), qkv.begin() + q_width);
        ki.assign(qkv.begin() + q_width, qkv.begin() + q_width + kv_width);
        vi.assign(qkv.begin() + q_width + kv_width, qkv.end());
      } else {
        qi = Linear(lw.wq, lw.bq, h);
        ki = Linear(lw.wk, lw.bk, h);
        vi = Linear(lw.wv, lw.bv, h);
      }
      if (c.clamp_kqv > 0) {
        for (auto* vec : {&qi, &ki, &vi}) {
          for (float& f : *vec) f = std::clamp(f, -c.clamp_kqv, c.clamp_kqv);
        }
      }
      q[i] = qi;
      k_[l][seg.global[i]].assign(ki.begin(), ki.end());
      v_[l][seg.global[i]].assign(vi.begin(), vi.end());
    }
    for (int64_t i = 0; i < n; ++i) {
      const auto keys = seg.visible(seg.global[i]);
      const double scale = seg.scale(seg.global[i]) / std::sqrt(double(hd));
      std::vector<float> attn(q_width);
      for (int64_t h = 0; h < c.n_head; ++h) {
        const int64_t kvh = h / group;
        std::vector<double> logits(keys.size());
        for (size_t j = 0; j < keys.size(); ++j) {
          const auto& [key, rel] = keys[j];
          std::vector<double> qh(q[i].begin() + h * hd, q[i].begin() + (h + 1) * hd);
          if (c.position == PositionType::kRope) Rotate(c, static_cast<double>(rel), qh);
          const std::vector<double>& kk = k_[l][key];
          double dot = 0;
          for (int64_t d = 0; d < hd; ++d) dot += qh[d] * kk[kvh * hd + d];
          logits[j] = dot * scale;
          if (c.position == PositionType::kAlibi) logits[j] -= double(slopes_[h]) * rel;
        }
        double mx = -INFINITY;
        for (double v : logits) mx = std::max(mx, v);
        double sum = 0;
        for (double& v : logits) sum += (v = std::exp(v - mx));
        for (int64_t d = 0; d < hd; ++d) {
          double acc = 0;
          for (size_t j = 0; j < keys.size(); ++j) acc += logits[j] * v_[l][keys[j].first][kvh * hd + d];
          attn[h * hd + d] = static_cast<float>(acc / sum);
        }
      }
      std::vector<float> o = Linear(lw.wo, lw.bo, attn);
      for (int64_t d = 0; d < c.n_embd; ++d) x[i][d] += o[d];
      std::vector<float> h = Norm(c, lw.ffn_norm, lw.ffn_norm_b, x[i]);
      std::vector<float> act(c.n_ff);
      if (c.ffn == FfnType::kSwiGlu) {
        std::vector<float> g = Linear(lw.w_gate, nullptr, h), u = Linear(lw.w_up, lw.b_up, h);
        for (int64_t f = 0; f < c.n_ff; ++f) act[f] = ref::Silu(g[f]) * u[f];
      } else {
        std::vector<float> u = Linear(lw.w_up, lw.b_up, h);
        for (int64_t f = 0; f < c.n_ff; ++f) act[f] = ref::Gelu(u[f]);
      }
      std::vector<float> down = Linear(lw.w_down, lw.b_down, act);
      for (int64_t d = 0; d < c.n_embd; ++d) x[i][d] += down[d];
    }
  }
  std::vector<float> logits(n * c.n_vocab);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> h = Norm(c, w.output_norm, w.output_norm_b, x[i]);
    ref::MatMul(w.output, h.data(), 1, logits.data() + i * c.n_vocab);
  }
  return logits;
}

std::vector<float> MesaLogits(const Model& model, absl::Span<const int32_t> prompt,
                              const MesaPlan& plan, absl::Span<const int32_t> decode) {
  ReferenceModel ref_model(model);
  std::vector<float> out;
  auto run = [&](Segment seg) {
    std::vector<float> l = ref_model.Run(seg);
    out.insert(out.end(), l.begin(), l.end());
  };
  auto make = [&](TokenRange r, absl::Span<const int32_t> toks) {
    Segment s;
    for (int64_t g = r.begin; g < r.end; ++g) {
      s.tokens.push_back(toks[g - r.begin]);
      s.global.push_back(g);
    }
    return s;
  };
  const int64_t f = plan.anchor.end;
  Segment anchor = make(plan.anchor, prompt.subspan(0, f));
  anchor.visible = [](int64_t t) {
    std::vector<std::pair<int64_t, int64_t>> keys;
    for (int64_t i = 0; i <= t; ++i) keys.emplace_back(i, t - i);
    return keys;
  };
  run(anchor);
  for (const TokenRange& r : plan.middle) {
    Segment s = make(r, prompt.subspan(r.begin, r.size()));
    s.visible = [f, r](int64_t g) {
      // Positions restart: anchor at 0..F-1, the chunk at F.. (local position p).
      const int64_t p = f + (g - r.begin);
      std::vector<std::pair<int64_t, int64_t>> keys;
      for (int64_t i = 0; i < f; ++i) keys.emplace_back(i, p - i);
      for (int64_t i = r.begin; i <= g; ++i) keys.emplace_back(i, g - i);
      return keys;
    };
    run(s);
  }
  std::vector<int32_t> tail(prompt.begin() + plan.last.begin, prompt.end());
  tail.insert(tail.end(), decode.begin(), decode.end());
  Segment last = make({plan.last.begin, plan.last.begin + static_cast<int64_t>(tail.size())}, tail);
  const int64_t n_stair = plan.stair_n, e = plan.stair_e, t_len = plan.train_length;
  const bool logn = plan.logn;
  last.visible = [n_stair, e](int64_t t) {
    std::vector<std::pair<int64_t, int64_t>> keys;
    for (int64_t i = 0; i <= t; ++i) keys.emplace_back(i, StairPosition(t - i, n_stair, e));
    return keys;
  };
  last.scale = [logn, t_len](int64_t t) { return logn ? LognFactor(t, t_len) : 1.0; };
  run(last);
  return out;
}

std::vector<float> WholeLogits(const Model& model, absl::Span<const int32_t> tokens,
                               const RelativePosition& rel, int64_t logn_train_length) {
  ReferenceModel ref_model(model);
  Segment s;
  for (size_t i = 0; i < tokens.size(); ++i) {
    s.tokens.push_back(tokens[i]);
    s.global.push_back(static_cast<int64_t>(i));
  }
  s.visible = [rel](int64_t t) {
    std::vector<std::pair<int64_t, int64_t>> keys;
    for (int64_t i = 0; i <= t; ++i) keys.emplace_back(i, rel(t, i));
    return keys;
  };
  s.scale = [logn_train_length](int64_t t) {
    return logn_train_length > 0 ? LognFactor(t, logn_train_length) : 1.0;
  };
  return ref_model.Run(s);
}

}  // namespace mesa::reference
