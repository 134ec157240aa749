// Perplexity against input length over a LongContextRunner (see eval_ppl.h).
#include "jobs/eval_ppl.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "jobs/eval_common.h"

namespace mesa {

const char* PplScopeName(PplScope scope) {
  return scope == PplScope::kSecondHalf ? "second-half" : "all";
}

const char* PplScopeDescription(PplScope scope) {
  return scope == PplScope::kSecondHalf
             ? "NLL of the tokens in the second half of each window (llama-perplexity convention)"
             : "NLL of predicting tokens 1..L-1 of each window of L tokens";
}

absl::StatusOr<PplScope> ParsePplScope(std::string_view name) {
  if (name == "all") return PplScope::kAllTokens;
  if (name == "second-half") return PplScope::kSecondHalf;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown perplexity scope '", std::string(name), "' (use all or second-half)"));
}

double LogProbability(absl::Span<const float> logits, int32_t target) {
  double max = -std::numeric_limits<double>::infinity();
  for (float v : logits) max = std::max(max, static_cast<double>(v));
  double sum = 0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - max);
  return static_cast<double>(logits[target]) - max - std::log(sum);
}

double NllSum::Perplexity() const { return std::exp(Mean()); }

int64_t FirstScoredRow(int64_t length, PplScope scope) {
  return scope == PplScope::kSecondHalf ? length / 2 : 0;
}

absl::Status AccumulateNll(absl::Span<const float> logits, int64_t n_vocab,
                           absl::Span<const int32_t> tokens, int64_t first_row, NllSum* acc) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (static_cast<int64_t>(logits.size()) != n * n_vocab) {
    return absl::InternalError(absl::StrCat("expected ", n, " x ", n_vocab, " logits, got ",
                                            logits.size(), " values"));
  }
  for (int64_t i = std::max<int64_t>(first_row, 0); i + 1 < n; ++i) {
    const int32_t target = tokens[i + 1];
    if (target < 0 || target >= n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", target, " at index ", i + 1, " is outside the vocabulary (",
                       n_vocab, " ids)"));
    }
    const double lp = LogProbability(logits.subspan(i * n_vocab, n_vocab), target);
    if (!std::isfinite(lp)) {
      return absl::InternalError(absl::StrCat("non-finite log-probability at row ", i));
    }
    acc->sum -= lp;
    ++acc->count;
  }
  return absl::OkStatus();
}

nlohmann::json PplPoint::ToJson(PplScope scope) const {
  return {{"attention", AttentionMethodName(method)},
          {"length", length},
          {"ppl", ppl},
          {"seconds", seconds},
          {"nll", mean_nll},
          {"scored_tokens", scored_tokens},
          {"windows", windows},
          {"scope", PplScopeName(scope)},
          {"ppl_all", ppl_all},
          {"ppl_second_half", ppl_second_half},
          {"prefill", prefill.ToJson()}};
}

absl::StatusOr<PplPoint> EvalPerplexity(const Model& model, Backend& backend,
                                        absl::Span<const int32_t> stream, int64_t length,
                                        AttentionMethod method, const PplOptions& options) {
  if (length < 2) return absl::InvalidArgumentError("a perplexity window needs at least 2 tokens");
  const int64_t windows = std::max<int64_t>(options.windows, 1);
  if (static_cast<int64_t>(stream.size()) < windows * length) {
    return absl::InvalidArgumentError(
        absl::StrCat("the text has ", stream.size(), " tokens: too few for ", windows,
                     " window(s) of ", length, " tokens (", windows * length, " needed)"));
  }
  LongContextOptions lc = options.base;
  lc.method = method;
  const int64_t n_vocab = model.config.n_vocab;
  PplPoint point;
  point.method = method;
  point.length = length;
  point.windows = windows;
  NllSum all, second_half;
  std::vector<int32_t> window;
  std::vector<float> logits;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t w = 0; w < windows; ++w) {
    window.assign(stream.begin() + w * length, stream.begin() + (w + 1) * length);
    if (options.window_bos >= 0) window[0] = options.window_bos;
    // A fresh runner per window: no state can leak from one window into the next.
    LongContextRunner runner(model, backend, lc);
    MESA_ASSIGN_OR_RETURN(PrefillInfo info,
                          runner.Prefill(window, /*max_new_tokens=*/0, LogitsMode::kAll, &logits));
    if (w == 0) point.prefill = std::move(info);
    MESA_RETURN_IF_ERROR(
        AccumulateNll(logits, n_vocab, window, FirstScoredRow(length, PplScope::kAllTokens), &all));
    MESA_RETURN_IF_ERROR(AccumulateNll(logits, n_vocab, window,
                                       FirstScoredRow(length, PplScope::kSecondHalf), &second_half));
  }
  point.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const NllSum& nll = options.scope == PplScope::kSecondHalf ? second_half : all;
  point.ppl_all = all.Perplexity();
  point.ppl_second_half = second_half.Perplexity();
  point.scored_tokens = nll.count;
  point.mean_nll = nll.Mean();
  point.ppl = nll.Perplexity();
  return point;
}

absl::StatusOr<std::vector<PplPoint>> RunPerplexityEval(const Model& model, Backend& backend,
                                                        absl::Span<const int32_t> stream,
                                                        const PplOptions& options) {
  if (options.lengths.empty()) return absl::InvalidArgumentError("no lengths given");
  if (options.methods.empty()) return absl::InvalidArgumentError("no attention method given");
  const int64_t longest = *std::max_element(options.lengths.begin(), options.lengths.end());
  const int64_t windows = std::max<int64_t>(options.windows, 1);
  if (static_cast<int64_t>(stream.size()) < windows * longest) {
    return absl::InvalidArgumentError(
        absl::StrCat("the text has ", stream.size(), " tokens: too few for ", windows,
                     " window(s) of ", longest, " tokens (", windows * longest,
                     " needed); give a longer text, fewer --windows or shorter --lengths"));
  }
  std::vector<PplPoint> points;
  for (int64_t length : options.lengths) {
    for (AttentionMethod method : options.methods) {
      absl::StatusOr<PplPoint> p = EvalPerplexity(model, backend, stream, length, method, options);
      if (!p.ok()) {
        return absl::Status(p.status().code(),
                            absl::StrCat(AttentionMethodName(method), " at length ", length, ": ",
                                         p.status().message()));
      }
      if (options.on_point) options.on_point(*p);
      points.push_back(*std::move(p));
    }
  }
  return points;
}

std::string FormatPplTable(const std::vector<PplPoint>& points) {
  std::vector<int64_t> lengths;
  std::vector<AttentionMethod> methods;
  for (const PplPoint& p : points) {
    if (std::find(lengths.begin(), lengths.end(), p.length) == lengths.end()) lengths.push_back(p.length);
    if (std::find(methods.begin(), methods.end(), p.method) == methods.end()) methods.push_back(p.method);
  }
  std::vector<std::string> rows, columns, cells(lengths.size() * methods.size());
  for (int64_t l : lengths) rows.push_back(absl::StrCat(l));
  for (AttentionMethod m : methods) columns.push_back(AttentionMethodName(m));
  for (const PplPoint& p : points) {
    const size_t r = std::find(lengths.begin(), lengths.end(), p.length) - lengths.begin();
    const size_t c = std::find(methods.begin(), methods.end(), p.method) - methods.begin();
    cells[r * methods.size() + c] =
        p.ppl < 1000 ? absl::StrFormat("%.2f", p.ppl) : absl::StrFormat("%.4g", p.ppl);
  }
  return FormatGrid("length", rows, columns, cells);
}

}  // namespace mesa
