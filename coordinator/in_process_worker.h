// WorkerClient over a WorkerCore in the same process (`mesa run --workers K`, tests):
// tasks are direct calls, cancellation sets the task's flag, and K/V moves through an
// InProcessKvFetcher without a copy. The core is registered with the fetcher under
// `name` (its kv_address) and unregistered on destruction.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "coordinator/worker_client.h"
#include "worker/in_process_kv.h"

namespace mesa::coord {

class InProcessWorkerClient : public WorkerClient {
 public:
  InProcessWorkerClient(std::string name, worker::WorkerCore& core, worker::InProcessKvFetcher& fetcher);
  ~InProcessWorkerClient() override;
  absl::StatusOr<worker::ChunkResult> RunChunk(uint64_t task, const worker::ChunkTask& t,
                                               int64_t timeout_ms) override;
  absl::StatusOr<worker::FinalResult> RunFinal(uint64_t task, const worker::FinalTask& t,
                                               int64_t timeout_ms) override;
  void Cancel(uint64_t task) override;
  absl::Status ReleaseKv(const std::string& job_id, int64_t item, int32_t attempt) override;
  absl::StatusOr<int64_t> LoadKv(const worker::KvSourceRef& source, int64_t lease_ms, int64_t timeout_ms) override;
  bool Reachable(int64_t) override { return true; }
  std::string kv_address() const override { return name_; }

 private:
  std::shared_ptr<worker::CancelFlag> Begin(uint64_t task);
  void End(uint64_t task);
  std::string name_;
  worker::WorkerCore& core_;
  worker::InProcessKvFetcher& fetcher_;
  std::mutex mu_;
  std::map<uint64_t, std::shared_ptr<worker::CancelFlag>> running_;
};

}  // namespace mesa::coord
