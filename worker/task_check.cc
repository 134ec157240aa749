// Chunk and final task validation against their plan (see task_check.h).
#include "worker/task_check.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/kv_transport.h"

namespace mesa::worker {

bool UsesMesa(const LongContextOptions& o) {
  return o.method == AttentionMethod::kAuto || o.method == AttentionMethod::kMesa;
}

absl::StatusOr<MesaPlan> CheckChunkTask(const Model& model, const ChunkTask& task) {
  if (!UsesMesa(task.options)) {
    return absl::InvalidArgumentError(absl::StrCat("chunk task ", KvKeyString(task.key), ": method ",
                                                   AttentionMethodName(task.options.method),
                                                   " has no chunks (use auto or mesa)"));
  }
  if (task.max_new_tokens < 0) return absl::InvalidArgumentError("max_new_tokens < 0");
  MESA_ASSIGN_OR_RETURN(
      MesaPlan plan,
      PlanFor(model, task.options,
              task.prompt_length > 0 ? task.prompt_length : static_cast<int64_t>(task.prompt.size()),
              task.max_new_tokens));
  if (!plan.chunked) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk task ", KvKeyString(task.key), ": the prompt (", plan.n, " tokens + ",
        plan.max_new_tokens, " new) fits the trained length ", plan.train_length,
        " and is not chunked"));
  }
  const int64_t n_middle = static_cast<int64_t>(plan.middle.size());
  if (task.key.chunk < 0 || task.key.chunk >= n_middle) {
    return absl::InvalidArgumentError(absl::StrCat("chunk task ", KvKeyString(task.key),
                                                   ": chunk index ", task.key.chunk,
                                                   " is outside the plan's ", n_middle,
                                                   " middle chunks"));
  }
  const TokenRange r = plan.middle[task.key.chunk];
  const int64_t sent = static_cast<int64_t>(task.prompt.size());
  if (task.prompt_length > 0 && sent != plan.anchor.size() + r.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk task ", KvKeyString(task.key), ": ", sent, " tokens sent; the anchor and chunk ",
        task.key.chunk, " of a ", task.prompt_length, "-token prompt need ", plan.anchor.size() + r.size()));
  }
  return plan;
}

absl::StatusOr<std::optional<MesaPlan>> CheckFinalTask(const Model& model, const FinalTask& task, bool has_fetcher) {
  if (task.max_new_tokens < 0) return absl::InvalidArgumentError("max_new_tokens < 0");
  std::optional<MesaPlan> plan;
  if (UsesMesa(task.options)) {
    MESA_ASSIGN_OR_RETURN(plan, PlanFor(model, task.options, static_cast<int64_t>(task.prompt.size()),
                                        task.max_new_tokens));
  }
  if (task.sources.empty()) return plan;
  if (!plan || !plan->chunked) {
    return absl::InvalidArgumentError(absl::StrCat(
        "final task ", KvKeyString(task.key), " has ", task.sources.size(),
        " K/V sources but the prompt is not chunked under its plan"));
  }
  if (task.sources.size() != plan->middle.size()) {
    return absl::InvalidArgumentError(absl::StrCat("final task ", KvKeyString(task.key), " has ",
                                                   task.sources.size(), " K/V sources; the plan has ",
                                                   plan->middle.size(), " middle chunks"));
  }
  for (size_t i = 0; i < task.sources.size(); ++i) {
    const KvSourceRef& s = task.sources[i];
    if (s.chunk != static_cast<int32_t>(i)) {
      return absl::InvalidArgumentError(absl::StrCat("final task ", KvKeyString(task.key),
                                                     ": source ", i, " is for chunk ", s.chunk,
                                                     " (sources go in plan order)"));
    }
    if (!s.address.empty() && !has_fetcher) {
      return absl::FailedPreconditionError(absl::StrCat(
          "chunk ", i, " K/V is at ", s.address, " but this worker has no K/V fetcher"));
    }
  }
  return plan;
}

}  // namespace mesa::worker
