// InProcessKvFetcher: the KvFetcher for worker cores that live in one process (`mesa run
// --workers K`, tests). Addresses name registered WorkerCores; Fetch hands out the
// shared_ptr the holder keeps (no copy, no serialisation) and refreshes its lease, as a
// remote fetch would. Thread-safe; a core may be destroyed once Unregister returns.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "worker/kv_transport.h"
#include "worker/worker_core.h"

namespace mesa::worker {

class InProcessKvFetcher : public KvFetcher {
 public:
  // ALREADY_EXISTS when the address is taken.
  absl::Status Register(const std::string& address, WorkerCore* core);
  void Unregister(const std::string& address);

  // UNAVAILABLE for an unknown address; NOT_FOUND when the core does not hold `key`.
  // Never blocks on the holder's running task, so `timeout_ms` is not needed.
  absl::StatusOr<std::shared_ptr<const ChunkKv>> Fetch(const std::string& address,
                                                       const KvKey& key,
                                                       int64_t timeout_ms) override;

 private:
  std::mutex mu_;
  absl::flat_hash_map<std::string, WorkerCore*> cores_;
};

}  // namespace mesa::worker
