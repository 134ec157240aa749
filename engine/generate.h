// Prompt-in, tokens-out generation on one ModelRunner: batched prefill of the prompt,
// then one-token decode steps against the KV cache until EOS or the token budget.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/forward.h"
#include "engine/sampling.h"

namespace mesa {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingParams sampling;
  bool stop_at_eos = true;
  // Called with each generated token as soon as it is chosen; return false to stop.
  std::function<bool(int32_t)> on_token;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids only (EOS included when it stopped there)
  std::string stop_reason;      // "eos", "length" or "callback"
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int64_t decode_steps = 0;     // forward calls after the prefill
  double prefill_tokens_per_s() const;
  double decode_tokens_per_s() const;
};

absl::StatusOr<GenerateResult> Generate(ModelRunner& runner, absl::Span<const int32_t> prompt,
                                        const GenerateOptions& options);

// The sampling loop itself, over any way of running the model: `prefill` runs the
// prompt and fills the last token's logits; `step` appends one token and refills them.
using PrefillFn = std::function<absl::Status(std::vector<float>* logits)>;
using StepFn = std::function<absl::Status(int32_t token, std::vector<float>* logits)>;
absl::StatusOr<GenerateResult> GenerateWith(const PrefillFn& prefill, const StepFn& step,
                                            const Tokenizer* tokenizer, int64_t prompt_tokens,
                                            const GenerateOptions& options);

}  // namespace mesa
