// How the coordinator reaches one worker: the seam between the transport-free
// coordinator core and the transports (in-process for `mesa run --workers K`, gRPC for
// clusters: coordinator/grpc_worker_client.h). Implementations are thread-safe: the
// core runs one task per worker at a time but may cancel it or release K/V meanwhile.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "worker/worker_core.h"

namespace mesa::coord {

class WorkerClient {
 public:
  virtual ~WorkerClient() = default;
  // Run a task; must return (with DEADLINE_EXCEEDED at worst) within timeout_ms.
  virtual absl::StatusOr<worker::ChunkResult> RunChunk(uint64_t task, const worker::ChunkTask& t,
                                                       int64_t timeout_ms) = 0;
  virtual absl::StatusOr<worker::FinalResult> RunFinal(uint64_t task, const worker::FinalTask& t,
                                                       int64_t timeout_ms) = 0;
  // Stops a running task (best effort; its Run* call then returns CANCELLED).
  virtual void Cancel(uint64_t task) = 0;
  // Whether the worker answers at all within timeout_ms (a dead process does not).
  virtual bool Reachable(int64_t timeout_ms) = 0;
  virtual absl::Status ReleaseKv(const std::string& job_id, int64_t item, int32_t attempt) = 0;
  // Has the worker fetch a chunk's K/V from source.address and keep it under source.key
  // (WorkerCore::LoadKv): the bytes it now holds. Not a task: it may run beside one.
  // Returns within timeout_ms (DEADLINE_EXCEEDED at worst).
  virtual absl::StatusOr<int64_t> LoadKv(const worker::KvSourceRef& source, int64_t lease_ms,
                                         int64_t timeout_ms) = 0;
  // Where other workers fetch this worker's K/V ("" for in-process workers' own lookups
  // is not used: in-process workers register under a name).
  virtual std::string kv_address() const = 0;
};

}  // namespace mesa::coord
