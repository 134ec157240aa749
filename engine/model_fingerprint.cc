// ModelFingerprint: FNV-1a over the model's shape, tokenizer and sampled weight bytes.
#include "engine/model_fingerprint.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mesa {
namespace {

class Fnv {
 public:
  void Bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) {
      h_ ^= b[i];
      h_ *= 0x100000001b3ULL;
    }
  }
  void Int(int64_t v) { Bytes(&v, sizeof v); }
  void Float(float v) { Bytes(&v, sizeof v); }
  void Str(const std::string& s) {
    Int(static_cast<int64_t>(s.size()));
    Bytes(s.data(), s.size());
  }
  std::string Hex() const {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016" PRIx64, h_);
    return buf;
  }

 private:
  uint64_t h_ = 0xcbf29ce484222325ULL;
};

// The first and last row of a matrix (at most 256 bytes of each).
void SampleMatrix(Fnv& f, const WeightView& w, bool* any) {
  if (!w.data || w.rows <= 0) return;
  *any = true;
  f.Int(static_cast<int64_t>(w.type));
  f.Int(w.rows);
  f.Int(w.cols);
  const int64_t n = std::min<int64_t>(w.row_bytes(), 256);
  f.Bytes(w.row(0), static_cast<size_t>(n));
  f.Bytes(w.row(w.rows - 1), static_cast<size_t>(n));
}

}  // namespace

ModelFingerprint ModelFingerprint::FromString(const std::string& s) {
  ModelFingerprint fp;
  const size_t dash = s.find('-');
  fp.shape = s.substr(0, dash);
  if (dash != std::string::npos) fp.weights = s.substr(dash + 1);
  return fp;
}

ModelFingerprint FingerprintModel(const Model& model) {
  const ModelConfig& c = model.config;
  Fnv s;
  s.Str(c.arch_name);
  for (int64_t v : {c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.head_dim, c.n_ff,
                    c.context_length, c.rope_dims}) {
    s.Int(v);
  }
  s.Int(static_cast<int64_t>(c.norm));
  s.Int(static_cast<int64_t>(c.position));
  s.Int(static_cast<int64_t>(c.rope_style));
  s.Int(static_cast<int64_t>(c.ffn));
  for (float v : {c.norm_eps, c.rope_freq_base, c.rope_freq_scale, c.alibi_bias_max, c.clamp_kqv}) s.Float(v);
  if (model.tokenizer) {
    const Tokenizer& t = *model.tokenizer;
    s.Str(t.kind());
    s.Int(t.vocab_size());
    s.Int(t.bos_id());
    s.Int(t.eos_id());
    for (int32_t id = 0; id < t.vocab_size(); ++id) s.Str(t.TokenToPiece(id));
  }
  Fnv w;
  bool any = false;
  SampleMatrix(w, model.weights.token_embd, &any);
  SampleMatrix(w, model.weights.output, &any);
  for (const LayerWeights& l : model.weights.layers) {
    for (const WeightView* v : {&l.wq, &l.wk, &l.wv, &l.wqkv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      SampleMatrix(w, *v, &any);
    }
  }
  ModelFingerprint fp;
  fp.shape = s.Hex();
  if (any) fp.weights = w.Hex();
  return fp;
}

bool FingerprintsMatch(const ModelFingerprint& coordinator, const ModelFingerprint& worker) {
  if (coordinator.shape != worker.shape) return false;
  return coordinator.weights.empty() || worker.weights.empty() || coordinator.weights == worker.weights;
}

std::string DescribeModel(const Model& model) {
  const ModelConfig& c = model.config;
  return absl::StrCat(c.name.empty() ? c.arch_name : c.name, " (", c.arch_name, ", ", c.n_layer, " layers, ",
                      c.n_embd, " embd, vocab ", c.n_vocab, ", ", absl::StrJoin(model.tensor_types, "/"),
                      ", from ", model.source_path, ")");
}

}  // namespace mesa
