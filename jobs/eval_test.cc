// Unit tests of the evaluation helpers that need no model: length and method lists,
// the table, stable log-softmax and NLL scopes, answer parsing, and the passkey prompt
// builder (with a byte-level fake tokenizer, and with the real stories260K tokenizer
// when the shared models are present).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "jobs/eval_common.h"
#include "jobs/eval_passkey.h"
#include "jobs/eval_ppl.h"

namespace mesa {
namespace {

// One token per byte, BOS = 256 when asked for (default on).
class ByteTokenizer : public Tokenizer {
 public:
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options) const override {
    std::vector<int32_t> ids;
    if (options.add_bos.value_or(true)) ids.push_back(256);
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string Decode(absl::Span<const int32_t> ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (id < 256) s += static_cast<char>(id);
    }
    return s;
  }
  std::string TokenToPiece(int32_t id) const override { return Decode({&id, 1}); }
  int32_t vocab_size() const override { return 257; }
  int32_t bos_id() const override { return 256; }
  int32_t eos_id() const override { return -1; }
  bool IsEndOfGeneration(int32_t) const override { return false; }
  std::string kind() const override { return "bytes"; }
};

TEST(EvalCommonTest, ParsesLengthsWithKSuffix) {
  auto l = ParseLengthList("512,1k, 2K 4096");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(*l, (std::vector<int64_t>{512, 1024, 2048, 4096}));
  EXPECT_FALSE(ParseLengthList("").ok());
  EXPECT_FALSE(ParseLengthList("0").ok());
  EXPECT_FALSE(ParseLengthList("-5").ok());
  EXPECT_FALSE(ParseLengthList("1m").ok());
  EXPECT_FALSE(ParseLengthList("k").ok());
  EXPECT_FALSE(ParseLengthList("1.5k").ok());
  auto dup = ParseLengthList("1024,1k");
  ASSERT_FALSE(dup.ok());
  EXPECT_TRUE(absl::StrContains(dup.status().message(), "twice"));
}

TEST(EvalCommonTest, FormatsGridWithAlignedColumns) {
  const std::string t = FormatGrid("length", {"256", "4096"}, {"full", "mesa"},
                                   {"3.58", "3.60", "224.50", ""});
  EXPECT_EQ(t,
            "length    full  mesa\n"
            "256       3.58  3.60\n"
            "4096    224.50     -\n");
}

TEST(EvalPplTest, LogProbabilityIsStableForHugeLogits) {
  std::vector<float> logits = {1000.0f, 999.0f, -1000.0f, 998.0f};
  const double lse = 1000.0 + std::log(1.0 + std::exp(-1.0) + std::exp(-2.0));
  EXPECT_NEAR(LogProbability(logits, 0), 1000.0 - lse, 1e-12);
  EXPECT_NEAR(LogProbability(logits, 3), 998.0 - lse, 1e-12);
  EXPECT_TRUE(std::isfinite(LogProbability(logits, 2)));
  EXPECT_NEAR(LogProbability(logits, 2), -1000.0 - lse, 1e-9);
  std::vector<float> uniform(512, -3.0f);
  EXPECT_NEAR(LogProbability(uniform, 7), -std::log(512.0), 1e-12);
}

TEST(EvalPplTest, NllScopesScoreTheRightRows) {
  // 4 tokens, vocab 2; row i gives p(next = 1) = 0.5 for rows 0..1, 1.0-ish for row 2.
  const std::vector<int32_t> tokens = {0, 1, 0, 1};
  const std::vector<float> logits = {0, 0, 0, 0, 0, 0, 0, 0};
  NllSum all;
  ASSERT_TRUE(AccumulateNll(logits, 2, tokens, FirstScoredRow(4, PplScope::kAllTokens), &all).ok());
  EXPECT_EQ(all.count, 3);
  EXPECT_NEAR(all.Perplexity(), 2.0, 1e-12);
  NllSum half;
  ASSERT_TRUE(AccumulateNll(logits, 2, tokens, FirstScoredRow(4, PplScope::kSecondHalf), &half).ok());
  EXPECT_EQ(half.count, 1);  // llama-perplexity: rows L/2 .. L-2
  EXPECT_EQ(FirstScoredRow(512, PplScope::kSecondHalf), 256);
  NllSum bad;
  EXPECT_FALSE(AccumulateNll(logits, 2, {0, 5, 0, 1}, 0, &bad).ok());
  EXPECT_FALSE(AccumulateNll(logits, 3, tokens, 0, &bad).ok());  // wrong logits size
}

TEST(EvalPplTest, ParsesScope) {
  EXPECT_EQ(*ParsePplScope("all"), PplScope::kAllTokens);
  EXPECT_EQ(*ParsePplScope("second-half"), PplScope::kSecondHalf);
  EXPECT_FALSE(ParsePplScope("half").ok());
}

TEST(PasskeyTest, FirstIntegerOfTheAnswer) {
  EXPECT_EQ(FirstInteger(" 12345. Remember it."), 12345);
  EXPECT_EQ(FirstInteger("is 42 and 12345"), 42);
  EXPECT_EQ(FirstInteger("the key: 0012345"), 12345);
  EXPECT_EQ(FirstInteger("-7 is negative: the sign is ignored"), 7);
  EXPECT_EQ(FirstInteger("1,234"), 1);
  EXPECT_FALSE(FirstInteger(" a big red ball.").has_value());
  EXPECT_FALSE(FirstInteger("").has_value());
  EXPECT_FALSE(FirstInteger("99999999999999999999999").has_value());
}

TEST(PasskeyTest, InformationLine) {
  EXPECT_EQ(PasskeyInformationLine(68301), "The pass key is 68301. Remember it. 68301 is the pass key.");
}

TEST(PasskeyTest, FillerSentences) {
  PasskeyFiller c = PasskeyFiller::Classic();
  EXPECT_EQ(c.size(), 19);
  EXPECT_EQ(c.Word(0), "The");
  EXPECT_EQ(c.Word(19), "The");  // cyclic
  EXPECT_TRUE(c.EndsSentence(3));  // "green."
  EXPECT_EQ(c.SentenceStartAtOrAfter(1), 4);
  EXPECT_EQ(c.Join(0, 4), "The grass is green.");
  auto t = PasskeyFiller::FromText("Tom ran.\n\n\"Stop!\" said Mom. She  smiled", "story");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->size(), 7);
  EXPECT_TRUE(t->EndsSentence(2));  // "\"Stop!\""
  EXPECT_EQ(t->SentenceStartAtOrAfter(5), 5);  // "She" follows "Mom."
  EXPECT_EQ(t->SentenceStartAtOrAfter(6), 9);  // wraps: "smiled" ends no sentence, "ran." does
  EXPECT_FALSE(PasskeyFiller::FromText("no sentence end here", "x").ok());
}

void ExpectPromptShape(const Tokenizer& tok, const PasskeyFiller& filler, int64_t target,
                       double depth, int64_t slack, double depth_tolerance) {
  SCOPED_TRACE(absl::StrCat(filler.name(), " target ", target, " depth ", depth));
  auto p = BuildPasskeyPrompt(tok, filler, target, 48213, depth, 0);
  ASSERT_TRUE(p.ok()) << p.status();
  const int64_t n = static_cast<int64_t>(p->tokens.size());
  EXPECT_LE(n, target);
  EXPECT_GE(n, target - slack);
  EXPECT_TRUE(absl::StrContains(p->text, PasskeyInformationLine(48213)));
  EXPECT_TRUE(absl::EndsWith(p->text, kPasskeyQuestion));
  EXPECT_TRUE(absl::StartsWith(p->text, kPasskeyTaskDescription));
  // The key sits at the requested depth of the filler region of the prompt.
  auto head = tok.Encode(std::string(kPasskeyTaskDescription) + "\n", {});
  auto tail = tok.Encode(absl::StrCat("\n", PasskeyInformationLine(48213), "\n", kPasskeyQuestion),
                         {.add_bos = false});
  ASSERT_TRUE(head.ok() && tail.ok());
  const double filler_tokens = static_cast<double>(n - head->size() - tail->size());
  const double at = (p->key_token_offset - static_cast<double>(head->size())) / filler_tokens;
  // Snapping to a sentence end moves the key by up to half a sentence (~12 tokens).
  EXPECT_NEAR(at, depth, depth_tolerance + 12.0 / filler_tokens);
  // The text before the key, tokenized, is a prefix-length of the prompt.
  EXPECT_GT(p->key_token_offset, 0);
  EXPECT_LT(p->key_token_offset, n);
}

TEST(PasskeyTest, PromptHitsTargetLengthAndDepthWithByteTokens) {
  ByteTokenizer tok;
  const PasskeyFiller classic = PasskeyFiller::Classic();
  for (int64_t target : {300, 1000, 4096}) {
    for (double depth : {0.0, 0.1, 0.5, 0.77, 1.0}) {
      // A classic word is at most 7 bytes with its space.
      ExpectPromptShape(tok, classic, target, depth, 7, 0.01);
    }
  }
}

TEST(PasskeyTest, PromptTooShortIsAClearError) {
  ByteTokenizer tok;
  auto p = BuildPasskeyPrompt(tok, PasskeyFiller::Classic(), 50, 12345, 0.5, 0);
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(absl::StrContains(p.status().message(), "too short")) << p.status();
  EXPECT_FALSE(BuildPasskeyPrompt(tok, PasskeyFiller::Classic(), 500, 12345, 1.5, 0).ok());
}

TEST(PasskeyTest, DrawsAreSeededAndVaried) {
  const PasskeyFiller classic = PasskeyFiller::Classic();
  auto story = PasskeyFiller::FromText("One. Two two. Three three three. Four.", "s");
  ASSERT_TRUE(story.ok());
  std::vector<int64_t> keys;
  for (int64_t s = 0; s < 20; ++s) {
    PasskeyDraw a = DrawPasskey(7, 1024, s, classic), b = DrawPasskey(7, 1024, s, classic);
    EXPECT_EQ(a.key, b.key);
    EXPECT_EQ(a.depth, b.depth);
    EXPECT_GE(a.key, 10000);
    EXPECT_LE(a.key, 99999);
    EXPECT_GE(a.depth, 0.0);
    EXPECT_LT(a.depth, 1.0);
    EXPECT_EQ(a.filler_start, 0);
    PasskeyDraw c = DrawPasskey(7, 1024, s, *story);
    EXPECT_TRUE(c.filler_start == 0 || story->EndsSentence(c.filler_start - 1));
    keys.push_back(a.key);
  }
  std::sort(keys.begin(), keys.end());
  EXPECT_GT(std::unique(keys.begin(), keys.end()) - keys.begin(), 15);
  EXPECT_NE(DrawPasskey(7, 1024, 0, classic).key, DrawPasskey(8, 1024, 0, classic).key);
}

// The real tokenizer of the stories260K model (SentencePiece-style, 512 pieces).
TEST(PasskeyTest, PromptHitsTargetLengthWithRealTokenizer) {
  const char* shared = std::getenv("MESA_SHARED_DIR");
  const std::string path =
      shared != nullptr && *shared ? std::string(shared) + "/models/stories260K-f32.gguf" : "";
  if (path.empty() || !std::filesystem::exists(path)) {
    GTEST_SKIP() << "shared model stories260K-f32.gguf unavailable (set MESA_SHARED_DIR to ../shared)";
  }
  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  const Tokenizer& tok = *(*model)->tokenizer;
  const PasskeyFiller classic = PasskeyFiller::Classic();
  for (int64_t target : {256, 1000, 4096}) {
    for (double depth : {0.0, 0.3, 0.9}) ExpectPromptShape(tok, classic, target, depth, 5, 0.02);
  }
  auto story = PasskeyFiller::FromText(
      "Lily saw a big red ball. She ran to get it. \"Mom, look!\" she said. Mom smiled at her.",
      "story");
  ASSERT_TRUE(story.ok());
  for (int64_t target : {512, 2048}) ExpectPromptShape(tok, *story, target, 0.5, 5, 0.02);
}

}  // namespace
}  // namespace mesa
