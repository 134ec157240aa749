// DocumentGenerator over the engine's LongContextRunner (any attention method, Mesa by
// default): the model side of `mesa run`. Not thread-safe (one runner).
#pragma once

#include "kernels/backend.h"
#include "engine/long_context.h"
#include "engine/sampling.h"
#include "jobs/batch_runner.h"

namespace mesa::jobs {

class LongContextGenerator : public DocumentGenerator {
 public:
  // `model` and `backend` must outlive the generator.
  LongContextGenerator(const Model& model, Backend& backend, LongContextOptions options,
                       SamplingParams sampling = {});
  absl::StatusOr<GenerationOutput> Generate(absl::Span<const int32_t> prompt, int64_t max_new_tokens) override;

 private:
  LongContextRunner runner_;
  SamplingParams sampling_;
};

}  // namespace mesa::jobs
