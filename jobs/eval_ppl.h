// Perplexity against input length (MESA_SPEC section 6), for `mesa eval ppl`: for each
// length L and attention method, the model reads windows of L tokens from a token
// stream in one prefill (LongContextRunner, LogitsMode::kAll: each token's logits come
// from the phase that computes it) and the next-token negative log-likelihood is
// averaged over the scored rows:
//   kAllTokens   rows 0..L-2 predict tokens 1..L-1  (ppl of the first L tokens)
//   kSecondHalf  rows L/2..L-2 only: llama.cpp's `llama-perplexity` convention, used
//                for the reference table in TESTDATA.md
// Window w is tokens [w*L, (w+1)*L) of the stream; with `window_bos` set its first token
// is replaced by BOS, as llama-perplexity does (window 0 of a text tokenized with BOS is
// unchanged). ppl = exp(sum of NLL / number of scored tokens) over all windows.
// Log-softmax in double with the max subtracted. Not thread-safe (uses the backend).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "engine/long_context.h"
#include "engine/model.h"
#include "nlohmann/json.hpp"

namespace mesa {

enum class PplScope { kAllTokens, kSecondHalf };
// "all" / "second-half" (the CLI spelling) and a sentence for the report.
const char* PplScopeName(PplScope scope);
const char* PplScopeDescription(PplScope scope);
absl::StatusOr<PplScope> ParsePplScope(std::string_view name);

// log p(target) under softmax(logits), in double, stable for any logit range.
double LogProbability(absl::Span<const float> logits, int32_t target);

// Running sum of next-token NLL.
struct NllSum {
  double sum = 0;
  int64_t count = 0;
  double Mean() const { return count > 0 ? sum / static_cast<double>(count) : 0.0; }
  double Perplexity() const;
};

// First scored logits row of a window of `length` tokens.
int64_t FirstScoredRow(int64_t length, PplScope scope);

// Adds -log p(tokens[i + 1] | logits row i) for rows i in [first_row, n - 1), with
// logits [n][n_vocab] row-major and n = tokens.size().
absl::Status AccumulateNll(absl::Span<const float> logits, int64_t n_vocab,
                           absl::Span<const int32_t> tokens, int64_t first_row, NllSum* acc);

struct PplPoint {
  AttentionMethod method = AttentionMethod::kFull;
  int64_t length = 0;
  int64_t windows = 0;
  // In the scope asked for:
  int64_t scored_tokens = 0;
  double mean_nll = 0;
  double ppl = 0;
  // Both scopes come from the same logits at no extra cost:
  double ppl_all = 0;
  double ppl_second_half = 0;
  double seconds = 0;          // wall time of the prefills (all windows)
  PrefillInfo prefill;         // of the first window
  // {"attention", "length", "ppl", "seconds", "nll", "scored_tokens", "windows", "scope",
  //  "ppl_all", "ppl_second_half", "prefill"}
  nlohmann::json ToJson(PplScope scope) const;
};

struct PplOptions {
  std::vector<int64_t> lengths;
  std::vector<AttentionMethod> methods;
  LongContextOptions base;     // everything but the method (Mesa, Self-Extend, ReRoPE knobs)
  PplScope scope = PplScope::kAllTokens;
  int64_t windows = 1;         // windows per length, consecutive in the stream
  int32_t window_bos = -1;     // >= 0: first token of every window becomes this id
  std::function<void(const PplPoint&)> on_point;  // progress, after each point
};

// One (method, length) point over `options.windows` windows of `stream`.
absl::StatusOr<PplPoint> EvalPerplexity(const Model& model, Backend& backend,
                                        absl::Span<const int32_t> stream, int64_t length,
                                        AttentionMethod method, const PplOptions& options);

// Every length x method, lengths outer. Fails before any work when the stream is too
// short for the longest length.
absl::StatusOr<std::vector<PplPoint>> RunPerplexityEval(const Model& model, Backend& backend,
                                                        absl::Span<const int32_t> stream,
                                                        const PplOptions& options);

// Rows: lengths; columns: methods; cells: ppl with 2 decimals (3 significant digits
// for large values).
std::string FormatPplTable(const std::vector<PplPoint>& points);

}  // namespace mesa
