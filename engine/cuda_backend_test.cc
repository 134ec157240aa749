// The CUDA backend end to end (label gpu; skipped visibly where no GPU can be used):
// logits of the forward pass on the GPU against the CPU backend's on both real shared
// models and on random GGUFs of every architecture (Llama GQA, Qwen2 with biases, MPT
// with ALiBi and fused qkv), and Mesa's properties on the GPU.
//
// Tolerances: F32 weights with f32 K/V (--kv-type f32) stay f32 end to end
// (matrix-vector kernels and f32 GEMM): 1e-4 relative per logits row. F16 weights go
// through bf16 tiles in prefill (cuBLAS, f32 accumulation): 3e-2 relative; bf16 K/V (the
// GPU's default): 1e-2; with those, the greedy tokens must agree on >= 98% of rows.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/long_context.h"
#include "engine/mesa_phases.h"
#include "engine/model_loader.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/testing/compare.h"
#include "tests/testing/random_model.h"
#include "tests/testing/temp_path.h"

namespace mesa {
namespace {

// f32 K/V unless asked: the exactness tests compare f32 with f32.
std::unique_ptr<Backend> GpuOrSkipReason(std::string* why, const char* kv_type = "f32") {
  absl::StatusOr<std::unique_ptr<Backend>> b = MakeBackend("cuda:0", 0, kv_type);
  if (!b.ok()) {
    *why = std::string(b.status().message());
    return nullptr;
  }
  return *std::move(b);
}

#define GPU_OR_SKIP(var)                         \
  std::string var##_why;                         \
  std::unique_ptr<Backend> var = GpuOrSkipReason(&var##_why); \
  if (!var) GTEST_SKIP() << var##_why

// Prefill (micro-batches of 64) then 4 decode steps; every token's logits.
std::vector<float> RunAll(const Model& model, Backend& backend, const std::vector<int32_t>& tokens) {
  ModelRunner runner(model, backend, 64);
  EXPECT_TRUE(runner.status().ok()) << runner.status();
  KvCache cache = runner.NewCache(16);
  const size_t prefill = tokens.size() - 4;
  std::vector<float> all, one;
  absl::Status s = runner.Forward(absl::MakeConstSpan(tokens).subspan(0, prefill), cache, LogitsMode::kAll, &all);
  EXPECT_TRUE(s.ok()) << s;
  for (size_t i = prefill; i < tokens.size(); ++i) {
    s = runner.Forward({&tokens[i], 1}, cache, LogitsMode::kLast, &one);
    EXPECT_TRUE(s.ok()) << s;
    all.insert(all.end(), one.begin(), one.end());
  }
  return all;
}

std::vector<int32_t> Argmax(const std::vector<float>& logits, int64_t v) {
  std::vector<int32_t> out;
  for (size_t r = 0; r * v < logits.size(); ++r) {
    out.push_back(static_cast<int32_t>(std::max_element(logits.begin() + r * v, logits.begin() + (r + 1) * v) -
                                       (logits.begin() + r * v)));
  }
  return out;
}

std::string SharedModel(const char* name) {
  const char* dir = std::getenv("MESA_SHARED_DIR");
  std::string p = std::string(dir ? dir : MESA_TEST_SHARED_DIR) + "/models/" + name;
  return std::filesystem::exists(p) ? p : "";
}

TEST(CudaBackendTest, RealModelsMatchTheCpu) {
  GPU_OR_SKIP(gpu);
  for (const char* name : {"stories260K-f32.gguf", "tinystories-656k-f32.gguf"}) {
    const std::string path = SharedModel(name);
    if (path.empty()) GTEST_SKIP() << "shared model " << name << " not found (set MESA_SHARED_DIR=../shared)";
    auto model = LoadModel(path);
    ASSERT_TRUE(model.ok()) << model.status();
    const std::vector<int32_t> tokens = testing::RandomTokens(200, (*model)->config.n_vocab, 5);
    CpuBackend cpu(2);
    const std::vector<float> want = RunAll(**model, cpu, tokens);
    const std::vector<float> got = RunAll(**model, *gpu, tokens);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LT(testing::MaxRowRelError(got, want, (*model)->config.n_vocab), 1e-4) << name;
  }
}

struct RandomCase {
  const char* name;
  const char* arch;
  int64_t n_head_kv;
  DType type;
};

class CudaRandomModelTest : public ::testing::TestWithParam<RandomCase> {};

TEST_P(CudaRandomModelTest, LogitsMatchTheCpu) {
  GPU_OR_SKIP(gpu);
  const RandomCase& c = GetParam();
  testing::RandomModelSpec spec;
  spec.arch = c.arch;
  spec.n_embd = 256;
  spec.n_head = 4;
  spec.n_head_kv = c.n_head_kv;
  spec.head_dim = 64;
  spec.n_ff = 512;
  spec.n_layer = 2;
  spec.n_vocab = 512;
  spec.context_length = 1024;
  spec.type = c.type;
  spec.tokenizer_source = testing::kSyntheticTokenizer;
  const std::string path = testing::UniqueTempPath(std::string("cuda-") + c.name + ".gguf");
  ASSERT_TRUE(testing::WriteRandomGguf(spec, path).ok());
  auto model = LoadModel(path);
  std::remove(path.c_str());
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t v = (*model)->config.n_vocab;
  const std::vector<int32_t> tokens = testing::RandomTokens(150, v, 9);
  CpuBackend cpu(2);
  const std::vector<float> want = RunAll(**model, cpu, tokens);
  const std::vector<float> got = RunAll(**model, *gpu, tokens);
  ASSERT_EQ(got.size(), want.size());
  const double tol = c.type == DType::kF32 ? 1e-4 : 3e-2;
  EXPECT_LT(testing::MaxRowRelError(got, want, v), tol);
  if (c.type != DType::kF32) {
    // Greedy tokens agree wherever the CPU's top two logits are not a near tie.
    const std::vector<int32_t> a = Argmax(want, v), b = Argmax(got, v);
    int differ = 0;
    for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
    EXPECT_LE(differ, static_cast<int>(a.size() / 50)) << "argmax differs on " << differ << " rows";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Architectures, CudaRandomModelTest,
    ::testing::Values(RandomCase{"llama_gqa_f32", "llama", 2, DType::kF32},
                      RandomCase{"llama_gqa_f16", "llama", 2, DType::kF16},
                      RandomCase{"qwen2_f32", "qwen2", 4, DType::kF32},
                      RandomCase{"mpt_f32", "mpt", 0, DType::kF32}),
    [](const ::testing::TestParamInfo<RandomCase>& i) { return std::string(i.param.name); });

// bf16 K/V (the GPU default) against the CPU's f32: within the rounding's reach (the
// same bound the seam test measures on the CPU side: ~2e-3 there) and the same greedy
// tokens on almost every row.
TEST(CudaBackendTest, Bf16KvStaysCloseToTheCpu) {
  std::string why;
  std::unique_ptr<Backend> gpu = GpuOrSkipReason(&why, "bf16");
  if (!gpu) GTEST_SKIP() << why;
  const std::string path = SharedModel("tinystories-656k-f32.gguf");
  if (path.empty()) GTEST_SKIP() << "shared model tinystories-656k-f32.gguf not found";
  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t v = (*model)->config.n_vocab;
  const std::vector<int32_t> tokens = testing::RandomTokens(300, v, 21);
  CpuBackend cpu(2);
  const std::vector<float> want = RunAll(**model, cpu, tokens);
  const std::vector<float> got = RunAll(**model, *gpu, tokens);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LT(testing::MaxRowRelError(got, want, v), 1e-2);
  const std::vector<int32_t> a = Argmax(want, v), b = Argmax(got, v);
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
  EXPECT_LE(differ, static_cast<int>(a.size() / 50));
}

// Mesa on the GPU: middle chunks computed in any order give bit-identical final
// logits on one backend, and the whole pipeline stays within the f32 tolerance of the
// CPU's.
TEST(CudaBackendTest, MesaChunksInAnyOrderAreBitIdentical) {
  GPU_OR_SKIP(gpu);
  const std::string path = SharedModel("stories260K-f32.gguf");
  if (path.empty()) GTEST_SKIP() << "shared model stories260K-f32.gguf not found";
  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  MesaOptions mo;
  mo.anchor = 16;
  mo.last_chunk = 64;
  const std::vector<int32_t> prompt = testing::RandomTokens(900, (*model)->config.n_vocab, 13);
  auto plan = PlanMesa(static_cast<int64_t>(prompt.size()), 8, /*train_length=*/256, mo);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_GE(plan->middle.size(), 2u);
  auto tokens = [&](TokenRange r) { return absl::MakeConstSpan(prompt).subspan(r.begin, r.size()); };
  auto final_logits = [&](Backend& backend, bool reverse) {
    MesaPhases phases(**model, backend, *plan);
    auto anchor = phases.RunAnchor(tokens(plan->anchor), nullptr);
    EXPECT_TRUE(anchor.ok());
    std::vector<ChunkKv> middles(plan->middle.size());
    for (size_t k = 0; k < plan->middle.size(); ++k) {
      const size_t i = reverse ? plan->middle.size() - 1 - k : k;
      auto kv = phases.RunMiddle(*anchor, tokens(plan->middle[i]), plan->middle[i], nullptr);
      EXPECT_TRUE(kv.ok());
      middles[i] = *std::move(kv);
    }
    std::vector<float> logits;
    auto state = phases.RunFinal(*anchor, middles, tokens(plan->last), LogitsMode::kAll, &logits);
    EXPECT_TRUE(state.ok()) << state.status();
    return logits;
  };
  const std::vector<float> a = final_logits(*gpu, false);
  const std::vector<float> b = final_logits(*gpu, true);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b);
  CpuBackend cpu(2);
  EXPECT_LT(testing::MaxRowRelError(a, final_logits(cpu, false), (*model)->config.n_vocab), 1e-4);
}

// A short input under Mesa is ordinary attention: the same logits as --attention full.
TEST(CudaBackendTest, ShortInputsUnderMesaEqualFullAttention) {
  GPU_OR_SKIP(gpu);
  const std::string path = SharedModel("stories260K-f32.gguf");
  if (path.empty()) GTEST_SKIP() << "shared model stories260K-f32.gguf not found";
  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<int32_t> prompt = testing::RandomTokens(100, (*model)->config.n_vocab, 17);
  auto run = [&](AttentionMethod m) {
    LongContextOptions o;
    o.method = m;
    LongContextRunner runner(**model, *gpu, o);
    std::vector<float> logits;
    auto info = runner.Prefill(prompt, 4, LogitsMode::kAll, &logits);
    EXPECT_TRUE(info.ok()) << info.status();
    return logits;
  };
  const std::vector<float> full = run(AttentionMethod::kFull);
  const std::vector<float> mesa = run(AttentionMethod::kMesa);
  EXPECT_LT(testing::MaxRowRelError(mesa, full, (*model)->config.n_vocab), 1e-5);
}

}  // namespace
}  // namespace mesa
