// The random-model writer's bf16, q8_0 and q4_k matrices: the file loads and runs, the
// types and file_type are what was asked, the three types hold roundings of the same
// f32 draws (row streams keyed by seed, tensor and row), the bytes do not depend on
// anything but the spec, and sizes that do not fit the blocks are refused clearly.
#include "tests/testing/random_model.h"

#include <cmath>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "engine/forward.h"
#include "engine/gguf.h"
#include "engine/model_loader.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/matmul.h"
#include "tests/testing/temp_path.h"

namespace mesa::testing {
namespace {

RandomModelSpec SmallLlama(DType type) {
  RandomModelSpec s;
  s.n_embd = 256;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.n_ff = 512;
  s.n_vocab = 300;
  s.context_length = 256;
  s.type = type;
  s.seed = 5;
  s.tokenizer_source = kSyntheticTokenizer;
  return s;
}

std::string Write(const RandomModelSpec& s, const std::string& name) {
  const std::string path = UniqueTempPath("random_model_" + name + ".gguf");
  absl::Status st = WriteRandomGguf(s, path);
  EXPECT_TRUE(st.ok()) << st;
  return path;
}

std::vector<float> Decode(const GgufFile& f, const std::string& name, int64_t row, int64_t cols) {
  const GgufTensorInfo* t = f.FindTensor(name);
  EXPECT_NE(t, nullptr) << name;
  std::vector<float> out(cols, NAN);
  if (t) ref::DequantizeRow(t->type, t->data + row * RowBytes(t->type, cols), out.data(), cols);
  return out;
}

std::string FileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(RandomModelTypes, EachTypeLoadsRunsAndHoldsTheSameDraws) {
  const std::vector<std::pair<std::string, DType>> types = {
      {"bf16", DType::kBF16}, {"q8_0", DType::kQ8_0}, {"q4_k", DType::kQ4_K}};
  const std::vector<std::pair<std::string, uint32_t>> file_types = {{"bf16", 32}, {"q8_0", 7}, {"q4_k", 14}};
  std::vector<std::unique_ptr<GgufFile>> files;
  for (size_t i = 0; i < types.size(); ++i) {
    const auto& [name, type] = types[i];
    auto parsed = RandomModelType(name);
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, type);
    const std::string path = Write(SmallLlama(type), name);
    auto f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    for (const GgufTensorInfo& t : (*f)->tensors()) {
      const bool matrix = t.shape.size() == 2;
      EXPECT_EQ(t.type, matrix ? type : DType::kF32) << name << " " << t.name;
    }
    auto ft = (*f)->GetIntOr("general.file_type", -1);
    ASSERT_TRUE(ft.ok());
    EXPECT_EQ(*ft, file_types[i].second) << name;

    auto model = LoadModel(path, LoadOptions{.load_tokenizer = false});
    ASSERT_TRUE(model.ok()) << model.status();
    auto backend = MakeBackend("cpu", 1);
    ASSERT_TRUE(backend.ok()) << backend.status();
    ModelRunner runner(**model, **backend);
    ASSERT_TRUE(runner.status().ok()) << runner.status();
    KvCache cache = runner.NewCache(64);
    std::vector<float> logits;
    const std::vector<int32_t> tokens = {1, 17, 299, 3, 42};
    ASSERT_TRUE(runner.Forward(tokens, cache, LogitsMode::kLast, &logits).ok());
    ASSERT_EQ(logits.size(), 300u);
    double spread = 0;
    for (float v : logits) {
      ASSERT_TRUE(std::isfinite(v)) << name;
      spread = std::max(spread, std::fabs(double{v} - logits[0]));
    }
    EXPECT_GT(spread, 1e-3) << name << ": logits should not be uniform";
    files.push_back(*std::move(f));
  }
  // Rows of the three files are roundings of one set of f32 draws: q8_0 and q4_k stay
  // within their format's error of the bf16 row (itself within 2^-8 of the draw).
  for (const char* tensor : {"blk.1.ffn_down.weight", "output.weight", "blk.0.attn_k.weight"}) {
    const GgufTensorInfo* t = files[0]->FindTensor(tensor);
    ASSERT_NE(t, nullptr);
    const int64_t cols = t->shape[0];
    for (int64_t row : {int64_t{0}, t->shape[1] - 1}) {
      const std::vector<float> b = Decode(*files[0], tensor, row, cols);
      const std::vector<float> q8 = Decode(*files[1], tensor, row, cols);
      const std::vector<float> q4 = Decode(*files[2], tensor, row, cols);
      double amax = 0, e8 = 0, e4 = 0, rms = 0;
      for (int64_t c = 0; c < cols; ++c) {
        amax = std::max(amax, std::fabs(double{b[c]}));
        e8 = std::max(e8, std::fabs(double{q8[c]} - b[c]));
        e4 = std::max(e4, std::fabs(double{q4[c]} - b[c]));
        rms += double{b[c]} * b[c];
      }
      rms = std::sqrt(rms / cols);
      ASSERT_GT(rms, 0) << tensor;
      // Q8_0: half a step of amax/127 per 32-block, plus bf16's own rounding.
      EXPECT_LE(e8, amax / 127 * 0.5 + amax / 128) << tensor << " row " << row;
      // Q4_K: half a step of (range/15 + scale levels); the range is a few rms.
      EXPECT_LE(e4, amax / 7) << tensor << " row " << row;
      EXPECT_GT(e4, 0) << tensor << ": q4_k cannot be exact on normal draws";
    }
  }
}

TEST(RandomModelTypes, BytesDependOnTheSpecOnly) {
  const RandomModelSpec s = SmallLlama(DType::kQ4_K);
  const std::string a = FileBytes(Write(s, "det_a"));
  const std::string b = FileBytes(Write(s, "det_b"));
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == b);
  RandomModelSpec other = s;
  other.seed = 6;
  EXPECT_FALSE(a == FileBytes(Write(other, "det_c")));
}

TEST(RandomModelTypes, SizesThatDoNotFitTheBlocksAreRefused) {
  RandomModelSpec s = SmallLlama(DType::kQ4_K);
  s.n_embd = 128;  // not a multiple of 256
  s.n_head = 2;
  s.n_head_kv = 1;
  absl::Status st = WriteRandomGguf(s, UniqueTempPath("random_model_bad.gguf"));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(st.message(), "256")) << st;
  s = SmallLlama(DType::kQ8_0);
  s.n_ff = 520;  // not a multiple of 32
  st = WriteRandomGguf(s, UniqueTempPath("random_model_bad8.gguf"));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(st.message(), "32")) << st;
  EXPECT_FALSE(RandomModelType("q6_k").ok());
  s = SmallLlama(DType::kQ6_K);
  EXPECT_EQ(WriteRandomGguf(s, UniqueTempPath("random_model_q6.gguf")).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mesa::testing
