// Passkey retrieval: prompt builder, answer parsing and the evaluation loop (see
// eval_passkey.h).
#include "jobs/eval_passkey.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "jobs/eval_common.h"

namespace mesa {
namespace {

bool WordEndsSentence(std::string_view w) {
  while (!w.empty() && (w.back() == '"' || w.back() == '\'' || w.back() == ')')) w.remove_suffix(1);
  return !w.empty() && (w.back() == '.' || w.back() == '!' || w.back() == '?');
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Filler words [start, start + m) with the information line after word `k`.
struct Layout {
  int64_t m = 0;
  int64_t k = 0;
};

// The word count nearest to `depth * m` at which a sentence ends (or 0 or m).
int64_t SnapToSentence(const PasskeyFiller& filler, int64_t start, int64_t m, double depth) {
  const int64_t want = std::clamp<int64_t>(std::llround(depth * static_cast<double>(m)), 0, m);
  auto boundary = [&](int64_t j) { return j == 0 || j == m || filler.EndsSentence(start + j - 1); };
  for (int64_t d = 0;; ++d) {
    if (want - d >= 0 && boundary(want - d)) return want - d;
    if (want + d <= m && boundary(want + d)) return want + d;
  }
}

struct PromptParts {
  std::string before;  // everything before the information line, with its newline
  std::string text;
};

PromptParts ComposePrompt(const PasskeyFiller& filler, int64_t start, const Layout& layout,
                          int64_t key, const PasskeyPromptOptions& options) {
  std::vector<std::string> parts;
  if (options.task_description) parts.emplace_back(kPasskeyTaskDescription);
  if (layout.k > 0) parts.push_back(filler.Join(start, start + layout.k));
  PromptParts out;
  if (!parts.empty()) out.before = absl::StrCat(absl::StrJoin(parts, "\n"), "\n");
  parts.push_back(PasskeyInformationLine(key));
  if (layout.m > layout.k) parts.push_back(filler.Join(start + layout.k, start + layout.m));
  parts.emplace_back(kPasskeyQuestion);
  out.text = absl::StrJoin(parts, "\n");
  return out;
}

}  // namespace

std::string PasskeyInformationLine(int64_t key) {
  return absl::StrCat("The pass key is ", key, ". Remember it. ", key, " is the pass key.");
}

std::optional<int64_t> FirstInteger(std::string_view answer) {
  size_t i = 0;
  while (i < answer.size() && !(answer[i] >= '0' && answer[i] <= '9')) ++i;
  if (i == answer.size()) return std::nullopt;
  size_t j = i;
  while (j < answer.size() && answer[j] >= '0' && answer[j] <= '9') ++j;
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(answer.data() + i, answer.data() + j, v);
  if (ec != std::errc()) return std::nullopt;
  return v;
}

PasskeyFiller PasskeyFiller::Classic() {
  absl::StatusOr<PasskeyFiller> f = FromText(kPasskeyClassicFiller, "classic");
  f->classic_ = true;
  return *std::move(f);
}

absl::StatusOr<PasskeyFiller> PasskeyFiller::FromText(std::string_view text, std::string name) {
  PasskeyFiller f;
  f.name_ = std::move(name);
  for (absl::string_view w : absl::StrSplit(absl::string_view(text.data(), text.size()),
                                            absl::ByAnyChar(" \t\r\n\f\v"), absl::SkipEmpty())) {
    f.words_.emplace_back(w.data(), w.size());
    f.ends_sentence_.push_back(WordEndsSentence(f.words_.back()));
  }
  if (std::find(f.ends_sentence_.begin(), f.ends_sentence_.end(), true) == f.ends_sentence_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("filler text '", f.name_, "' has no complete sentence (", f.words_.size(),
                     " words, none ending in '.', '!' or '?')"));
  }
  return f;
}

int64_t PasskeyFiller::SentenceStartAtOrAfter(int64_t i) const {
  for (int64_t j = i;; ++j) {
    if (EndsSentence(j - 1 + size())) return j;  // word j-1 ends a sentence (cyclic)
  }
}

std::string PasskeyFiller::Join(int64_t begin, int64_t end) const {
  std::string out;
  for (int64_t i = begin; i < end; ++i) {
    if (i > begin) out += ' ';
    out += Word(i);
  }
  return out;
}

absl::StatusOr<PasskeyPrompt> BuildPasskeyPrompt(const Tokenizer& tokenizer,
                                                 const PasskeyFiller& filler,
                                                 int64_t target_tokens, int64_t key, double depth,
                                                 int64_t filler_start,
                                                 const PasskeyPromptOptions& options) {
  if (!(depth >= 0.0 && depth <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("passkey depth ", depth, " is not in [0, 1]"));
  }
  auto layout_for = [&](int64_t m) { return Layout{m, SnapToSentence(filler, filler_start, m, depth)}; };
  auto count = [&](int64_t m) -> absl::StatusOr<int64_t> {
    MESA_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                          tokenizer.Encode(ComposePrompt(filler, filler_start, layout_for(m), key,
                                                         options).text,
                                           options.encode));
    return static_cast<int64_t>(ids.size());
  };
  MESA_ASSIGN_OR_RETURN(const int64_t bare, count(0));
  if (bare > target_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("length ", target_tokens,
                                                   " is too short for the passkey prompt: it needs ",
                                                   bare, " tokens without any filler"));
  }
  // Largest m with count(m) <= target: estimate from the token rate of a sample, then
  // bracket and bisect (token counts grow with m, up to tokenization at the seams).
  int64_t lo = 0, hi = 0;
  {
    const int64_t probe = std::min<int64_t>(256, std::max<int64_t>(8, target_tokens));
    MESA_ASSIGN_OR_RETURN(const int64_t t, count(probe));
    const double rate = std::max(1e-3, static_cast<double>(t - bare) / probe);  // tokens/word
    const int64_t guess = static_cast<int64_t>((target_tokens - bare) / rate);
    lo = std::max<int64_t>(0, guess - guess / 16 - 4);
    hi = guess + guess / 16 + 4;
    for (;;) {
      MESA_ASSIGN_OR_RETURN(const int64_t c, count(lo));
      if (c <= target_tokens) break;
      hi = lo;
      lo /= 2;
    }
    for (;;) {
      MESA_ASSIGN_OR_RETURN(const int64_t c, count(hi));
      if (c > target_tokens) break;
      lo = hi;
      hi *= 2;
    }
  }
  while (hi - lo > 1) {  // invariant: count(lo) <= target < count(hi)
    const int64_t mid = lo + (hi - lo) / 2;
    MESA_ASSIGN_OR_RETURN(const int64_t c, count(mid));
    (c <= target_tokens ? lo : hi) = mid;
  }
  const Layout layout = layout_for(lo);
  PromptParts parts = ComposePrompt(filler, filler_start, layout, key, options);
  PasskeyPrompt prompt;
  MESA_ASSIGN_OR_RETURN(prompt.tokens, tokenizer.Encode(parts.text, options.encode));
  // Tokens before the information line (BOS included when the prompt has one).
  MESA_ASSIGN_OR_RETURN(std::vector<int32_t> before, tokenizer.Encode(parts.before, options.encode));
  prompt.key_token_offset = static_cast<int64_t>(before.size());
  prompt.text = std::move(parts.text);
  prompt.key = key;
  prompt.requested_depth = depth;
  prompt.filler_words = layout.m;
  return prompt;
}

PasskeyDraw DrawPasskey(uint64_t seed, int64_t length, int64_t sample, const PasskeyFiller& filler) {
  std::mt19937_64 rng(SplitMix64(SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(length)) ^
                                 static_cast<uint64_t>(sample)));
  PasskeyDraw d;
  d.key = 10000 + static_cast<int64_t>(rng() % 90000);
  d.depth = static_cast<double>(rng() >> 11) * 0x1.0p-53;
  const int64_t offset = static_cast<int64_t>(rng() % static_cast<uint64_t>(filler.size()));
  d.filler_start = filler.classic() ? 0 : filler.SentenceStartAtOrAfter(offset) % filler.size();
  return d;
}

nlohmann::json PasskeyTrial::ToJson() const {
  nlohmann::json j = {{"attention", AttentionMethodName(method)},
                      {"length", length},
                      {"sample", sample},
                      {"key", key},
                      {"prompt_tokens", prompt_tokens},
                      {"depth", depth},
                      {"answer", answer},
                      {"hit", hit},
                      {"seconds", seconds}};
  j["answered"] = answered ? nlohmann::json(*answered) : nlohmann::json(nullptr);
  return j;
}

nlohmann::json PasskeyPoint::ToJson() const {
  nlohmann::json trials_json = nlohmann::json::array();
  for (const PasskeyTrial& t : trials) trials_json.push_back(t.ToJson());
  return {{"attention", AttentionMethodName(method)},
          {"length", length},
          {"accuracy", accuracy()},
          {"hits", hits},
          {"samples", samples},
          {"seconds", seconds},
          {"trials", std::move(trials_json)}};
}

absl::StatusOr<std::vector<PasskeyPoint>> RunPasskeyEval(const Model& model, Backend& backend,
                                                         const PasskeyFiller& filler,
                                                         const PasskeyOptions& options) {
  if (!model.tokenizer) return absl::FailedPreconditionError("the model has no tokenizer");
  if (options.lengths.empty()) return absl::InvalidArgumentError("no lengths given");
  if (options.methods.empty()) return absl::InvalidArgumentError("no attention method given");
  if (options.samples < 1) return absl::InvalidArgumentError("--samples must be at least 1");
  const Tokenizer& tok = *model.tokenizer;
  std::vector<PasskeyPoint> points;
  for (int64_t length : options.lengths) {
    const size_t first = points.size();
    for (AttentionMethod m : options.methods) {
      PasskeyPoint p;
      p.method = m;
      p.length = length;
      points.push_back(std::move(p));
    }
    for (int64_t s = 0; s < options.samples; ++s) {
      const PasskeyDraw draw = DrawPasskey(options.seed, length, s, filler);
      absl::StatusOr<PasskeyPrompt> prompt =
          BuildPasskeyPrompt(tok, filler, length, draw.key, draw.depth, draw.filler_start, options.prompt);
      if (!prompt.ok()) return prompt.status();
      for (size_t mi = 0; mi < options.methods.size(); ++mi) {
        LongContextOptions lc = options.base;
        lc.method = options.methods[mi];
        LongContextRunner runner(model, backend, lc);
        GenerateOptions gen;
        gen.max_new_tokens = options.max_new_tokens;
        gen.stop_at_eos = true;
        const auto start = std::chrono::steady_clock::now();
        absl::StatusOr<LongGenerateResult> r = GenerateLong(runner, prompt->tokens, gen);
        if (!r.ok()) {
          return absl::Status(r.status().code(),
                              absl::StrCat(AttentionMethodName(lc.method), " at length ", length,
                                           ", sample ", s, ": ", r.status().message()));
        }
        PasskeyTrial t;
        t.method = lc.method;
        t.length = length;
        t.sample = s;
        t.key = draw.key;
        t.prompt_tokens = static_cast<int64_t>(prompt->tokens.size());
        t.depth = prompt->depth();
        t.answer = tok.Decode(r->generation.tokens);
        t.answered = FirstInteger(t.answer);
        t.hit = t.answered.has_value() && *t.answered == draw.key;
        t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (options.on_trial) options.on_trial(t);
        PasskeyPoint& p = points[first + mi];
        ++p.samples;
        p.hits += t.hit ? 1 : 0;
        p.seconds += t.seconds;
        p.trials.push_back(std::move(t));
      }
    }
  }
  return points;
}

std::string FormatPasskeyTable(const std::vector<PasskeyPoint>& points) {
  std::vector<int64_t> lengths;
  std::vector<AttentionMethod> methods;
  for (const PasskeyPoint& p : points) {
    if (std::find(lengths.begin(), lengths.end(), p.length) == lengths.end()) lengths.push_back(p.length);
    if (std::find(methods.begin(), methods.end(), p.method) == methods.end()) methods.push_back(p.method);
  }
  std::vector<std::string> rows, columns, cells(lengths.size() * methods.size());
  for (int64_t l : lengths) rows.push_back(absl::StrCat(l));
  for (AttentionMethod m : methods) columns.push_back(AttentionMethodName(m));
  for (const PasskeyPoint& p : points) {
    const size_t r = std::find(lengths.begin(), lengths.end(), p.length) - lengths.begin();
    const size_t c = std::find(methods.begin(), methods.end(), p.method) - methods.begin();
    cells[r * methods.size() + c] = absl::StrFormat("%.2f (%d/%d)", p.accuracy(), p.hits, p.samples);
  }
  return FormatGrid("length", rows, columns, cells);
}

}  // namespace mesa
