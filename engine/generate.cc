#include "engine/generate.h"

#include <algorithm>
#include <chrono>

#include "common/status.h"

namespace mesa {
namespace {
double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

double GenerateResult::prefill_tokens_per_s() const {
  return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0.0;
}
double GenerateResult::decode_tokens_per_s() const {
  return decode_seconds > 0 ? decode_steps / decode_seconds : 0.0;
}

absl::StatusOr<GenerateResult> GenerateWith(const PrefillFn& prefill, const StepFn& step,
                                            const Tokenizer* tok, int64_t prompt_tokens,
                                            const GenerateOptions& options) {
  if (options.max_new_tokens < 0) return absl::InvalidArgumentError("max_new_tokens < 0");
  GenerateResult result;
  result.prompt_tokens = prompt_tokens;
  Sampler sampler(options.sampling);
  std::vector<float> logits;

  auto t0 = std::chrono::steady_clock::now();
  MESA_RETURN_IF_ERROR(prefill(&logits));
  result.prefill_seconds = Seconds(t0, std::chrono::steady_clock::now());

  result.stop_reason = "length";
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    int32_t next = sampler.Sample(logits);
    result.tokens.push_back(next);
    if (options.on_token && !options.on_token(next)) {
      result.stop_reason = "callback";
      break;
    }
    if (options.stop_at_eos && tok && tok->IsEndOfGeneration(next)) {
      result.stop_reason = "eos";
      break;
    }
    if (i + 1 == options.max_new_tokens) break;
    auto s0 = std::chrono::steady_clock::now();
    MESA_RETURN_IF_ERROR(step(next, &logits));
    result.decode_seconds += Seconds(s0, std::chrono::steady_clock::now());
    ++result.decode_steps;
  }
  return result;
}

absl::StatusOr<GenerateResult> Generate(ModelRunner& runner, absl::Span<const int32_t> prompt,
                                        const GenerateOptions& options) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  MESA_ASSIGN_OR_RETURN(KvCache cache,
                        runner.MakeCache(InitialCacheTokens(static_cast<int64_t>(prompt.size()), options.max_new_tokens)));
  return GenerateWith(
      [&](std::vector<float>* logits) {
        return runner.Forward(prompt, cache, LogitsMode::kLast, logits);
      },
      [&](int32_t token, std::vector<float>* logits) {
        return runner.Forward({&token, 1}, cache, LogitsMode::kLast, logits);
      },
      runner.model().tokenizer.get(), static_cast<int64_t>(prompt.size()), options);
}

}  // namespace mesa
