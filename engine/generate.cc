#include "engine/generate.h"

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

absl::StatusOr<GenerateResult> Generate(ModelRunner& runner, absl::Span<const int32_t> prompt,
                                        const GenerateOptions& options) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  if (options.max_new_tokens < 0) return absl::InvalidArgumentError("max_new_tokens < 0");
  const Tokenizer* tok = runner.model().tokenizer.get();
  GenerateResult result;
  result.prompt_tokens = static_cast<int64_t>(prompt.size());
  KvCache cache = runner.NewCache(static_cast<int64_t>(prompt.size()) + options.max_new_tokens);
  Sampler sampler(options.sampling);
  std::vector<float> logits;

  auto t0 = std::chrono::steady_clock::now();
  MESA_RETURN_IF_ERROR(runner.Forward(prompt, cache, LogitsMode::kLast, &logits));
  auto t1 = std::chrono::steady_clock::now();
  result.prefill_seconds = Seconds(t0, t1);

  result.stop_reason = "length";
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
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
    if (step + 1 == options.max_new_tokens) break;
    auto s0 = std::chrono::steady_clock::now();
    MESA_RETURN_IF_ERROR(runner.Forward({&next, 1}, cache, LogitsMode::kLast, &logits));
    result.decode_seconds += Seconds(s0, std::chrono::steady_clock::now());
    ++result.decode_steps;
  }
  return result;
}

}  // namespace mesa
