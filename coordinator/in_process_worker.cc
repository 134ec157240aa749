// InProcessWorkerClient: direct calls into a WorkerCore (see in_process_worker.h).
#include "coordinator/in_process_worker.h"

namespace mesa::coord {

InProcessWorkerClient::InProcessWorkerClient(std::string name, worker::WorkerCore& core,
                                             worker::InProcessKvFetcher& fetcher)
    : name_(std::move(name)), core_(core), fetcher_(fetcher) {
  (void)fetcher_.Register(name_, &core_);  // names are unique per process (local0, local1, ...)
}

InProcessWorkerClient::~InProcessWorkerClient() { fetcher_.Unregister(name_); }

std::shared_ptr<worker::CancelFlag> InProcessWorkerClient::Begin(uint64_t task) {
  auto flag = std::make_shared<worker::CancelFlag>(false);
  std::lock_guard<std::mutex> lock(mu_);
  running_[task] = flag;
  return flag;
}

void InProcessWorkerClient::End(uint64_t task) {
  std::lock_guard<std::mutex> lock(mu_);
  running_.erase(task);
}

absl::StatusOr<worker::ChunkResult> InProcessWorkerClient::RunChunk(uint64_t task, const worker::ChunkTask& t,
                                                                    int64_t) {
  auto flag = Begin(task);
  auto r = core_.RunChunk(t, flag.get());
  End(task);
  return r;
}

absl::StatusOr<worker::FinalResult> InProcessWorkerClient::RunFinal(uint64_t task, const worker::FinalTask& t,
                                                                    int64_t) {
  auto flag = Begin(task);
  auto r = core_.RunFinal(t, flag.get());
  End(task);
  return r;
}

void InProcessWorkerClient::Cancel(uint64_t task) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = running_.find(task);
  if (it != running_.end()) it->second->store(true);
}

absl::Status InProcessWorkerClient::ReleaseKv(const std::string& job_id, int64_t item, int32_t attempt) {
  core_.ReleaseKv(job_id, item, attempt);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> InProcessWorkerClient::LoadKv(const worker::KvSourceRef& source, int64_t lease_ms,
                                                      int64_t timeout_ms) {
  auto r = core_.LoadKv(source, lease_ms, nullptr, timeout_ms);  // shares the source's K/V: no copy
  if (!r.ok()) return r.status();
  return r->kv_bytes;
}

}  // namespace mesa::coord
