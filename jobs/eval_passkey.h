// Passkey retrieval (MESA_SPEC section 6), for `mesa eval passkey`: a 5-digit key is
// hidden at a random depth of filler text, the model reads the whole prompt with the
// chosen attention method and decodes a few tokens greedily; a hit is when the first
// integer of the answer equals the key. The prompt (after Landmark Attention /
// Self-Extend's passkey test, one part per line):
//   There is an important info hidden inside a lot of irrelevant text. ...   (optional)
//   <filler before>
//   The pass key is NNNNN. Remember it. NNNNN is the pass key.
//   <filler after>
//   What is the pass key? The pass key is
// Filler is either the classic repeated "The grass is green. ..." or natural text (for
// the TinyStories models, TinyStories text: they have never seen the classic filler),
// read word by word from a seeded sentence start, wrapping around. The prompt is sized
// in tokens of the model's tokenizer: the largest number of filler words whose prompt
// fits the target, so it lands within a word's tokens of it. Depth is the fraction of
// the filler before the key, snapped to a sentence boundary. Prompts depend only on
// (seed, length, sample), so every method sees the same prompts.
// Pure functions are thread-safe; RunPasskeyEval uses the backend (not thread-safe).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "engine/long_context.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "nlohmann/json.hpp"

namespace mesa {

inline constexpr char kPasskeyTaskDescription[] =
    "There is an important info hidden inside a lot of irrelevant text. Find it and "
    "memorize them. I will quiz you about the important information there.";
inline constexpr char kPasskeyClassicFiller[] =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
inline constexpr char kPasskeyQuestion[] = "What is the pass key? The pass key is";

// "The pass key is 12345. Remember it. 12345 is the pass key."
std::string PasskeyInformationLine(int64_t key);

// The first run of ASCII digits in `answer` as an integer; nullopt when there is none
// or it does not fit int64 (then it cannot equal any key).
std::optional<int64_t> FirstInteger(std::string_view answer);

// Filler words, read cyclically. Immutable: thread-safe.
class PasskeyFiller {
 public:
  // The classic sentences, repeated.
  static PasskeyFiller Classic();
  // Natural text: whitespace (newlines included) collapses to single spaces. Needs at
  // least one sentence end ('.', '!' or '?', possibly followed by quotes).
  static absl::StatusOr<PasskeyFiller> FromText(std::string_view text, std::string name);

  const std::string& name() const { return name_; }
  bool classic() const { return classic_; }
  int64_t size() const { return static_cast<int64_t>(words_.size()); }  // words per cycle
  std::string_view Word(int64_t i) const { return words_[i % size()]; }
  bool EndsSentence(int64_t i) const { return ends_sentence_[i % size()]; }
  // The first word index >= i (cyclic, returned in [i, i + size())) that starts a
  // sentence.
  int64_t SentenceStartAtOrAfter(int64_t i) const;
  // Words [begin, end) joined by single spaces.
  std::string Join(int64_t begin, int64_t end) const;

 private:
  std::string name_;
  bool classic_ = false;
  std::vector<std::string> words_;
  std::vector<bool> ends_sentence_;
};

struct PasskeyPromptOptions {
  bool task_description = true;
  EncodeOptions encode;  // BOS as the model wants by default
};

struct PasskeyPrompt {
  std::vector<int32_t> tokens;
  std::string text;
  int64_t key = 0;
  double requested_depth = 0;    // fraction of the filler before the key, as asked
  int64_t key_token_offset = 0;  // tokens before the information line
  int64_t filler_words = 0;
  // Where the key sits in the prompt, as a fraction of its tokens.
  double depth() const {
    return tokens.empty() ? 0.0 : static_cast<double>(key_token_offset) / tokens.size();
  }
};

// The prompt with the most filler words (from word `filler_start` on) whose token count
// is at most `target_tokens`. Fails when even the prompt without filler is longer.
absl::StatusOr<PasskeyPrompt> BuildPasskeyPrompt(const Tokenizer& tokenizer,
                                                 const PasskeyFiller& filler,
                                                 int64_t target_tokens, int64_t key, double depth,
                                                 int64_t filler_start,
                                                 const PasskeyPromptOptions& options = {});

// One prompt, one method.
struct PasskeyTrial {
  AttentionMethod method = AttentionMethod::kFull;
  int64_t length = 0;            // requested
  int64_t sample = 0;
  int64_t key = 0;
  int64_t prompt_tokens = 0;     // actual
  double depth = 0;              // actual (fraction of the prompt's tokens)
  std::string answer;            // decoded continuation
  std::optional<int64_t> answered;
  bool hit = false;
  double seconds = 0;
  nlohmann::json ToJson() const;
};

struct PasskeyPoint {
  AttentionMethod method = AttentionMethod::kFull;
  int64_t length = 0;
  int64_t samples = 0;
  int64_t hits = 0;
  double seconds = 0;
  std::vector<PasskeyTrial> trials;
  double accuracy() const { return samples > 0 ? static_cast<double>(hits) / samples : 0.0; }
  // {"attention", "length", "accuracy", "hits", "samples", "seconds", "trials": [...]}
  nlohmann::json ToJson() const;
};

struct PasskeyOptions {
  std::vector<int64_t> lengths;
  std::vector<AttentionMethod> methods;
  LongContextOptions base;       // everything but the method
  int64_t samples = 10;
  uint64_t seed = 1;
  int64_t max_new_tokens = 10;   // greedy; enough for " NNNNN." with digit tokens
  PasskeyPromptOptions prompt;
  std::function<void(const PasskeyTrial&)> on_trial;  // progress
};

// The key, depth and filler start of sample `sample` at `length` (deterministic).
struct PasskeyDraw {
  int64_t key = 0;
  double depth = 0;
  int64_t filler_start = 0;
};
PasskeyDraw DrawPasskey(uint64_t seed, int64_t length, int64_t sample, const PasskeyFiller& filler);

// Every length x method; points in that order (lengths outer).
absl::StatusOr<std::vector<PasskeyPoint>> RunPasskeyEval(const Model& model, Backend& backend,
                                                         const PasskeyFiller& filler,
                                                         const PasskeyOptions& options);

// Rows: lengths; columns: methods; cells: "accuracy (hits/samples)".
std::string FormatPasskeyTable(const std::vector<PasskeyPoint>& points);

}  // namespace mesa
