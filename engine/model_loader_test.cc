// Tests for the model loaders: the shared real models (GGUF and Hugging Face), random
// llama/qwen2/mpt GGUFs, mixed quantized types, clear errors for missing tensors,
// wrong shapes, unsupported architectures and types, and truncated files, and the
// tokenizer-only load (vocab-only GGUFs, Hugging Face directories without weights).
#include "engine/model_loader.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "engine/gguf.h"
#include "engine/mesa_plan.h"
#include "gtest/gtest.h"
#include "tests/testing/random_model.h"
#include "tests/testing/temp_path.h"

namespace mesa {
namespace {

using ::mesa::testing::RandomModelSpec;
using ::mesa::testing::WriteRandomGguf;

const LoadOptions kNoTokenizer{.load_tokenizer = false};

std::string SharedModel(const std::string& rel) {
  const char* shared = std::getenv("MESA_SHARED_DIR");
  if (shared == nullptr || *shared == '\0') return "";
  const std::string p = std::string(shared) + "/models/" + rel;
  return std::filesystem::exists(p) ? p : "";
}

#define REQUIRE_SHARED(var, rel)                                                          \
  const std::string var = SharedModel(rel);                                               \
  if (var.empty()) GTEST_SKIP() << "shared model " << rel                                 \
                                << " unavailable (set MESA_SHARED_DIR to ../shared)"

std::string Temp(const std::string& name) { return mesa::testing::UniqueTempPath("loader_test_" + name); }

RandomModelSpec Spec(const std::string& arch) {
  RandomModelSpec s;
  s.arch = arch;
  s.n_embd = 256;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_head_kv = arch == "mpt" ? 4 : 2;
  s.n_ff = 512;
  s.n_vocab = 300;
  s.tokenizer_source = ::mesa::testing::kSyntheticTokenizer;
  return s;
}

std::string WriteSpec(const RandomModelSpec& s, const std::string& name) {
  const std::string path = Temp(name + ".gguf");
  absl::Status st = WriteRandomGguf(s, path);
  EXPECT_TRUE(st.ok()) << st;
  return path;
}

// Rewrites `src` to `dst`: `edit_meta` may change metadata, `edit_tensor` may change a
// tensor (return false to drop it).
struct TensorEdit {
  std::string name;
  DType type;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
void Rewrite(const std::string& src, const std::string& dst,
             const std::function<void(GgufWriter&)>& edit_meta,
             const std::function<bool(TensorEdit&)>& edit_tensor) {
  auto f = GgufFile::Open(src);
  ASSERT_TRUE(f.ok()) << f.status();
  GgufWriter w;
  for (const auto& [k, v] : (*f)->metadata()) w.SetValue(k, v);
  if (edit_meta) edit_meta(w);
  for (const GgufTensorInfo& t : (*f)->tensors()) {
    TensorEdit e{t.name, t.type, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)};
    if (edit_tensor && !edit_tensor(e)) continue;
    w.AddTensor(e.name, e.type, e.shape, std::move(e.bytes));
  }
  ASSERT_TRUE(w.Write(dst).ok());
}

void ExpectError(const absl::StatusOr<std::unique_ptr<Model>>& r, absl::StatusCode code,
                 const std::vector<std::string>& needles) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), code) << r.status();
  for (const std::string& n : needles) {
    EXPECT_TRUE(absl::StrContains(r.status().message(), n)) << r.status() << "\nwant: " << n;
  }
}

TEST(ModelLoaderTest, Stories260K) {
  REQUIRE_SHARED(path, "stories260K-f32.gguf");
  auto m = LoadGgufModel(path, kNoTokenizer);
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelConfig& c = (*m)->config;
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.arch_name, "llama");
  EXPECT_EQ(c.n_embd, 64);
  EXPECT_EQ(c.n_layer, 5);
  EXPECT_EQ(c.n_head, 8);
  EXPECT_EQ(c.n_head_kv, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.rope_dims, 8);
  EXPECT_EQ(c.n_vocab, 512);
  EXPECT_EQ(c.context_length, 512);
  EXPECT_EQ(c.rope_freq_base, 10000.0f);
  EXPECT_EQ(c.rope_freq_scale, 1.0f);
  EXPECT_EQ(c.rope_style, RopeStyle::kNormal);
  EXPECT_EQ(c.norm, NormType::kRms);
  EXPECT_EQ(c.position, PositionType::kRope);
  EXPECT_EQ(c.ffn, FfnType::kSwiGlu);
  EXPECT_GT(c.parameter_count, 200000);
  EXPECT_LT(c.parameter_count, 400000);
  EXPECT_EQ((*m)->format, "gguf");
  EXPECT_EQ((*m)->tensor_types, (std::vector<std::string>{"f32"}));
  const ModelWeights& w = (*m)->weights;
  ASSERT_EQ(w.layers.size(), 5u);
  EXPECT_EQ(w.token_embd.rows, 512);
  EXPECT_EQ(w.token_embd.cols, 64);
  EXPECT_NE(w.output.data, nullptr);
  EXPECT_NE(w.output_norm, nullptr);
  for (const LayerWeights& l : w.layers) {
    EXPECT_EQ(l.wq.rows, 64);
    EXPECT_EQ(l.wk.rows, 32);
    EXPECT_EQ(l.wv.rows, 32);
    EXPECT_EQ(l.wo.cols, 64);
    EXPECT_NE(l.w_gate.data, nullptr);
    EXPECT_NE(l.attn_norm, nullptr);
    EXPECT_NE(l.ffn_norm, nullptr);
    EXPECT_EQ(l.bq, nullptr);
    EXPECT_FALSE(l.fused_qkv());
  }
  // With the tokenizer: either it loads, or the failure is the tokenizer's, cleanly.
  auto full = LoadModel(path);
  if (full.ok()) {
    EXPECT_NE((*full)->tokenizer, nullptr);
  } else {
    EXPECT_TRUE(absl::StrContains(full.status().message(), "tokenizer")) << full.status();
  }
}

TEST(ModelLoaderTest, HfDirectoryAgreesWithGguf) {
  REQUIRE_SHARED(gguf_path, "tinystories-656k-f32.gguf");
  REQUIRE_SHARED(hf_dir, "tinystories-656k-hf");
  auto g = LoadModel(gguf_path, kNoTokenizer);
  auto h = LoadModel(hf_dir, kNoTokenizer);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_TRUE(h.ok()) << h.status();
  const ModelConfig& a = (*g)->config;
  const ModelConfig& b = (*h)->config;
  EXPECT_EQ((*h)->format, "hf");
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.n_embd, 128);
  EXPECT_EQ(a.n_embd, b.n_embd);
  EXPECT_EQ(a.n_layer, 2);
  EXPECT_EQ(a.n_layer, b.n_layer);
  EXPECT_EQ(a.n_head, 8);
  EXPECT_EQ(a.n_head, b.n_head);
  EXPECT_EQ(a.n_head_kv, 4);
  EXPECT_EQ(a.n_head_kv, b.n_head_kv);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rope_dims, b.rope_dims);
  EXPECT_EQ(a.n_ff, b.n_ff);
  EXPECT_EQ(a.n_vocab, 2048);
  EXPECT_EQ(a.n_vocab, b.n_vocab);
  EXPECT_EQ(a.context_length, b.context_length);
  EXPECT_FLOAT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.rope_freq_base, b.rope_freq_base);
  EXPECT_EQ(a.rope_style, RopeStyle::kNormal);
  EXPECT_EQ(b.rope_style, RopeStyle::kNeox);
  EXPECT_EQ(a.parameter_count, b.parameter_count);
  // Tied embeddings in both.
  const ModelWeights& wa = (*g)->weights;
  const ModelWeights& wb = (*h)->weights;
  EXPECT_EQ(wb.output.data, wb.token_embd.data);
  const size_t embd_bytes = 2048 * 128 * 4;
  EXPECT_EQ(std::memcmp(wa.token_embd.data, wb.token_embd.data, embd_bytes), 0);
  EXPECT_EQ(std::memcmp(wa.layers[1].w_down.data, wb.layers[1].w_down.data, 128 * 384 * 4), 0);
  EXPECT_EQ(std::memcmp(wa.layers[0].wv.data, wb.layers[0].wv.data, 64 * 128 * 4), 0);
  EXPECT_EQ(std::memcmp(wa.output_norm, wb.output_norm, 128 * 4), 0);
  EXPECT_EQ(std::memcmp(wa.layers[0].attn_norm, wb.layers[0].attn_norm, 128 * 4), 0);
}

TEST(ModelLoaderTest, RandomLlamaQwen2Mpt) {
  for (const std::string arch : {"llama", "qwen2", "mpt"}) {
    SCOPED_TRACE(arch);
    RandomModelSpec s = Spec(arch);
    if (arch == "mpt") s.clamp_kqv = 6.0f;
    auto m = LoadGgufModel(WriteSpec(s, arch), kNoTokenizer);
    ASSERT_TRUE(m.ok()) << m.status();
    const ModelConfig& c = (*m)->config;
    EXPECT_EQ(c.arch_name, arch);
    EXPECT_EQ(c.n_embd, 256);
    EXPECT_EQ(c.n_vocab, 300);
    EXPECT_EQ(c.n_head_kv, s.n_head_kv);
    const LayerWeights& l = (*m)->weights.layers[1];
    if (arch == "mpt") {
      EXPECT_EQ(c.position, PositionType::kAlibi);
      EXPECT_EQ(c.norm, NormType::kLayerNorm);
      EXPECT_EQ(c.ffn, FfnType::kGelu);
      EXPECT_EQ(c.alibi_bias_max, 8.0f);
      EXPECT_EQ(c.clamp_kqv, 6.0f);
      EXPECT_TRUE(l.fused_qkv());
      EXPECT_EQ(l.wqkv.rows, 3 * 256);
      EXPECT_NE(l.bqkv, nullptr);
      EXPECT_NE(l.attn_norm_b, nullptr);
      EXPECT_NE(l.b_up, nullptr);
      EXPECT_NE((*m)->weights.output_norm_b, nullptr);
    } else {
      EXPECT_EQ(c.rope_style, arch == "qwen2" ? RopeStyle::kNeox : RopeStyle::kNormal);
      EXPECT_EQ(l.wk.rows, 128);
      EXPECT_EQ(l.bq != nullptr, arch == "qwen2");
      EXPECT_EQ(l.bk != nullptr, arch == "qwen2");
    }
  }
}

TEST(ModelLoaderTest, HeadDim128F16AndTiedOutput) {
  RandomModelSpec s = Spec("llama");
  s.n_head = 2;
  s.n_head_kv = 1;
  s.type = DType::kF16;
  s.tied_output = true;
  auto m = LoadGgufModel(WriteSpec(s, "hd128"), kNoTokenizer);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->config.head_dim, 128);
  EXPECT_EQ((*m)->tensor_types, (std::vector<std::string>{"f16"}));
  EXPECT_EQ((*m)->weights.output.data, (*m)->weights.token_embd.data);
  EXPECT_EQ((*m)->weights.output.type, DType::kF16);
}

TEST(ModelLoaderTest, RandomModelIsDeterministic) {
  RandomModelSpec s = Spec("qwen2");
  const std::string a = WriteSpec(s, "det_a"), b = WriteSpec(s, "det_b");
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  std::string sa((std::istreambuf_iterator<char>(fa)), {}), sb((std::istreambuf_iterator<char>(fb)), {});
  EXPECT_EQ(sa, sb);
  s.seed = 2;
  const std::string c = WriteSpec(s, "det_c");
  std::ifstream fc(c, std::ios::binary);
  std::string sc((std::istreambuf_iterator<char>(fc)), {});
  EXPECT_NE(sa, sc);
}

TEST(ModelLoaderTest, MixedQuantizedTypes) {
  const std::string src = WriteSpec(Spec("llama"), "mixed_src");
  const std::string dst = Temp("mixed.gguf");
  Rewrite(src, dst, nullptr, [](TensorEdit& e) {
    const int64_t rows = e.shape.size() > 1 ? e.shape[1] : 1;  // norms are 1-D
    if (e.name == "blk.0.attn_q.weight") {  // q8_0: 34 bytes per 32
      e.type = DType::kQ8_0;
      e.bytes.assign(rows * (e.shape[0] / 32) * 34, 0);
    } else if (e.name == "blk.0.ffn_down.weight" || e.name == "output.weight") {  // q6_K
      e.type = DType::kQ6_K;
      e.bytes.assign(rows * (e.shape[0] / 256) * 210, 0);
    } else if (e.name == "blk.1.ffn_up.weight") {
      e.type = DType::kQ4_K;
      e.bytes.assign(rows * (e.shape[0] / 256) * 144, 0);
    }
    return true;
  });
  auto m = LoadGgufModel(dst, kNoTokenizer);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->tensor_types, (std::vector<std::string>{"f32", "q4_K", "q6_K", "q8_0"}));
  EXPECT_EQ((*m)->weights.layers[0].wq.type, DType::kQ8_0);
  EXPECT_EQ((*m)->weights.output.type, DType::kQ6_K);
  EXPECT_EQ((*m)->weights.layers[0].wq.row_bytes(), 8 * 34);
}

TEST(ModelLoaderTest, MissingTensor) {
  const std::string src = WriteSpec(Spec("llama"), "miss_src");
  const std::string dst = Temp("missing.gguf");
  Rewrite(src, dst, nullptr, [](TensorEdit& e) { return e.name != "blk.1.ffn_gate.weight"; });
  ExpectError(LoadGgufModel(dst, kNoTokenizer), absl::StatusCode::kInvalidArgument,
              {"missing tensor 'blk.1.ffn_gate.weight'", "[256, 512]"});
  Rewrite(src, dst, nullptr, [](TensorEdit& e) { return e.name != "blk.0.attn_norm.weight"; });
  ExpectError(LoadGgufModel(dst, kNoTokenizer), absl::StatusCode::kInvalidArgument,
              {"missing tensor 'blk.0.attn_norm.weight'"});
  // qwen2 requires its biases.
  const std::string q = WriteSpec(Spec("qwen2"), "miss_q");
  Rewrite(q, dst, nullptr, [](TensorEdit& e) { return e.name != "blk.0.attn_k.bias"; });
  ExpectError(LoadGgufModel(dst, kNoTokenizer), absl::StatusCode::kInvalidArgument,
              {"missing tensor 'blk.0.attn_k.bias'", "[128]"});
}

TEST(ModelLoaderTest, WrongShape) {
  const std::string src = WriteSpec(Spec("llama"), "shape_src");
  const std::string dst = Temp("shape.gguf");
  Rewrite(src, dst, nullptr, [](TensorEdit& e) {
    if (e.name == "blk.1.attn_k.weight") {  // 256 rows instead of 128
      e.shape = {256, 256};
      e.bytes.assign(256 * 256 * 4, 0);
    }
    return true;
  });
  ExpectError(LoadGgufModel(dst, kNoTokenizer), absl::StatusCode::kInvalidArgument,
              {"'blk.1.attn_k.weight' has shape [256, 256], expected [256, 128]"});
  // Inconsistent hyperparameters.
  Rewrite(src, dst, [](GgufWriter& w) { w.SetUint32("llama.attention.head_count_kv", 3); }, nullptr);
  ExpectError(LoadGgufModel(dst, kNoTokenizer), absl::StatusCode::kInvalidArgument, {"multiple"});
  Rewrite(src, dst, [](GgufWriter& w) { w.SetString("llama.block_count", "two"); }, nullptr);
  ExpectError(LoadGgufModel(dst, kNoTokenizer), absl::StatusCode::kInvalidArgument, {"llama.block_count"});
}

TEST(ModelLoaderTest, UnsupportedArchAndType) {
  const std::string src = WriteSpec(Spec("llama"), "unsup_src");
  const std::string dst = Temp("unsup.gguf");
  Rewrite(src, dst, [](GgufWriter& w) { w.SetString("general.architecture", "falcon"); }, nullptr);
  ExpectError(LoadGgufModel(dst, kNoTokenizer), absl::StatusCode::kUnimplemented,
              {"unsupported architecture 'falcon'"});
  Rewrite(src, dst, nullptr, [](TensorEdit& e) {
    if (e.name == "blk.0.attn_v.weight") {  // q4_1 is a known ggml type Mesa cannot compute with
      e.type = DType::kQ4_1;
      e.bytes.assign(e.shape[1] * (e.shape[0] / 32) * 20, 0);
    }
    return true;
  });
  ExpectError(LoadGgufModel(dst, kNoTokenizer), absl::StatusCode::kUnimplemented,
              {"'blk.0.attn_v.weight' has type q4_1"});
  Rewrite(src, dst, [](GgufWriter& w) { w.SetString("llama.rope.scaling.type", "yarn"); }, nullptr);
  ExpectError(LoadGgufModel(dst, kNoTokenizer), absl::StatusCode::kUnimplemented, {"yarn"});
}

TEST(ModelLoaderTest, RopeLinearScaling) {
  const std::string src = WriteSpec(Spec("llama"), "rope_src");
  const std::string dst = Temp("rope.gguf");
  Rewrite(src, dst, [](GgufWriter& w) {
    w.SetString("llama.rope.scaling.type", "linear");
    w.SetFloat32("llama.rope.scaling.factor", 4.0f);
  }, nullptr);
  auto m = LoadGgufModel(dst, kNoTokenizer);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FLOAT_EQ((*m)->config.rope_freq_scale, 0.25f);
}

TEST(ModelLoaderTest, TruncatedFile) {
  const std::string src = WriteSpec(Spec("llama"), "trunc_src");
  std::ifstream in(src, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  for (size_t cut : {size_t{10}, size_t{200}, bytes.size() / 2, bytes.size() - 100}) {
    const std::string dst = Temp("trunc.gguf");
    std::ofstream(dst, std::ios::binary).write(bytes.data(), cut);
    auto r = LoadModel(dst, kNoTokenizer);
    ASSERT_FALSE(r.ok()) << cut;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), dst)) << r.status();
  }
  EXPECT_FALSE(LoadModel(Temp("does_not_exist.gguf")).ok());
}

TEST(ModelLoaderTest, HfErrors) {
  const std::string dir = Temp("hf_bad");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({"architectures":["GPT2LMHeadModel"]})";
  ExpectError(LoadHfModel(dir, kNoTokenizer), absl::StatusCode::kUnimplemented, {"GPT2LMHeadModel"});
  std::ofstream(dir + "/config.json") << "{broken";
  ExpectError(LoadHfModel(dir, kNoTokenizer), absl::StatusCode::kInvalidArgument, {"config.json"});
  std::ofstream(dir + "/config.json")
      << R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,"num_hidden_layers":1,)"
      << R"("num_attention_heads":4,"intermediate_size":128,"max_position_embeddings":64,"vocab_size":10})";
  auto r = LoadHfModel(dir, kNoTokenizer);  // no safetensors
  EXPECT_FALSE(r.ok());
}

const LoadOptions kTokenizerOnly{.tokenizer_only = true};

// The same ids from both tokenizers, for a few texts.
void ExpectSameTokenizer(const Tokenizer& a, const Tokenizer& b) {
  EXPECT_EQ(a.vocab_size(), b.vocab_size());
  EXPECT_EQ(a.bos_id(), b.bos_id());
  EXPECT_EQ(a.eos_id(), b.eos_id());
  for (const char* text : {"Once upon a time, there was a cat.", "<s> x</s>\n\n  y", ""}) {
    auto x = a.Encode(text, EncodeOptions{});
    auto y = b.Encode(text, EncodeOptions{});
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_EQ(*x, *y) << text;
  }
}

TEST(ModelLoaderTest, VocabOnlyGguf) {
  RandomModelSpec spec = Spec("llama");
  spec.context_length = 1024;
  spec.n_vocab = 0;  // the tokenizer's
  const std::string src = WriteSpec(spec, "vocab_src");
  const std::string dst = Temp("vocab_only.gguf");
  Rewrite(src, dst, nullptr, [](TensorEdit&) { return false; });
  // A normal load still needs the tensors.
  ExpectError(LoadGgufModel(dst, LoadOptions{}), absl::StatusCode::kInvalidArgument,
              {"missing tensor 'token_embd.weight'"});
  auto vocab = LoadModel(dst, kTokenizerOnly);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  auto full = LoadModel(src, LoadOptions{});
  ASSERT_TRUE(full.ok()) << full.status();
  const Model& v = **vocab;
  ASSERT_NE(v.tokenizer, nullptr);
  ExpectSameTokenizer(*v.tokenizer, *(*full)->tokenizer);
  EXPECT_EQ(v.config.context_length, 1024);
  EXPECT_EQ(v.config.n_layer, (*full)->config.n_layer);
  EXPECT_EQ(v.config.n_vocab, v.tokenizer->vocab_size());
  EXPECT_EQ(v.config.n_vocab, (*full)->config.n_vocab);
  EXPECT_EQ(v.config.parameter_count, 0);
  EXPECT_TRUE(v.weights.layers.empty());
  EXPECT_EQ(v.weights.token_embd.data, nullptr);
  EXPECT_TRUE(v.tensor_types.empty());
  EXPECT_EQ(v.format, "gguf");
  // A full file loads tokenizer-only too, reading no tensors.
  auto light = LoadModel(src, kTokenizerOnly);
  ASSERT_TRUE(light.ok()) << light.status();
  EXPECT_TRUE((*light)->weights.layers.empty());
  EXPECT_EQ((*light)->config.parameter_count, (*full)->config.parameter_count);
  // Without tokenizer metadata there is nothing to load.
  const std::string bare = Temp("no_vocab.gguf");
  {
    auto f = GgufFile::Open(dst);
    ASSERT_TRUE(f.ok());
    GgufWriter w;
    for (const auto& [k, val] : (*f)->metadata()) {
      if (k.rfind("tokenizer.", 0) != 0) w.SetValue(k, val);
    }
    ASSERT_TRUE(w.Write(bare).ok());
  }
  auto none = LoadModel(bare, kTokenizerOnly);
  ASSERT_FALSE(none.ok());
  EXPECT_TRUE(absl::StrContains(none.status().message(), "cannot build the tokenizer")) << none.status();
}

TEST(ModelLoaderTest, VocabOnlyStories260K) {
  REQUIRE_SHARED(path, "stories260K-f32.gguf");
  const std::string dst = Temp("stories_vocab.gguf");
  Rewrite(path, dst, nullptr, [](TensorEdit&) { return false; });
  auto vocab = LoadModel(dst, kTokenizerOnly);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  auto full = LoadModel(path);
  ASSERT_TRUE(full.ok()) << full.status();
  ExpectSameTokenizer(*(*vocab)->tokenizer, *(*full)->tokenizer);
  EXPECT_EQ((*vocab)->config.n_vocab, 512);
  EXPECT_EQ((*vocab)->chat_template, (*full)->chat_template);
  // What `mesa plan` needs: the trained length, so the same plan.
  EXPECT_EQ((*vocab)->config.context_length, 512);
  auto a = PlanMesa(3000, 64, (*vocab)->config.context_length, MesaOptions{});
  auto b = PlanMesa(3000, 64, (*full)->config.context_length, MesaOptions{});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(PlanToJson(*a), PlanToJson(*b));
}

TEST(ModelLoaderTest, TokenizerOnlyHfDirectoryNeedsNoSafetensors) {
  REQUIRE_SHARED(hf_dir, "tinystories-656k-hf");
  const std::string dir = Temp("hf_vocab");
  std::filesystem::create_directories(dir);
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
    std::filesystem::copy_file(hf_dir + "/" + f, dir + "/" + f, std::filesystem::copy_options::overwrite_existing);
  }
  EXPECT_FALSE(LoadModel(dir, LoadOptions{}).ok());  // weights are needed normally
  auto vocab = LoadModel(dir, kTokenizerOnly);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  auto full = LoadModel(hf_dir);
  ASSERT_TRUE(full.ok()) << full.status();
  ExpectSameTokenizer(*(*vocab)->tokenizer, *(*full)->tokenizer);
  EXPECT_EQ((*vocab)->config.context_length, (*full)->config.context_length);
  EXPECT_EQ((*vocab)->config.n_vocab, (*full)->config.n_vocab);
  EXPECT_EQ((*vocab)->chat_template, (*full)->chat_template);
  EXPECT_EQ((*vocab)->format, "hf");
  EXPECT_TRUE((*vocab)->weights.layers.empty());
}

}  // namespace
}  // namespace mesa
