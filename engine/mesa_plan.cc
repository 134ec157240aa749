// The Mesa-Extrapolation planner (MESA_SPEC.md section 1). Everything here is integer
// arithmetic on lengths; the notes say, in the user's terms, every value that was
// lowered or raised so that a plan can be explained from its printout alone.
#include "engine/mesa_plan.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mesa {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

absl::Status CheckOptions(int64_t n, int64_t max_new_tokens, int64_t train_length,
                          const MesaOptions& o) {
  auto negative = [](const char* what, int64_t v) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must not be negative (got ", v, ")"));
  };
  if (n < 1) return absl::InvalidArgumentError(absl::StrCat("the prompt is empty (n = ", n, ")"));
  // Lengths beyond any real input (a hostile request): refused before any arithmetic
  // on them can overflow.
  auto too_large = [](const char* what, int64_t v) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " = ", v, " is larger than the planner's limit ", kMaxPlanTokens));
  };
  if (n > kMaxPlanTokens) return too_large("the prompt length n", n);
  if (max_new_tokens > kMaxPlanTokens) return too_large("max_new_tokens", max_new_tokens);
  if (train_length > kMaxPlanTokens) return too_large("the trained length T", train_length);
  for (auto [what, v] : {std::pair{"train_length (T)", o.train_length}, {"anchor (F)", o.anchor},
                         {"last_chunk (L)", o.last_chunk}, {"margin", o.margin}, {"max_chunk", o.max_chunk},
                         {"stair_n (N)", o.stair_n}, {"stair_e (E)", o.stair_e}}) {
    if (v > kMaxPlanTokens) return too_large(what, v);
  }
  if (max_new_tokens < 0) return negative("max_new_tokens", max_new_tokens);
  if (train_length < 0) return negative("the trained length T", train_length);
  if (o.train_length < 0) return negative("train_length (T)", o.train_length);
  if (o.anchor < 0) return negative("anchor (F)", o.anchor);
  if (o.last_chunk < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("last_chunk (L) must be at least 1 (got ", o.last_chunk, ")"));
  }
  if (o.margin < 0) return negative("margin", o.margin);
  if (o.max_chunk < 0) return negative("max_chunk (0 = no cap)", o.max_chunk);
  if (o.stair_n < 0) return negative("stair_n (N; 0 = default)", o.stair_n);
  if (o.stair_e < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("stair_e (E) must be at least 1 (got ", o.stair_e, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MesaPlan> PlanMesa(int64_t n, int64_t max_new_tokens, int64_t train_length,
                                  const MesaOptions& options) {
  if (absl::Status s = CheckOptions(n, max_new_tokens, train_length, options); !s.ok()) return s;
  // The option overrides the caller's value (the model's context length).
  const int64_t t = options.train_length > 0 ? options.train_length : train_length;
  if (t < 1) {
    return absl::InvalidArgumentError(
        "the trained context length T is unknown: the model does not say; give --train-length");
  }

  MesaPlan plan;
  plan.n = n;
  plan.max_new_tokens = max_new_tokens;
  plan.train_length = t;
  plan.logn = options.logn;
  plan.stair_n = options.stair_n > 0 ? options.stair_n : std::min<int64_t>(512, t / 2);
  plan.stair_e = options.stair_e;

  if (n + max_new_tokens <= t) {
    // Plain causal attention with ordinary positions: the whole prompt is the "last chunk".
    plan.chunked = false;
    plan.last = {0, n};
    plan.notes.push_back(absl::StrCat("no chunking: n + max_new_tokens = ", n + max_new_tokens,
                                      " <= T = ", t, ", plain attention"));
    return plan;
  }
  plan.chunked = true;

  if (plan.stair_n >= t) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stair N = ", plan.stair_n, " must be below the trained length T = ", t,
        " when the input is chunked (n + max_new_tokens = ", n + max_new_tokens, ")"));
  }

  // Anchor.
  int64_t f = options.anchor;
  if (f >= n) {
    f = n - 1;
    plan.notes.push_back(absl::StrCat("anchor shortened from ", options.anchor, " to ", f,
                                      " tokens: the prompt has only ", n));
  }
  plan.anchor = {0, f};

  // Width cap.
  const int64_t natural_cap = t - f - options.margin;
  int64_t w_cap = natural_cap;
  if (options.max_chunk > 0 && options.max_chunk < w_cap) {
    w_cap = options.max_chunk;
    plan.notes.push_back(absl::StrCat("middle-chunk width capped at ", w_cap, " by max_chunk (T - F - margin = ",
                                      natural_cap, ")"));
  }
  if (w_cap < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no room for a middle chunk: width cap W_cap = T - F - margin = ", t, " - ", f, " - ",
        options.margin, " = ", natural_cap,
        " < 1; lower the anchor or the margin, or raise the trained length"));
  }
  plan.width_cap = w_cap;

  // Last-chunk target and the number of middle chunks.
  const int64_t l_eff = std::min(options.last_chunk, w_cap);
  if (l_eff < options.last_chunk) {
    plan.notes.push_back(absl::StrCat("last-chunk target lowered from ", options.last_chunk, " to ", l_eff,
                                      " (the width cap W_cap)"));
  }
  plan.last_target = l_eff;
  const int64_t k = CeilDiv(n - f - l_eff, w_cap);
  if (k > kMaxMiddleChunks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the plan would have ", k, " middle chunks (n = ", n, ", width cap ", w_cap, "); at most ",
        kMaxMiddleChunks, " are allowed: raise max_chunk or the trained length"));
  }
  if (k == 0) {
    plan.last = {f, n};
  } else {
    const int64_t balanced = (n - f) / (k + 1);
    const int64_t last_len = std::min(l_eff, balanced);
    if (last_len < l_eff) {
      plan.notes.push_back(absl::StrCat("last chunk shortened from ", l_eff, " to ", last_len,
                                        " tokens so that it is not longer than a middle chunk"));
    }
    const int64_t s_last = n - last_len;
    plan.last = {s_last, n};
    const int64_t m = s_last - f;
    const int64_t base = m / k, wider = m % k;
    int64_t begin = f;
    plan.middle.reserve(k);
    for (int64_t c = 0; c < k; ++c) {
      const int64_t w = base + (c < wider ? 1 : 0);
      plan.middle.push_back({begin, begin + w});
      begin += w;
    }
  }

  // Auto-E: the farthest relative position must map below T.
  const int64_t d_max = n + max_new_tokens - 1;
  const int64_t nn = plan.stair_n;
  if (d_max >= nn && StairPosition(d_max, nn, plan.stair_e) > t - 1) {
    const int64_t e = (d_max - nn) / (t - nn) + 1;
    plan.notes.push_back(absl::StrCat("stair E raised from ", plan.stair_e, " to ", e, " so that R(d_max = ", d_max,
                                      ") = ", StairPosition(d_max, nn, e), " <= T - 1 = ", t - 1));
    plan.stair_e = e;
  }
  return plan;
}

nlohmann::json PlanToJson(const MesaPlan& plan) {
  auto range = [](const TokenRange& r) { return nlohmann::json::array({r.begin, r.end}); };
  nlohmann::json middle = nlohmann::json::array();
  for (const TokenRange& r : plan.middle) middle.push_back(range(r));
  return {{"n", plan.n},
          {"max_new_tokens", plan.max_new_tokens},
          {"train_length", plan.train_length},
          {"chunked", plan.chunked},
          {"anchor", range(plan.anchor)},
          {"middle", std::move(middle)},
          {"last", range(plan.last)},
          {"width_cap", plan.width_cap},
          {"last_target", plan.last_target},
          {"stair_n", plan.stair_n},
          {"stair_e", plan.stair_e},
          {"logn", plan.logn},
          {"notes", plan.notes}};
}

std::string PlanToText(const MesaPlan& plan) {
  auto range = [](const TokenRange& r) {
    return absl::StrFormat("[%d, %d)  %d tokens", r.begin, r.end, r.size());
  };
  std::string out = absl::StrFormat("prompt:  %d tokens, %d to generate, trained length T = %d\n", plan.n,
                                    plan.max_new_tokens, plan.train_length);
  if (!plan.chunked) {
    absl::StrAppend(&out, "plan:    no chunking (plain causal attention, ordinary positions)\n");
  } else {
    absl::StrAppend(&out, "plan:    chunked (Mesa-Extrapolation)\n");
    absl::StrAppend(&out, "anchor:  ", range(plan.anchor), "\n");
    if (plan.middle.empty()) {
      absl::StrAppend(&out, "middle:  none\n");
    } else {
      int64_t lo = plan.middle.front().size(), hi = lo;
      for (const TokenRange& r : plan.middle) {
        lo = std::min(lo, r.size());
        hi = std::max(hi, r.size());
      }
      absl::StrAppendFormat(&out, "middle:  %d chunks of %d", plan.middle.size(), lo);
      if (hi != lo) absl::StrAppendFormat(&out, "-%d", hi);
      absl::StrAppendFormat(&out, " tokens (width cap %d)\n", plan.width_cap);
      // Long lists are elided in the middle; PlanToJson has every range.
      const size_t count = plan.middle.size();
      for (size_t c = 0; c < count; ++c) {
        if (count > 16 && c == 8) {
          absl::StrAppendFormat(&out, "  ...     (%d more)\n", count - 12);
          c = count - 5;
          continue;
        }
        absl::StrAppendFormat(&out, "  #%-5d  %s\n", c, range(plan.middle[c]));
      }
    }
    absl::StrAppend(&out, "last:    ", range(plan.last), absl::StrFormat(" (target %d)\n", plan.last_target));
  }
  if (plan.chunked) {
    absl::StrAppendFormat(&out, "stair:   N = %d, E = %d; log-n scaling %s\n", plan.stair_n, plan.stair_e,
                          plan.logn ? "on" : "off");
  }
  for (const std::string& note : plan.notes) absl::StrAppend(&out, "note:    ", note, "\n");
  return out;
}

}  // namespace mesa
