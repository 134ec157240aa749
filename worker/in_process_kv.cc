// InProcessKvFetcher (worker/in_process_kv.h): an address -> WorkerCore registry.
#include "worker/in_process_kv.h"

#include "absl/strings/str_cat.h"

namespace mesa::worker {

absl::Status InProcessKvFetcher::Register(const std::string& address, WorkerCore* core) {
  std::lock_guard<std::mutex> l(mu_);
  if (!cores_.emplace(address, core).second) {
    return absl::AlreadyExistsError(absl::StrCat("a worker core is already registered at ", address));
  }
  return absl::OkStatus();
}

void InProcessKvFetcher::Unregister(const std::string& address) {
  std::lock_guard<std::mutex> l(mu_);
  cores_.erase(address);
}

absl::StatusOr<std::shared_ptr<const ChunkKv>> InProcessKvFetcher::Fetch(const std::string& address,
                                                                         const KvKey& key,
                                                                         int64_t /*timeout_ms*/) {
  // Held across GetKv (which never waits on a task), so that a core may be destroyed
  // as soon as Unregister returns.
  std::lock_guard<std::mutex> l(mu_);
  auto it = cores_.find(address);
  if (it == cores_.end()) {
    return absl::UnavailableError(absl::StrCat("no worker core registered at ", address));
  }
  return it->second->GetKv(key);
}

}  // namespace mesa::worker
