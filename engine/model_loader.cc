// Model loaders: GGUF files and Hugging Face directories. Both formats go through one
// binder that looks tensors up by their GGUF names, checks presence, shape and type
// against the config, keeps matrices as views into the mapped files and converts
// small 1-D tensors (norms, biases) to f32 buffers owned by the Model.
#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/huge_buffer.h"
#include "common/status.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/model_loader.h"
#include "engine/safetensors.h"
#include "nlohmann/json.hpp"

namespace mesa {
namespace {

// A tensor as the binder sees it: shape in ggml order (shape[0] contiguous).
struct RawTensor {
  DType type = DType::kF32;
  bool type_known = true;      // false: a dtype Mesa has no DType for
  std::string type_name;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

using TensorLookup = std::function<std::optional<RawTensor>(const std::string& gguf_name)>;

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

class Binder {
 public:
  Binder(const std::string& origin, TensorLookup lookup, Model* model)
      : origin_(origin), lookup_(std::move(lookup)), model_(*model) {}

  // A matrix of `rows` x `cols` (ggml shape {cols, rows}). Missing: error unless optional.
  absl::Status Matrix(const std::string& name, int64_t rows, int64_t cols, WeightView* out,
                      bool optional = false) {
    std::optional<RawTensor> t = lookup_(name);
    if (!t) {
      if (optional) return absl::OkStatus();
      return Missing(name, {cols, rows});
    }
    MESA_RETURN_IF_ERROR(CheckShape(name, *t, {cols, rows}));
    if (!t->type_known || !GetDTypeInfo(t->type).supported) {
      return absl::UnimplementedError(absl::StrCat(origin_, ": tensor '", name, "' has type ",
                                                   t->type_name, ", which Mesa cannot compute with"));
    }
    *out = WeightView{t->type, rows, cols, t->data};
    matrix_types_.insert(t->type_name);
    return absl::OkStatus();
  }

  // A vector of n elements converted to f32. Missing: error unless optional (then null).
  absl::Status Vector(const std::string& name, int64_t n, const float** out, bool optional = false) {
    std::optional<RawTensor> t = lookup_(name);
    if (!t) {
      if (optional) return absl::OkStatus();
      return Missing(name, {n});
    }
    MESA_RETURN_IF_ERROR(CheckShape(name, *t, {n}));
    auto buf = std::make_shared<std::vector<float>>(n);
    const bool plain = t->type_known && (t->type == DType::kF32 || t->type == DType::kF16 ||
                                         t->type == DType::kBF16);
    if (!plain) {
      return absl::UnimplementedError(absl::StrCat(origin_, ": 1-D tensor '", name, "' has type ",
                                                   t->type_name, " (expected f32, f16 or bf16)"));
    }
    const uint8_t* p = static_cast<const uint8_t*>(t->data);
    for (int64_t i = 0; i < n; ++i) {
      if (t->type == DType::kF32) {
        std::memcpy(&(*buf)[i], p + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        (*buf)[i] = t->type == DType::kF16 ? F16ToF32(h) : BF16ToF32(h);
      }
    }
    *out = buf->data();
    model_.storage.push_back(std::move(buf));
    return absl::OkStatus();
  }

  bool Has(const std::string& name) const { return lookup_(name).has_value(); }
  std::vector<std::string> matrix_types() const { return {matrix_types_.begin(), matrix_types_.end()}; }

 private:
  absl::Status Missing(const std::string& name, const std::vector<int64_t>& want) const {
    return absl::InvalidArgumentError(absl::StrCat(origin_, ": missing tensor '", name,
                                                   "' (expected shape ", ShapeString(want), ")"));
  }
  absl::Status CheckShape(const std::string& name, const RawTensor& t,
                          const std::vector<int64_t>& want) const {
    // Trailing dimensions of 1 beyond the expected rank are harmless.
    std::vector<int64_t> got = t.shape;
    while (got.size() > want.size() && got.back() == 1) got.pop_back();
    if (got != want) {
      return absl::InvalidArgumentError(absl::StrCat(origin_, ": tensor '", name, "' has shape ",
                                                     ShapeString(t.shape), ", expected ",
                                                     ShapeString(want), " (ggml order)"));
    }
    return absl::OkStatus();
  }

  std::string origin_;
  TensorLookup lookup_;
  Model& model_;
  std::set<std::string> matrix_types_;
};

// Binds every weight of `config` (n_vocab already known) through `binder`.
absl::Status BindWeights(const ModelConfig& c, Binder& b, ModelWeights* w) {
  const int64_t q_dim = c.n_head * c.head_dim;
  const int64_t kv_dim = c.n_head_kv * c.head_dim;
  const bool layer_norm = c.norm == NormType::kLayerNorm;
  // Tied embeddings: a missing token_embd borrows the output matrix (some Hugging Face
  // files keep only lm_head) and a missing output borrows token_embd.
  const bool has_embd = b.Has("token_embd.weight");
  const bool has_output = b.Has("output.weight");
  MESA_RETURN_IF_ERROR(b.Matrix(has_embd || !has_output ? "token_embd.weight" : "output.weight",
                                c.n_vocab, c.n_embd, &w->token_embd));
  MESA_RETURN_IF_ERROR(b.Vector("output_norm.weight", c.n_embd, &w->output_norm));
  if (layer_norm) MESA_RETURN_IF_ERROR(b.Vector("output_norm.bias", c.n_embd, &w->output_norm_b, true));
  if (has_output) {
    MESA_RETURN_IF_ERROR(b.Matrix("output.weight", c.n_vocab, c.n_embd, &w->output));
  } else {
    w->output = w->token_embd;
  }
  w->layers.assign(c.n_layer, LayerWeights{});
  for (int64_t i = 0; i < c.n_layer; ++i) {
    LayerWeights& l = w->layers[i];
    const std::string p = absl::StrCat("blk.", i, ".");
    MESA_RETURN_IF_ERROR(b.Vector(p + "attn_norm.weight", c.n_embd, &l.attn_norm));
    MESA_RETURN_IF_ERROR(b.Vector(p + "ffn_norm.weight", c.n_embd, &l.ffn_norm));
    MESA_RETURN_IF_ERROR(b.Matrix(p + "attn_output.weight", c.n_embd, q_dim, &l.wo));
    MESA_RETURN_IF_ERROR(b.Matrix(p + "ffn_up.weight", c.n_ff, c.n_embd, &l.w_up));
    MESA_RETURN_IF_ERROR(b.Matrix(p + "ffn_down.weight", c.n_embd, c.n_ff, &l.w_down));
    switch (c.arch) {
      case Arch::kLlama:
      case Arch::kQwen2: {
        MESA_RETURN_IF_ERROR(b.Matrix(p + "attn_q.weight", q_dim, c.n_embd, &l.wq));
        MESA_RETURN_IF_ERROR(b.Matrix(p + "attn_k.weight", kv_dim, c.n_embd, &l.wk));
        MESA_RETURN_IF_ERROR(b.Matrix(p + "attn_v.weight", kv_dim, c.n_embd, &l.wv));
        MESA_RETURN_IF_ERROR(b.Matrix(p + "ffn_gate.weight", c.n_ff, c.n_embd, &l.w_gate));
        // Qwen2 requires q/k/v biases; llama files occasionally carry them too.
        const bool need_bias = c.arch == Arch::kQwen2;
        MESA_RETURN_IF_ERROR(b.Vector(p + "attn_q.bias", q_dim, &l.bq, !need_bias));
        MESA_RETURN_IF_ERROR(b.Vector(p + "attn_k.bias", kv_dim, &l.bk, !need_bias));
        MESA_RETURN_IF_ERROR(b.Vector(p + "attn_v.bias", kv_dim, &l.bv, !need_bias));
        MESA_RETURN_IF_ERROR(b.Vector(p + "attn_output.bias", c.n_embd, &l.bo, true));
        break;
      }
      case Arch::kMpt: {
        MESA_RETURN_IF_ERROR(b.Vector(p + "attn_norm.bias", c.n_embd, &l.attn_norm_b, true));
        MESA_RETURN_IF_ERROR(b.Vector(p + "ffn_norm.bias", c.n_embd, &l.ffn_norm_b, true));
        MESA_RETURN_IF_ERROR(b.Matrix(p + "attn_qkv.weight", q_dim + 2 * kv_dim, c.n_embd, &l.wqkv));
        MESA_RETURN_IF_ERROR(b.Vector(p + "attn_qkv.bias", q_dim + 2 * kv_dim, &l.bqkv, true));
        MESA_RETURN_IF_ERROR(b.Vector(p + "attn_output.bias", c.n_embd, &l.bo, true));
        MESA_RETURN_IF_ERROR(b.Vector(p + "ffn_up.bias", c.n_ff, &l.b_up, true));
        MESA_RETURN_IF_ERROR(b.Vector(p + "ffn_down.bias", c.n_embd, &l.b_down, true));
        break;
      }
    }
  }
  return absl::OkStatus();
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Hugging Face name of a GGUF-style tensor name, or "" when there is none.
std::string HfName(const std::string& g) {
  static const std::pair<const char*, const char*> kGlobal[] = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
  };
  for (const auto& [from, to] : kGlobal) {
    if (g == from) return to;
  }
  if (g.rfind("blk.", 0) != 0) return "";
  const size_t dot = g.find('.', 4);
  if (dot == std::string::npos) return "";
  const std::string layer = g.substr(4, dot - 4);
  const std::string rest = g.substr(dot + 1);
  static const std::pair<const char*, const char*> kLayer[] = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},
      {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"attn_output.bias", "self_attn.o_proj.bias"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
  };
  for (const auto& [from, to] : kLayer) {
    if (rest == from) return absl::StrCat("model.layers.", layer, ".", to);
  }
  return "";
}

int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The matrices the forward pass multiplies with (not the embedding table, which is only
// looked up row by row).
std::vector<WeightView*> ProductMatrices(ModelWeights& w) {
  std::vector<WeightView*> views = {&w.output};
  for (LayerWeights& l : w.layers) {
    for (WeightView* v : {&l.wq, &l.wk, &l.wv, &l.wqkv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      if (v->data != nullptr) views.push_back(v);
    }
  }
  return views;
}

// Applies options.weight_memory: under kOwn each matrix is packed for this CPU or else
// copied into huge-page memory (kept in model->storage); `release` hears of each
// original that was copied (its file pages need not stay resident).
void PlaceWeights(Model* model, const LoadOptions& options,
                  const std::function<void(const WeightView&)>& release) {
  std::vector<WeightView*> views = ProductMatrices(model->weights);
  LoadOptions::WeightMemory mode = options.weight_memory;
  if (mode == LoadOptions::WeightMemory::kAuto) {
    uint64_t bytes = 0;
    for (const WeightView* v : views) bytes += static_cast<uint64_t>(v->rows * v->row_bytes());
    const uint64_t available = AvailableMemoryBytes();
    mode = available == 0 || bytes <= available / 2 ? LoadOptions::WeightMemory::kOwn
                                                    : LoadOptions::WeightMemory::kMapped;
  }
  model->weights_in_own_memory = mode == LoadOptions::WeightMemory::kOwn;
  if (!model->weights_in_own_memory) return;
  // One arena for all (each matrix 64-byte aligned): separate huge-page buffers would
  // round every small matrix up to 2 MiB.
  std::vector<int64_t> offset(views.size() + 1, 0), packed(views.size());
  for (size_t i = 0; i < views.size(); ++i) {
    packed[i] = cpu::PackedBytes(*views[i]);
    const int64_t bytes = packed[i] > 0 ? packed[i] : views[i]->rows * views[i]->row_bytes();
    offset[i + 1] = offset[i] + (bytes + 63) / 64 * 64;
  }
  std::shared_ptr<uint8_t> arena = AllocateHugeBuffer(static_cast<size_t>(offset.back()));
  if (arena == nullptr) {
    model->weights_in_own_memory = false;  // stays mapped
    return;
  }
  model->storage.push_back(arena);
  for (size_t i = 0; i < views.size(); ++i) {
    WeightView* v = views[i];
    const WeightView original = *v;
    uint8_t* dst = arena.get() + offset[i];
    if (packed[i] > 0) {
      cpu::PackWeightsInto(original, dst);
      v->packed = dst;
    } else {
      std::memcpy(dst, original.data, static_cast<size_t>(original.rows * original.row_bytes()));
      v->data = dst;
      // A tied embedding is the same matrix: its row lookups read the copy too.
      if (model->weights.token_embd.data == original.data) model->weights.token_embd.data = dst;
    }
    if (release) release(original);
  }
}

absl::Status AttachGgufTokenizer(const GgufFile& file, const std::string& path, Model* model) {
  auto tok = CreateTokenizerFromGguf(file);
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        absl::StrCat(path, ": cannot build the tokenizer: ", tok.status().message()));
  }
  model->tokenizer = std::move(tok).value();
  return absl::OkStatus();
}

absl::Status AttachHfTokenizer(const std::string& dir, Model* model) {
  auto tok = CreateTokenizerFromHfJson(dir + "/tokenizer.json");
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        absl::StrCat(dir, ": cannot build the tokenizer: ", tok.status().message()));
  }
  model->tokenizer = std::move(tok).value();
  return absl::OkStatus();
}

// The weights of a Hugging Face directory (`config_text` is its config.json) into
// `model`, placed per `options`.
absl::Status BindHfWeights(const std::string& dir, const std::string& config_text, const std::string& config_path,
                           const LoadOptions& options, Model* model) {
  ModelConfig& c = model->config;
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsModel> st_owned, SafetensorsModel::OpenDir(dir));
  std::shared_ptr<SafetensorsModel> st(std::move(st_owned));
  model->storage.push_back(st);

  bool tied = false;
  {
    nlohmann::json j = nlohmann::json::parse(config_text, nullptr, false);
    if (auto it = j.find("tie_word_embeddings"); it != j.end() && it->is_boolean()) tied = it->get<bool>();
  }
  TensorLookup lookup = [st, tied](const std::string& name) -> std::optional<RawTensor> {
    const std::string hf = HfName(name);
    if (hf.empty()) return std::nullopt;
    const SafetensorsTensor* t = st->Find(hf);
    // Tied models need only one of the embedding / lm_head matrices.
    if (t == nullptr && tied && name == "token_embd.weight") t = st->Find("lm_head.weight");
    if (t == nullptr) return std::nullopt;
    RawTensor r;
    r.type = t->type;
    r.type_known = t->supported;
    r.type_name = t->supported ? std::string(DTypeName(t->type)) : t->dtype;
    r.shape.assign(t->shape.rbegin(), t->shape.rend());
    r.data = t->data;
    return r;
  };
  // A tied model must not read a stray lm_head: bind output to the embedding.
  TensorLookup bound = lookup;
  if (tied) {
    bound = [lookup](const std::string& name) -> std::optional<RawTensor> {
      if (name == "output.weight") return std::nullopt;
      return lookup(name);
    };
  }
  Binder binder(config_path, bound, model);
  MESA_RETURN_IF_ERROR(BindWeights(c, binder, &model->weights));
  PlaceWeights(model, options, nullptr);
  model->tensor_types = binder.matrix_types();
  for (const std::string& name : st->names()) c.parameter_count += Elements(st->Find(name)->shape);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadGgufModel(const std::string& path, const LoadOptions& options) {
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file_owned, GgufFile::Open(path));
  std::shared_ptr<GgufFile> file(std::move(file_owned));
  auto model = std::make_unique<Model>();
  model->source_path = path;
  model->format = "gguf";
  model->storage.push_back(file);
  MESA_ASSIGN_OR_RETURN(model->config, ConfigFromGguf(*file));
  ModelConfig& c = model->config;
  if (options.tokenizer_only) {
    MESA_ASSIGN_OR_RETURN(model->chat_template, file->GetStringOr("tokenizer.chat_template", ""));
    MESA_RETURN_IF_ERROR(AttachGgufTokenizer(*file, path, model.get()));
    c.n_vocab = model->tokenizer->vocab_size();
    MESA_RETURN_IF_ERROR(ValidateConfig(c, path));
    for (const GgufTensorInfo& t : file->tensors()) c.parameter_count += t.elements();
    return model;
  }
  const GgufTensorInfo* embd = file->FindTensor("token_embd.weight");
  if (embd == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": missing tensor 'token_embd.weight'"));
  }
  if (embd->shape.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor 'token_embd.weight' has shape ",
                                                   ShapeString(embd->shape), ", expected 2-D"));
  }
  c.n_vocab = embd->shape[1];
  MESA_RETURN_IF_ERROR(ValidateConfig(c, path));

  TensorLookup lookup = [file](const std::string& name) -> std::optional<RawTensor> {
    const GgufTensorInfo* t = file->FindTensor(name);
    if (t == nullptr) return std::nullopt;
    return RawTensor{t->type, true, std::string(DTypeName(t->type)), t->shape, t->data};
  };
  Binder binder(path, lookup, model.get());
  MESA_RETURN_IF_ERROR(BindWeights(c, binder, &model->weights));
  // The copies are what the forward pass reads; the file's pages of each matrix, read
  // once to copy it, need not stay resident (whatever reads the file's layout later
  // gets them back from the page cache).
  PlaceWeights(model.get(), options,
               [&file](const WeightView& v) { file->DropPages(v.data, v.rows * v.row_bytes()); });
  model->tensor_types = binder.matrix_types();
  for (const GgufTensorInfo& t : file->tensors()) c.parameter_count += t.elements();
  MESA_ASSIGN_OR_RETURN(model->chat_template, file->GetStringOr("tokenizer.chat_template", ""));
  if (options.load_tokenizer) MESA_RETURN_IF_ERROR(AttachGgufTokenizer(*file, path, model.get()));
  return model;
}

absl::StatusOr<std::unique_ptr<Model>> LoadHfModel(const std::string& dir, const LoadOptions& options) {
  const std::string config_path = dir + "/config.json";
  MESA_ASSIGN_OR_RETURN(std::string config_text, ReadTextFile(config_path));
  auto model = std::make_unique<Model>();
  model->source_path = dir;
  model->format = "hf";
  MESA_ASSIGN_OR_RETURN(model->config, ConfigFromHfJson(config_text, config_path));
  ModelConfig& c = model->config;
  MESA_RETURN_IF_ERROR(ValidateConfig(c, config_path));
  if (!options.tokenizer_only) MESA_RETURN_IF_ERROR(BindHfWeights(dir, config_text, config_path, options, model.get()));
  if (auto tc = ReadTextFile(dir + "/tokenizer_config.json"); tc.ok()) {
    nlohmann::json j = nlohmann::json::parse(*tc, nullptr, false);
    if (j.is_object()) {
      if (auto it = j.find("chat_template"); it != j.end() && it->is_string()) {
        model->chat_template = it->get<std::string>();
      }
    }
  }
  if (options.load_tokenizer || options.tokenizer_only) MESA_RETURN_IF_ERROR(AttachHfTokenizer(dir, model.get()));
  return model;
}

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path, const LoadOptions& options) {
  if (IsDirectory(path)) return LoadHfModel(path, options);
  return LoadGgufModel(path, options);
}

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path) {
  return LoadModel(path, LoadOptions{});
}
absl::StatusOr<std::unique_ptr<Model>> LoadGgufModel(const std::string& path) {
  return LoadGgufModel(path, LoadOptions{});
}
absl::StatusOr<std::unique_ptr<Model>> LoadHfModel(const std::string& dir) {
  return LoadHfModel(dir, LoadOptions{});
}

}  // namespace mesa
