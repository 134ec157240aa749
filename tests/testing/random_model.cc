// Writes random-weight GGUF models (see random_model.h). Scales: embeddings ~N(0,1),
// projections ~N(0, 1/fan_in) so activations keep unit scale through the layers, and
// the output matrix ~N(0, 4/n_embd) so logits spread over a few units (not uniform,
// not one-hot). Norm weights ~1 + N(0, 0.1^2), biases ~N(0, 0.1^2).
#include "tests/testing/random_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/gguf.h"
#include "kernels/ref/quant_ref.h"

namespace mesa::testing {
namespace {

// Deterministic on every platform (unlike std::normal_distribution).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return (static_cast<double>(Next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  double Normal() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(Uniform()));
    const double a = 2.0 * M_PI * Uniform();
    spare_ = r * std::sin(a);
    have_spare_ = true;
    return r * std::cos(a);
  }

 private:
  uint64_t state_;
  bool have_spare_ = false;
  double spare_ = 0;
};

class ModelBuilder {
 public:
  ModelBuilder(const RandomModelSpec& spec, GgufWriter* w) : spec_(spec), w_(*w), rng_(spec.seed) {}

  // A [rows x cols] matrix (ggml shape {cols, rows}) in the spec's type.
  void Matrix(const std::string& name, int64_t rows, int64_t cols, double stddev) {
    ++matrix_index_;
    if (spec_.type != DType::kF32 && spec_.type != DType::kF16) {
      return ParallelMatrix(name, rows, cols, stddev);
    }
    const int64_t n = rows * cols;
    std::vector<uint8_t> bytes;
    if (spec_.type == DType::kF16) {
      bytes.resize(n * 2);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = F32ToF16(static_cast<float>(rng_.Normal() * stddev));
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
    } else {
      bytes.resize(n * 4);
      for (int64_t i = 0; i < n; ++i) {
        const float f = static_cast<float>(rng_.Normal() * stddev);
        std::memcpy(bytes.data() + 4 * i, &f, 4);
      }
    }
    w_.AddTensor(name, spec_.type, {cols, rows}, std::move(bytes));
  }
  // An f32 vector: mean + N(0, stddev^2).
  void Vector(const std::string& name, int64_t n, double mean, double stddev) {
    std::vector<uint8_t> bytes(n * 4);
    for (int64_t i = 0; i < n; ++i) {
      const float f = static_cast<float>(mean + rng_.Normal() * stddev);
      std::memcpy(bytes.data() + 4 * i, &f, 4);
    }
    w_.AddTensor(name, DType::kF32, {n}, std::move(bytes));
  }

 private:
  // BF16 / Q8_0 / Q4_K: row r of matrix k from Rng(seed, k, r), rows split over threads
  // (the bytes do not depend on the thread count).
  void ParallelMatrix(const std::string& name, int64_t rows, int64_t cols, double stddev) {
    const DType type = spec_.type;
    const int64_t row_bytes = RowBytes(type, cols);
    std::vector<uint8_t> bytes(static_cast<size_t>(rows * row_bytes));
    const uint64_t tensor_seed = spec_.seed * 0xD1B54A32D192ED03ull + matrix_index_ * 0x8CB92BA72F3D8DD7ull;
    auto fill = [&](int64_t r0, int64_t r1) {
      std::vector<float> row(cols);
      for (int64_t r = r0; r < r1; ++r) {
        Rng rng(tensor_seed ^ (static_cast<uint64_t>(r) * 0x9FB21C651E98DF25ull));
        for (int64_t c = 0; c < cols; ++c) row[c] = static_cast<float>(rng.Normal() * stddev);
        uint8_t* dst = bytes.data() + r * row_bytes;
        switch (type) {
          case DType::kBF16:
            for (int64_t c = 0; c < cols; ++c) {
              const uint16_t h = F32ToBF16(row[c]);
              std::memcpy(dst + 2 * c, &h, 2);
            }
            break;
          case DType::kQ8_0: ref::QuantizeRowQ8_0(row.data(), dst, cols); break;
          case DType::kQ4_K: ref::QuantizeRowQ4_K(row.data(), dst, cols); break;
          default: std::abort();  // WriteRandomGguf checked the type
        }
      }
    };
    const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 64);
    const int64_t per = (rows + threads - 1) / threads;
    if (rows * cols < (int64_t{1} << 20) || threads == 1) {
      fill(0, rows);
    } else {
      std::vector<std::thread> pool;
      for (int64_t r0 = 0; r0 < rows; r0 += per) pool.emplace_back(fill, r0, std::min(rows, r0 + per));
      for (auto& t : pool) t.join();
    }
    w_.AddTensor(name, type, {cols, rows}, std::move(bytes));
  }

  const RandomModelSpec& spec_;
  GgufWriter& w_;
  Rng rng_;
  uint64_t matrix_index_ = 0;
};

// Copies tokenizer.* metadata from `source`, truncating or padding the per-token
// arrays to `n_vocab` (0: keep). Returns the resulting vocab size.
absl::StatusOr<int64_t> CopyTokenizer(const std::string& source, int64_t n_vocab, GgufWriter* w) {
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> src, GgufFile::Open(source));
  MESA_ASSIGN_OR_RETURN(std::vector<std::string> tokens, src->GetStringArray("tokenizer.ggml.tokens"));
  const int64_t src_vocab = static_cast<int64_t>(tokens.size());
  if (n_vocab <= 0) n_vocab = src_vocab;
  for (const auto& [key, value] : src->metadata()) {
    if (key.rfind("tokenizer.", 0) != 0) continue;
    GgufValue v = value;
    if (auto* arr = std::get_if<GgufArray>(&v.value);
        arr != nullptr && static_cast<int64_t>(arr->items.size()) == src_vocab && key != "tokenizer.ggml.merges") {
      if (n_vocab < src_vocab) {
        arr->items.resize(n_vocab);
      } else {
        for (int64_t i = src_vocab; i < n_vocab; ++i) {
          GgufValue pad;
          pad.type = arr->elem_type;
          if (key == "tokenizer.ggml.tokens") {
            pad.value = absl::StrCat("[extra_", i, "]");
          } else if (key == "tokenizer.ggml.scores") {
            pad.value = -1000.0;
          } else if (key == "tokenizer.ggml.token_type") {
            pad.value = int64_t{1};  // normal
          } else {
            pad = arr->items.back();
          }
          arr->items.push_back(std::move(pad));
        }
      }
    }
    w->SetValue(key, std::move(v));
  }
  // Special token ids must stay inside the vocab.
  for (const char* k : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"}) {
    auto id = src->GetIntOr(k, -1);
    if (id.ok() && *id >= n_vocab) w->SetUint32(k, 0);
  }
  return n_vocab;
}

// A minimal SentencePiece-style vocab: <unk>, <s>, </s>, the 256 byte tokens, then
// filler pieces.
absl::StatusOr<int64_t> SyntheticTokenizer(int64_t n_vocab, GgufWriter* w) {
  if (n_vocab <= 0) n_vocab = 512;
  if (n_vocab < 259) return absl::InvalidArgumentError("synthetic tokenizer needs n_vocab >= 259");
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<float> scores = {0, 0, 0};
  std::vector<int32_t> types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    tokens.push_back(buf);
    scores.push_back(0);
    types.push_back(6);
  }
  for (int64_t i = 259; i < n_vocab; ++i) {
    tokens.push_back(absl::StrCat("\xe2\x96\x81t", i));
    scores.push_back(-static_cast<float>(i));
    types.push_back(1);
  }
  w->SetString("tokenizer.ggml.model", "llama");
  w->SetStringArray("tokenizer.ggml.tokens", tokens);
  w->SetFloat32Array("tokenizer.ggml.scores", scores);
  w->SetInt32Array("tokenizer.ggml.token_type", types);
  w->SetUint32("tokenizer.ggml.bos_token_id", 1);
  w->SetUint32("tokenizer.ggml.eos_token_id", 2);
  w->SetUint32("tokenizer.ggml.unknown_token_id", 0);
  return n_vocab;
}

}  // namespace

absl::StatusOr<DType> RandomModelType(const std::string& name) {
  if (name == "f32") return DType::kF32;
  if (name == "f16") return DType::kF16;
  if (name == "bf16") return DType::kBF16;
  if (name == "q8_0") return DType::kQ8_0;
  if (name == "q4_k") return DType::kQ4_K;
  return absl::InvalidArgumentError(absl::StrCat("random model: unknown type '", name,
                                                 "' (f32, f16, bf16, q8_0 or q4_k)"));
}

std::string DefaultTokenizerSource() {
  const char* shared = std::getenv("MESA_SHARED_DIR");
  const std::string dir = shared != nullptr && *shared != '\0' ? shared : "../shared";
  return dir + "/models/stories260K-f32.gguf";
}

absl::Status WriteRandomGguf(const RandomModelSpec& spec, const std::string& path) {
  const std::string& a = spec.arch;
  if (a != "llama" && a != "qwen2" && a != "mpt") {
    return absl::InvalidArgumentError(absl::StrCat("random model: unsupported arch '", a, "'"));
  }
  if (spec.type != DType::kF32 && spec.type != DType::kF16 && spec.type != DType::kBF16 &&
      spec.type != DType::kQ8_0 && spec.type != DType::kQ4_K) {
    return absl::InvalidArgumentError("random model: type must be f32, f16, bf16, q8_0 or q4_k");
  }
  const int64_t n_head_kv = spec.n_head_kv > 0 ? spec.n_head_kv : spec.n_head;
  if (spec.n_embd <= 0 || spec.n_layer <= 0 || spec.n_head <= 0 || spec.n_ff <= 0 ||
      spec.n_head % n_head_kv != 0 || (spec.head_dim == 0 && spec.n_embd % spec.n_head != 0)) {
    return absl::InvalidArgumentError("random model: inconsistent sizes");
  }
  const int64_t head_dim = spec.head_dim > 0 ? spec.head_dim : spec.n_embd / spec.n_head;
  if (a == "mpt" && head_dim * spec.n_head != spec.n_embd) {
    return absl::InvalidArgumentError("random model: mpt needs head_dim * n_head == n_embd");
  }
  const int64_t q_dim = spec.n_head * head_dim;
  const int64_t kv_dim = n_head_kv * head_dim;
  // Every matrix row (n_embd, q_dim, n_ff columns) must hold whole blocks.
  const int64_t block = GetDTypeInfo(spec.type).block_elems;
  for (int64_t cols : {spec.n_embd, q_dim, spec.n_ff}) {
    if (cols % block != 0) {
      return absl::InvalidArgumentError(absl::StrCat("random model: ", std::string(DTypeName(spec.type)),
                                                     " needs rows of whole ", block, "-element blocks; ",
                                                     cols, " is not a multiple of ", block));
    }
  }

  GgufWriter w;
  w.SetString("general.architecture", a);
  w.SetString("general.name", absl::StrCat("random-", a, "-seed", spec.seed));
  // llama.cpp's LLAMA_FTYPE: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7, MOSTLY_Q4_K_S 14
  // (every matrix Q4_K), MOSTLY_BF16 32.
  const uint32_t file_type = spec.type == DType::kF16    ? 1
                             : spec.type == DType::kQ8_0 ? 7
                             : spec.type == DType::kQ4_K ? 14
                             : spec.type == DType::kBF16 ? 32
                                                         : 0;
  w.SetUint32("general.file_type", file_type);
  w.SetUint32(a + ".context_length", static_cast<uint32_t>(spec.context_length));
  w.SetUint32(a + ".embedding_length", static_cast<uint32_t>(spec.n_embd));
  w.SetUint32(a + ".block_count", static_cast<uint32_t>(spec.n_layer));
  w.SetUint32(a + ".feed_forward_length", static_cast<uint32_t>(spec.n_ff));
  w.SetUint32(a + ".attention.head_count", static_cast<uint32_t>(spec.n_head));
  w.SetUint32(a + ".attention.head_count_kv", static_cast<uint32_t>(n_head_kv));
  if (a == "mpt") {
    w.SetFloat32(a + ".attention.layer_norm_epsilon", spec.norm_eps);
    w.SetFloat32(a + ".attention.max_alibi_bias", spec.max_alibi_bias);
    if (spec.clamp_kqv > 0) w.SetFloat32(a + ".attention.clamp_kqv", spec.clamp_kqv);
  } else {
    w.SetFloat32(a + ".attention.layer_norm_rms_epsilon", spec.norm_eps);
    w.SetFloat32(a + ".rope.freq_base", spec.rope_freq_base);
    w.SetUint32(a + ".rope.dimension_count", static_cast<uint32_t>(head_dim));
    if (head_dim * spec.n_head != spec.n_embd) {
      w.SetUint32(a + ".attention.key_length", static_cast<uint32_t>(head_dim));
      w.SetUint32(a + ".attention.value_length", static_cast<uint32_t>(head_dim));
    }
  }
  const std::string source = spec.tokenizer_source.empty() ? DefaultTokenizerSource() : spec.tokenizer_source;
  auto n_vocab_or = source == kSyntheticTokenizer ? SyntheticTokenizer(spec.n_vocab, &w)
                                                  : CopyTokenizer(source, spec.n_vocab, &w);
  if (!n_vocab_or.ok()) {
    return absl::Status(n_vocab_or.status().code(),
                        absl::StrCat("random model: cannot copy the tokenizer from ", source, ": ",
                                     n_vocab_or.status().message()));
  }
  const int64_t n_vocab = *n_vocab_or;

  ModelBuilder b(spec, &w);
  const double e = static_cast<double>(spec.n_embd);
  b.Matrix("token_embd.weight", n_vocab, spec.n_embd, 1.0);
  b.Vector("output_norm.weight", spec.n_embd, 1.0, 0.1);
  if (a == "mpt") b.Vector("output_norm.bias", spec.n_embd, 0.0, 0.1);
  if (!spec.tied_output) b.Matrix("output.weight", n_vocab, spec.n_embd, 2.0 / std::sqrt(e));
  for (int64_t i = 0; i < spec.n_layer; ++i) {
    const std::string p = absl::StrCat("blk.", i, ".");
    b.Vector(p + "attn_norm.weight", spec.n_embd, 1.0, 0.1);
    if (a == "mpt") {
      b.Vector(p + "attn_norm.bias", spec.n_embd, 0.0, 0.1);
      b.Matrix(p + "attn_qkv.weight", q_dim + 2 * kv_dim, spec.n_embd, 1.0 / std::sqrt(e));
      b.Vector(p + "attn_qkv.bias", q_dim + 2 * kv_dim, 0.0, 0.1);
      b.Matrix(p + "attn_output.weight", spec.n_embd, q_dim, 1.0 / std::sqrt(double(q_dim)));
      b.Vector(p + "attn_output.bias", spec.n_embd, 0.0, 0.1);
      b.Vector(p + "ffn_norm.weight", spec.n_embd, 1.0, 0.1);
      b.Vector(p + "ffn_norm.bias", spec.n_embd, 0.0, 0.1);
      b.Matrix(p + "ffn_up.weight", spec.n_ff, spec.n_embd, 1.0 / std::sqrt(e));
      b.Vector(p + "ffn_up.bias", spec.n_ff, 0.0, 0.1);
      b.Matrix(p + "ffn_down.weight", spec.n_embd, spec.n_ff, 1.0 / std::sqrt(double(spec.n_ff)));
      b.Vector(p + "ffn_down.bias", spec.n_embd, 0.0, 0.1);
      continue;
    }
    b.Matrix(p + "attn_q.weight", q_dim, spec.n_embd, 1.0 / std::sqrt(e));
    b.Matrix(p + "attn_k.weight", kv_dim, spec.n_embd, 1.0 / std::sqrt(e));
    b.Matrix(p + "attn_v.weight", kv_dim, spec.n_embd, 1.0 / std::sqrt(e));
    if (a == "qwen2") {
      b.Vector(p + "attn_q.bias", q_dim, 0.0, 0.1);
      b.Vector(p + "attn_k.bias", kv_dim, 0.0, 0.1);
      b.Vector(p + "attn_v.bias", kv_dim, 0.0, 0.1);
    }
    b.Matrix(p + "attn_output.weight", spec.n_embd, q_dim, 1.0 / std::sqrt(double(q_dim)));
    b.Vector(p + "ffn_norm.weight", spec.n_embd, 1.0, 0.1);
    b.Matrix(p + "ffn_gate.weight", spec.n_ff, spec.n_embd, 1.0 / std::sqrt(e));
    b.Matrix(p + "ffn_up.weight", spec.n_ff, spec.n_embd, 1.0 / std::sqrt(e));
    b.Matrix(p + "ffn_down.weight", spec.n_embd, spec.n_ff, 1.0 / std::sqrt(double(spec.n_ff)));
  }
  return w.Write(path);
}

}  // namespace mesa::testing
