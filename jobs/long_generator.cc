// LongContextGenerator: GenerateLong with greedy (or given) sampling, as a GenerationOutput.
#include "jobs/long_generator.h"

#include <utility>

namespace mesa::jobs {

LongContextGenerator::LongContextGenerator(const Model& model, Backend& backend, LongContextOptions options,
                                           SamplingParams sampling)
    : runner_(model, backend, std::move(options)), sampling_(sampling) {}

absl::StatusOr<GenerationOutput> LongContextGenerator::Generate(absl::Span<const int32_t> prompt,
                                                                int64_t max_new_tokens) {
  GenerateOptions options;
  options.max_new_tokens = max_new_tokens;
  options.sampling = sampling_;
  options.stop_at_eos = true;
  auto r = GenerateLong(runner_, prompt, options);
  if (!r.ok()) return r.status();
  GenerationOutput out;
  out.tokens = std::move(r->generation.tokens);
  out.stop_reason = r->generation.stop_reason;
  out.attention = AttentionMethodName(r->prefill.method);
  out.plan = r->prefill.ToJson();
  out.prefill_s = r->generation.prefill_seconds;
  out.decode_s = r->generation.decode_seconds;
  return out;
}

}  // namespace mesa::jobs
