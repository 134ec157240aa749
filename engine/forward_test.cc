// Forward-pass invariants on the real shared model (stories260K, llama): batched
// prefill equals token-by-token decode, micro-batch size and thread count do not
// change the result, and greedy generation writes the story TESTDATA.md documents.
// Exact agreement with llama.cpp is tested in tests/llamacpp/.
#include "engine/forward.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "kernels/cpu/cpu_backend.h"
#include "engine/generate.h"
#include "engine/model_loader.h"
#include "gtest/gtest.h"
#include "tests/testing/compare.h"

namespace mesa {
namespace {

std::string SharedModel(const char* name) {
  const char* dir = std::getenv("MESA_SHARED_DIR");
  if (!dir) return "";
  std::string p = std::string(dir) + "/models/" + name;
  return std::filesystem::exists(p) ? p : "";
}

#define LOAD_OR_SKIP(var, name)                                                         \
  std::string var##_path = SharedModel(name);                                           \
  if (var##_path.empty()) GTEST_SKIP() << "shared model " << name                       \
                                       << " not found (set MESA_SHARED_DIR=../shared)"; \
  auto var##_or = LoadModel(var##_path);                                                \
  ASSERT_TRUE(var##_or.ok()) << var##_or.status();                                      \
  const Model& var = **var##_or


const std::vector<int32_t> kTokens = {1, 403, 407, 261, 378, 29, 261, 322, 439, 280, 57, 67,
                                      275, 295, 300, 339, 281, 422, 29, 410};

TEST(ForwardTest, PrefillEqualsDecodeStepByStep) {
  LOAD_OR_SKIP(model, "stories260K-f32.gguf");
  CpuBackend backend(2);
  ModelRunner runner(model, backend);
  const int64_t v = model.config.n_vocab;
  KvCache batch_cache = runner.NewCache(kTokens.size());
  std::vector<float> all;
  ASSERT_TRUE(runner.Forward(kTokens, batch_cache, LogitsMode::kAll, &all).ok());
  ASSERT_EQ(all.size(), kTokens.size() * v);
  KvCache step_cache = runner.NewCache(4);  // grows as needed
  std::vector<float> stepwise, one;
  for (int32_t t : kTokens) {
    ASSERT_TRUE(runner.Forward({&t, 1}, step_cache, LogitsMode::kLast, &one).ok());
    stepwise.insert(stepwise.end(), one.begin(), one.end());
  }
  EXPECT_LT(testing::MaxRowRelError(stepwise, all, v), 1e-5);
  EXPECT_EQ(step_cache.size(), batch_cache.size());
}

TEST(ForwardTest, MicroBatchAndThreadsDoNotChangeLogits) {
  LOAD_OR_SKIP(model, "stories260K-f32.gguf");
  std::vector<float> want;
  {
    CpuBackend backend(1);
    ModelRunner runner(model, backend);
    KvCache cache = runner.NewCache(kTokens.size());
    ASSERT_TRUE(runner.Forward(kTokens, cache, LogitsMode::kAll, &want).ok());
  }
  for (int threads : {2, 3}) {
    for (int64_t mb : {1, 3, 7, 512}) {
      CpuBackend backend(threads);
      ModelRunner runner(model, backend, mb);
      KvCache cache = runner.NewCache(kTokens.size());
      std::vector<float> got;
      ASSERT_TRUE(runner.Forward(kTokens, cache, LogitsMode::kAll, &got).ok());
      EXPECT_LT(testing::MaxRowRelError(got, want, model.config.n_vocab), 1e-5) << threads << " " << mb;
    }
  }
}

TEST(ForwardTest, HuggingFaceDirectoryAndGgufOfTheSameModelAgree) {
  // Same weights, two formats: the GGUF has q/k permuted for the "normal" rope style,
  // the Hugging Face directory is run with the neox style on unpermuted weights.
  LOAD_OR_SKIP(gguf, "tinystories-656k-f32.gguf");
  LOAD_OR_SKIP(hf, "tinystories-656k-hf");
  ASSERT_EQ(gguf.config.n_vocab, hf.config.n_vocab);
  const std::string text = "Once upon a time there was a big dog. The dog liked to run in the sun.";
  auto ids_gguf = gguf.tokenizer->Encode(text, {});
  auto ids_hf = hf.tokenizer->Encode(text, {});
  ASSERT_TRUE(ids_gguf.ok() && ids_hf.ok());
  ASSERT_EQ(*ids_gguf, *ids_hf);
  CpuBackend backend(2);
  std::vector<float> a, b;
  ModelRunner ra(gguf, backend), rb(hf, backend);
  KvCache ca = ra.NewCache(ids_gguf->size()), cb = rb.NewCache(ids_hf->size());
  ASSERT_TRUE(ra.Forward(*ids_gguf, ca, LogitsMode::kAll, &a).ok());
  ASSERT_TRUE(rb.Forward(*ids_hf, cb, LogitsMode::kAll, &b).ok());
  EXPECT_LT(testing::MaxRowRelError(a, b, gguf.config.n_vocab), 1e-5);
}

// Weights copied into the process's own memory (LoadOptions::WeightMemory::kOwn) and
// read from the file's map (kMapped) are the same bytes for float files: the logits
// must be bit-identical, and the copy must really be a copy.
TEST(ForwardTest, OwnAndMappedWeightsGiveIdenticalLogits) {
  const std::string path = SharedModel("stories260K-f32.gguf");
  if (path.empty()) GTEST_SKIP() << "shared model stories260K-f32.gguf not found (set MESA_SHARED_DIR=../shared)";
  LoadOptions own_options, mapped_options;
  own_options.weight_memory = LoadOptions::WeightMemory::kOwn;
  mapped_options.weight_memory = LoadOptions::WeightMemory::kMapped;
  auto own = LoadModel(path, own_options);
  auto mapped = LoadModel(path, mapped_options);
  ASSERT_TRUE(own.ok() && mapped.ok());
  EXPECT_TRUE((*own)->weights_in_own_memory);
  EXPECT_FALSE((*mapped)->weights_in_own_memory);
  EXPECT_NE((*own)->weights.layers[0].wq.data, (*mapped)->weights.layers[0].wq.data);
  CpuBackend backend(2);
  std::vector<float> a, b;
  ModelRunner ra(**own, backend), rb(**mapped, backend);
  KvCache ca = ra.NewCache(kTokens.size()), cb = rb.NewCache(kTokens.size());
  ASSERT_TRUE(ra.Forward(kTokens, ca, LogitsMode::kAll, &a).ok());
  ASSERT_TRUE(rb.Forward(kTokens, cb, LogitsMode::kAll, &b).ok());
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(ForwardTest, RejectsTokensOutsideVocabulary) {
  LOAD_OR_SKIP(model, "stories260K-f32.gguf");
  CpuBackend backend(1);
  ModelRunner runner(model, backend);
  KvCache cache = runner.NewCache(2);
  std::vector<int32_t> bad = {1, 512};
  auto st = runner.Forward(bad, cache, LogitsMode::kLast, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("512"), std::string::npos);
}

TEST(ForwardTest, GreedyStoryMatchesKnownContinuation) {
  LOAD_OR_SKIP(model, "stories260K-f32.gguf");
  ASSERT_NE(model.tokenizer, nullptr);
  auto prompt = model.tokenizer->Encode("Once upon a time", {});
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  CpuBackend backend(2);
  ModelRunner runner(model, backend);
  GenerateOptions opts;
  opts.max_new_tokens = 40;
  auto r = Generate(runner, *prompt, opts);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<int32_t> all = *prompt;
  all.insert(all.end(), r->tokens.begin(), r->tokens.end());
  std::string text = model.tokenizer->Decode(all);
  EXPECT_EQ(text.rfind("Once upon a time, there was a little girl named Lily. She loved to play "
                       "outside in the park. One day, she saw a big, red ball.",
                       0),
            0u)
      << text;
}

}  // namespace
}  // namespace mesa
