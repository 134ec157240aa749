// The transport-free core of a worker: one engine (model + thread pool) that runs
// chunk tasks (anchor + one middle chunk, K/V kept in memory under a byte budget with
// a lease) and final tasks (gather every middle chunk's K/V in plan order, run the
// last chunk and decode), and hands out or releases the K/V it holds. The gRPC
// service (worker/rpc) and `mesa run --workers K` (in-process) are thin adapters.
// Thread-safe: tasks may run concurrently with FetchKv/ReleaseKv/ExpireLeases; tasks
// themselves are serialised (one engine, one task at a time).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "engine/long_context.h"
#include "engine/mesa_phases.h"
#include "engine/model.h"
#include "engine/sampling.h"
#include "worker/kv_pool.h"
#include "worker/kv_transport.h"
#include "worker/worker_metrics.h"

namespace mesa::worker {

struct WorkerCoreOptions {
  int64_t kv_memory_bytes = 0;  // budget for held chunk K/V; 0 = no limit
  int64_t default_lease_ms = 10 * 60 * 1000;
  // Where the memory of the chunks this core computes goes back once no one holds them
  // (KvBufferPool::Share); the worker gives its KvFetcher the same pool, so that fetches
  // receive into memory freed here. nullptr: freed.
  std::shared_ptr<KvBufferPool> kv_pool;
  // Where the worker's metrics go (worker/worker_metrics.h; the K/V gauges read this
  // core at scrape); null: a registry of its own. One core per Metrics.
  std::shared_ptr<ops::Metrics> metrics;
  // A spread final fetches its remote chunks ahead (worker/kv_prefetch.h): up to this
  // many at once, and up to this many bytes fetched but not yet laid into its cache
  // (0: one chunk at a time). The window is memory beyond kv_memory_bytes.
  int final_fetch_parallel = 4;
  int64_t final_prefetch_bytes = int64_t{1} << 30;
};

struct ChunkTask {
  KvKey key;                       // key.chunk = index into plan.middle
  std::vector<int32_t> prompt;     // the whole prompt, or (prompt_length > 0) only the
                                   // anchor's tokens followed by this chunk's
  int64_t prompt_length = 0;       // > 0: the whole prompt's length (the plan needs only it)
  int64_t max_new_tokens = 0;
  LongContextOptions options;
  int64_t lease_ms = 0;            // 0 = default_lease_ms
};
struct ChunkResult {
  int64_t kv_bytes = 0;
  int64_t tokens = 0;              // anchor + chunk tokens computed
  double compute_s = 0;
};

struct KvSourceRef {
  int32_t chunk = 0;
  std::string address;             // "" = held by this worker
  KvKey key;
};
struct KvLoadResult {              // LoadKv: the chunk now held here
  int64_t kv_bytes = 0;
  double transfer_s = 0;           // the fetch (0 when the key was already held)
};
struct FinalTask {
  KvKey key;                       // chunk = -1
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 0;
  LongContextOptions options;
  SamplingParams sampling;
  std::vector<KvSourceRef> sources;  // one per middle chunk in plan order; empty = all here
  int64_t fetch_timeout_ms = 60000;
};
struct FinalResult {
  std::vector<int32_t> tokens;     // EOS included when it stopped there
  std::string stop_reason;
  std::string attention;           // method used, e.g. "mesa"
  nlohmann::json plan = nlohmann::json::object();  // PrefillInfo::ToJson()
  double prefill_s = 0, decode_s = 0;
  int64_t kv_bytes_received = 0;
  double kv_transfer_s = 0;
  int64_t prefill_tokens = 0;      // tokens prefilled here (whole prompt, or anchor + last)
};

// Set by the caller to stop a running task between steps (CANCELLED).
using CancelFlag = std::atomic<bool>;

class WorkerCore {
 public:
  using Clock = std::function<int64_t()>;  // milliseconds, monotonic; injectable for tests
  // `model` must outlive the core. `fetcher` may be null when no remote sources are used.
  WorkerCore(const Model& model, int threads, WorkerCoreOptions options, KvFetcher* fetcher,
             Clock clock = nullptr);
  // Runs the model on `backend` (--device); the int form runs on a CPU backend of
  // `threads` threads.
  WorkerCore(const Model& model, std::unique_ptr<Backend> backend, WorkerCoreOptions options,
             KvFetcher* fetcher, Clock clock = nullptr);
  ~WorkerCore();

  // RESOURCE_EXHAUSTED when the chunk's K/V would exceed the budget (nothing kept);
  // INVALID_ARGUMENT when the task does not match its plan (chunk index out of range,
  // the prompt is not chunked). A repeat of a key already held succeeds at once.
  absl::StatusOr<ChunkResult> RunChunk(const ChunkTask& task, const CancelFlag* cancel = nullptr);
  // Output equal, token for token, to jobs::LongContextGenerator on the same prompt.
  // A remote source that cannot be fetched (unreachable, corrupt, missing) is ABORTED:
  // the source failed, not this worker.
  absl::StatusOr<FinalResult> RunFinal(const FinalTask& task, const CancelFlag* cancel = nullptr);
  // Fetches `source`'s chunk from source.address through the KvFetcher and keeps it under
  // source.key with its own lease (lease_ms; 0 = default_lease_ms), as if computed here:
  // the coordinator moves a chunk to the worker that will run its item's final. Does not
  // take the engine (it runs while a task computes); the store's lock is held only for
  // the bookkeeping, never while fetching. A key already held succeeds at once;
  // RESOURCE_EXHAUSTED when the budget has no room (checked before fetching, and for the
  // chunk's bytes before storing); a failed fetch passes its code through; DATA_LOSS when
  // the K/V is not in this model's shape; INVALID_ARGUMENT without an address;
  // FAILED_PRECONDITION without a fetcher; CANCELLED when `cancel` is set first. The fetch
  // fails after fetch_timeout_ms.
  // A spread final consumes the chunks held here that it uses (address ""): each entry is
  // freed once laid into the final cache, so the final never holds two copies.
  absl::StatusOr<KvLoadResult> LoadKv(const KvSourceRef& source, int64_t lease_ms,
                                      const CancelFlag* cancel = nullptr, int64_t fetch_timeout_ms = 60000);

  // A held entry (refreshes its lease), or NOT_FOUND. `crc32c`, when not null, gets the
  // entry's KvCrc32c (worker/kv_wire.h), computed once when the entry was stored.
  absl::StatusOr<std::shared_ptr<const ChunkKv>> GetKv(const KvKey& key, uint32_t* crc32c = nullptr);
  // Frees entries of a job (item -1: all items; attempt -1: all attempts).
  struct Released { int64_t bytes = 0, entries = 0; };
  Released ReleaseKv(const std::string& job_id, int64_t item, int32_t attempt);
  Released ReleaseAll();
  // Frees entries whose lease ran out; returns what was freed.
  Released ExpireLeases();

  int64_t kv_bytes_in_use() const;
  int64_t kv_entries() const;
  const Model& model() const { return model_; }

 private:
  struct Entry;
  absl::StatusOr<ChunkResult> RunChunkLocked(const ChunkTask& task, const CancelFlag* cancel);
  absl::StatusOr<FinalResult> RunFinalLocked(const FinalTask& task, const CancelFlag* cancel);
  const Model& model_;
  WorkerCoreOptions options_;
  std::shared_ptr<ops::Metrics> metrics_;
  WorkerMetrics instruments_;
  std::vector<ops::Metrics::CallbackHandle> gauges_;  // removed first in the destructor
  KvFetcher* fetcher_;
  Clock clock_;
  std::mutex task_mu_;             // one task at a time on the engine
  std::unique_ptr<Backend> backend_;  // where the model runs (--device)
  mutable std::mutex kv_mu_;
  absl::flat_hash_map<KvKey, std::shared_ptr<Entry>> kv_;
  int64_t kv_bytes_ = 0;
  std::atomic<int64_t> prefetch_bytes_{0};  // finals' chunks fetched ahead, not yet laid
};

}  // namespace mesa::worker
