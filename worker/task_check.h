// Request validation of a worker's tasks, before anything runs: a chunk task or a final
// task against the plan the model gives its prompt (engine PlanFor, as the coordinator
// and `mesa run` plan). Transport-free and computes nothing: WorkerCore::RunChunk and
// RunFinal call these first, and the RPC fuzzer (fuzz/rpc_fuzzer.cc) reaches them with
// hostile requests without a model's weights (the model's config is all they read).
#pragma once

#include <optional>

#include "absl/status/statusor.h"
#include "engine/long_context.h"
#include "engine/model.h"
#include "worker/worker_core.h"

namespace mesa::worker {

// Whether tasks with these options run Mesa's phases (methods auto and mesa).
bool UsesMesa(const LongContextOptions& options);

// The plan of a chunk task: INVALID_ARGUMENT unless the method is auto or mesa, the
// prompt is chunked under its plan, key.chunk is one of the plan's middle chunks, and
// (prompt_length > 0) exactly the anchor's and the chunk's tokens were sent.
absl::StatusOr<MesaPlan> CheckChunkTask(const Model& model, const ChunkTask& task);

// The plan of a final task (nullopt for the methods that do not chunk): INVALID_ARGUMENT
// for sources on a prompt that is not chunked, a source count other than the plan's
// middle chunks, or sources out of plan order; FAILED_PRECONDITION for a remote source
// when the worker has no K/V fetcher.
absl::StatusOr<std::optional<MesaPlan>> CheckFinalTask(const Model& model, const FinalTask& task, bool has_fetcher);

}  // namespace mesa::worker
