// Evaluations on the real stories260K model (skipped with a message when the shared
// models are absent): perplexity equals exp(mean NLL) computed here from the runner's
// own logits, mesa equals full when the input fits the trained length, windows add up,
// and the passkey loop runs and scores the same prompts for every method.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "engine/forward.h"
#include "engine/long_context.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "jobs/eval_passkey.h"
#include "jobs/eval_ppl.h"

namespace mesa {
namespace {

std::string SharedPath(const std::string& rel) {
  const char* shared = std::getenv("MESA_SHARED_DIR");
  if (shared == nullptr || *shared == '\0') return "";
  const std::string p = std::string(shared) + "/" + rel;
  return std::filesystem::exists(p) ? p : "";
}

class EvalModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string model_path = SharedPath("models/stories260K-f32.gguf");
    const std::string text_path = SharedPath("text/tinystories_valid_part1.txt");
    if (model_path.empty() || text_path.empty()) {
      GTEST_SKIP() << "shared stories260K-f32.gguf or tinystories_valid_part1.txt unavailable "
                      "(set MESA_SHARED_DIR to ../shared)";
    }
    auto model = LoadModel(model_path);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    std::ifstream in(text_path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    auto ids = model_->tokenizer->Encode(ss.str().substr(0, 20000), {});
    ASSERT_TRUE(ids.ok()) << ids.status();
    stream_ = *std::move(ids);
    ASSERT_GE(stream_.size(), 2048u);
  }

  PplPoint Ppl(AttentionMethod method, int64_t length, PplOptions options = {}) {
    auto p = EvalPerplexity(*model_, backend_, stream_, length, method, options);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *p : PplPoint{};
  }

  std::unique_ptr<Model> model_;
  std::vector<int32_t> stream_;
  CpuBackend backend_{2};
};

// exp(mean NLL) with a plain long-double log-sum-exp, written apart from eval_ppl.cc.
double IndependentPpl(const std::vector<float>& logits, int64_t n_vocab,
                      const std::vector<int32_t>& tokens) {
  long double total = 0;
  for (size_t i = 0; i + 1 < tokens.size(); ++i) {
    const float* row = logits.data() + i * n_vocab;
    long double z = 0;
    for (int64_t v = 0; v < n_vocab; ++v) z += std::exp(static_cast<long double>(row[v]));
    total += std::log(z) - static_cast<long double>(row[tokens[i + 1]]);
  }
  return static_cast<double>(std::exp(total / static_cast<long double>(tokens.size() - 1)));
}

TEST_F(EvalModelTest, FullAttentionPplEqualsExpMeanNllOfRunnerLogits) {
  const int64_t n = 300;
  const std::vector<int32_t> tokens(stream_.begin(), stream_.begin() + n);
  LongContextOptions lc;
  lc.method = AttentionMethod::kFull;
  LongContextRunner runner(*model_, backend_, lc);
  std::vector<float> logits;
  ASSERT_TRUE(runner.Prefill(tokens, 0, LogitsMode::kAll, &logits).ok());
  const int64_t n_vocab = model_->config.n_vocab;
  ASSERT_EQ(static_cast<int64_t>(logits.size()), n * n_vocab);
  const double expected = IndependentPpl(logits, n_vocab, tokens);
  const PplPoint p = Ppl(AttentionMethod::kFull, n);
  EXPECT_EQ(p.scored_tokens, n - 1);
  EXPECT_NEAR(p.ppl, expected, 1e-9 * expected);
  EXPECT_GT(p.ppl, 1.5);   // a real model on real text: neither perfect
  EXPECT_LT(p.ppl, 20.0);  // nor lost (TESTDATA: ~3.5 at 512)

  // The base model through ModelRunner gives the same perplexity.
  ModelRunner base(*model_, backend_);
  KvCache cache = base.NewCache(n);
  std::vector<float> base_logits;
  ASSERT_TRUE(base.Forward(tokens, cache, LogitsMode::kAll, &base_logits).ok());
  EXPECT_NEAR(IndependentPpl(base_logits, n_vocab, tokens), expected, 1e-5 * expected);
}

TEST_F(EvalModelTest, MesaEqualsFullWhenTheInputFits) {
  for (int64_t n : {64, 300, 512}) {
    SCOPED_TRACE(n);
    const PplPoint full = Ppl(AttentionMethod::kFull, n);
    const PplPoint mesa = Ppl(AttentionMethod::kMesa, n);
    const PplPoint autom = Ppl(AttentionMethod::kAuto, n);
    EXPECT_NEAR(mesa.ppl, full.ppl, 1e-6 * full.ppl);
    EXPECT_NEAR(autom.ppl, full.ppl, 1e-6 * full.ppl);
    EXPECT_FALSE(mesa.prefill.plan.chunked);
  }
}

TEST_F(EvalModelTest, EveryMethodRunsPastTheTrainedLength) {
  PplOptions options;
  options.lengths = {1024};
  options.methods = {AttentionMethod::kFull, AttentionMethod::kMesa, AttentionMethod::kSelfExtend,
                     AttentionMethod::kReRope};
  auto points = RunPerplexityEval(*model_, backend_, stream_, options);
  ASSERT_TRUE(points.ok()) << points.status();
  ASSERT_EQ(points->size(), 4u);
  for (const PplPoint& p : *points) {
    SCOPED_TRACE(AttentionMethodName(p.method));
    EXPECT_TRUE(std::isfinite(p.ppl));
    EXPECT_GT(p.ppl, 1.0);
    EXPECT_EQ(p.scored_tokens, 1023);
  }
  EXPECT_TRUE((*points)[1].prefill.plan.chunked);
  const std::string table = FormatPplTable(*points);
  EXPECT_NE(table.find("self-extend"), std::string::npos) << table;
}

TEST_F(EvalModelTest, WindowsAddUpAndStartWithBos) {
  PplOptions two;
  two.windows = 2;
  two.scope = PplScope::kSecondHalf;
  two.window_bos = model_->tokenizer->bos_id();
  const PplPoint both = Ppl(AttentionMethod::kFull, 256, two);
  EXPECT_EQ(both.scored_tokens, 2 * 127);
  EXPECT_EQ(both.ppl, both.ppl_second_half);
  EXPECT_GT(both.ppl_all, 0.0);
  EXPECT_NE(both.ppl_all, both.ppl_second_half);

  PplOptions one = two;
  one.windows = 1;
  auto first = EvalPerplexity(*model_, backend_, stream_, 256, AttentionMethod::kFull, one);
  auto second = EvalPerplexity(*model_, backend_, absl::MakeConstSpan(stream_).subspan(256), 256,
                               AttentionMethod::kFull, one);
  ASSERT_TRUE(first.ok() && second.ok());
  const double mean = (first->mean_nll * first->scored_tokens + second->mean_nll * second->scored_tokens) /
                      (first->scored_tokens + second->scored_tokens);
  EXPECT_NEAR(both.mean_nll, mean, 1e-12);
}

TEST_F(EvalModelTest, TextTooShortIsAClearError) {
  PplOptions options;
  options.lengths = {static_cast<int64_t>(stream_.size()) + 1};
  options.methods = {AttentionMethod::kFull};
  auto points = RunPerplexityEval(*model_, backend_, stream_, options);
  ASSERT_FALSE(points.ok());
  EXPECT_NE(points.status().message().find("too few"), std::string::npos) << points.status();
}

TEST_F(EvalModelTest, PasskeyRunsTheSamePromptsForEveryMethod) {
  PasskeyOptions options;
  options.lengths = {200, 400};
  options.methods = {AttentionMethod::kFull, AttentionMethod::kMesa};
  options.samples = 2;
  options.seed = 3;
  auto points = RunPasskeyEval(*model_, backend_, PasskeyFiller::Classic(), options);
  ASSERT_TRUE(points.ok()) << points.status();
  ASSERT_EQ(points->size(), 4u);
  for (size_t l = 0; l < 2; ++l) {
    const PasskeyPoint& full = (*points)[2 * l];
    const PasskeyPoint& mesa = (*points)[2 * l + 1];
    EXPECT_EQ(full.samples, 2);
    EXPECT_LE(full.hits, full.samples);
    for (int s = 0; s < 2; ++s) {
      EXPECT_EQ(full.trials[s].key, mesa.trials[s].key);
      EXPECT_LE(full.trials[s].prompt_tokens, full.length);
      EXPECT_GE(full.trials[s].prompt_tokens, full.length - 5);
      // Prompt + answer fit the trained length: mesa is plain attention.
      EXPECT_EQ(full.trials[s].answer, mesa.trials[s].answer);
    }
  }
  EXPECT_NE(FormatPasskeyTable(*points).find("/2)"), std::string::npos);
}

}  // namespace
}  // namespace mesa
