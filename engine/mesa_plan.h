// The Mesa-Extrapolation planner (docs: ../shared/docs/MESA_SPEC.md section 1): a pure
// function of the prompt length n, the generation budget, the trained length T and the
// options. It decides whether to chunk at all, the anchor, the balanced middle chunks,
// the last chunk, and the Stair PE parameters N and E (raising E when needed).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/attention_variant.h"  // StairPosition R(d), LognFactor
#include "nlohmann/json.hpp"

namespace mesa {

struct MesaOptions {
  int64_t train_length = 0;  // T; 0: the model's context length (set by the caller)
  int64_t anchor = 100;      // F
  int64_t last_chunk = 512;  // L
  int64_t margin = 64;
  int64_t max_chunk = 0;     // user cap on the middle-chunk width; 0: none
  int64_t stair_n = 0;       // N; 0: min(512, floor(T / 2))
  int64_t stair_e = 50;      // E, raised automatically when R(d_max) would reach T
  bool logn = true;          // log-n query scaling s_t
};

struct TokenRange {
  int64_t begin = 0;
  int64_t end = 0;  // exclusive
  int64_t size() const { return end - begin; }
};

struct MesaPlan {
  int64_t n = 0;               // prompt tokens
  int64_t max_new_tokens = 0;
  int64_t train_length = 0;    // T
  bool chunked = false;        // false: n + max_new <= T, plain causal attention
  TokenRange anchor;           // [0, F)
  std::vector<TokenRange> middle;
  TokenRange last;
  int64_t width_cap = 0;       // W_cap
  int64_t last_target = 0;     // L_eff
  int64_t stair_n = 0;         // N
  int64_t stair_e = 0;         // E after auto-E
  bool logn = true;
  std::vector<std::string> notes;  // what was lowered or raised, and why
};

// Bounds on what PlanMesa accepts (INVALID_ARGUMENT beyond them): every length and
// option at most kMaxPlanTokens (2^40: no sum or difference of them can overflow), and
// at most kMaxMiddleChunks middle chunks (the plan's own memory stays small, whatever a
// request asks).
inline constexpr int64_t kMaxPlanTokens = int64_t{1} << 40;
inline constexpr int64_t kMaxMiddleChunks = int64_t{1} << 20;

absl::StatusOr<MesaPlan> PlanMesa(int64_t n, int64_t max_new_tokens, int64_t train_length,
                                  const MesaOptions& options);

nlohmann::json PlanToJson(const MesaPlan& plan);
std::string PlanToText(const MesaPlan& plan);

}  // namespace mesa
