// KvFetcher's default FetchMany (worker/kv_transport.h): one chunk after another.
#include "worker/kv_transport.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace mesa::worker {

absl::StatusOr<std::vector<KvFetcher::Fetched>> KvFetcher::FetchMany(const std::string& address,
                                                                     absl::Span<const KvKey> keys,
                                                                     int64_t timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::vector<Fetched> out;
  out.reserve(keys.size());
  for (const KvKey& key : keys) {
    const int64_t left = std::chrono::duration_cast<std::chrono::milliseconds>(
                             deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      return absl::DeadlineExceededError(absl::StrCat("no time left for ", KvKeyString(key), " from ", address));
    }
    Fetched f;
    absl::StatusOr<std::shared_ptr<const ChunkKv>> kv = FetchWithCrc(address, key, left, &f.crc32c);
    if (!kv.ok()) return kv.status();
    f.kv = *std::move(kv);
    out.push_back(std::move(f));
  }
  return out;
}

}  // namespace mesa::worker
