// Running a prompt of any length with a chosen attention method, behind one facade:
//   full        the original model, ordinary positions at any length ("Origin")
//   mesa        Mesa-Extrapolation: anchor + independent middle chunks, then the last
//               chunk and decoding with Stair PE (engine/mesa_phases.h)
//   self-extend grouped positions beyond a neighbour window (Self-Extend)
//   rerope      relative positions clamped at a window (ReRoPE)
//   auto        mesa (which by the spec is plain attention when the input fits)
// Used by `mesa generate/logits/bench/run/eval`. Not thread-safe: one per thread of
// control; the Model is shared.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/mesa_plan.h"
#include "kernels/attention.h"
#include "nlohmann/json.hpp"

namespace mesa {

enum class AttentionMethod { kAuto, kMesa, kFull, kSelfExtend, kReRope };
const char* AttentionMethodName(AttentionMethod m);
absl::StatusOr<AttentionMethod> ParseAttentionMethod(const std::string& name);

struct LongContextOptions {
  AttentionMethod method = AttentionMethod::kAuto;
  MesaOptions mesa;            // train_length 0: the model's context length
  int64_t se_group = 0;        // Self-Extend group size G; 0: smallest that keeps positions < T
  int64_t se_window = 0;       // Self-Extend neighbour window W; 0: T / 4
  int64_t rerope_window = 0;   // ReRoPE window w; 0: N's default, min(512, T / 2)
};

// What a prefill did: the method actually used and (for mesa) its plan.
struct PrefillInfo {
  AttentionMethod method = AttentionMethod::kFull;
  MesaPlan plan;               // meaningful when method == kMesa
  RelativePosition rel;        // self-extend / rerope parameters used
  int64_t train_length = 0;
  nlohmann::json ToJson() const;
};

// The trained length T in force: options.mesa.train_length, else the model's context
// length (INVALID_ARGUMENT when neither states one).
absl::StatusOr<int64_t> TrainLengthFor(const Model& model, const LongContextOptions& options);
// The Mesa plan LongContextRunner::Prefill uses (methods auto and mesa) for a prompt of
// n tokens: callers that run the phases themselves (distributed workers) plan the same.
absl::StatusOr<MesaPlan> PlanFor(const Model& model, const LongContextOptions& options, int64_t n,
                                 int64_t max_new_tokens);

class LongContextRunner {
 public:
  LongContextRunner(const Model& model, Backend& backend, LongContextOptions options);
  ~LongContextRunner();

  // Runs the whole prompt and leaves the state ready for DecodeStep. `max_new_tokens`
  // is part of the plan (positions must stay in range while generating).
  // logits: kLast -> [n_vocab]; kAll -> [n][n_vocab], each token's logits from the
  // phase that computes it (under mesa: anchor, its middle chunk, or the final pass).
  absl::StatusOr<PrefillInfo> Prefill(absl::Span<const int32_t> prompt, int64_t max_new_tokens,
                                      LogitsMode mode, std::vector<float>* logits);
  // Appends one token and returns its next-token logits.
  absl::Status DecodeStep(int32_t token, std::vector<float>* logits);
  // Asked between the phases of a Mesa prefill (after the anchor and after each middle
  // chunk): true stops it with CANCELLED, so that a cancelled task over a long document
  // does not compute the rest of it. Null (the default): never stops.
  void SetStopCheck(std::function<bool()> stop);

  const Model& model() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Prefill + sampling loop (as engine/generate.h) over a LongContextRunner.
struct LongGenerateResult {
  GenerateResult generation;
  PrefillInfo prefill;
};
absl::StatusOr<LongGenerateResult> GenerateLong(LongContextRunner& runner,
                                                absl::Span<const int32_t> prompt,
                                                const GenerateOptions& options);

}  // namespace mesa
