// The final task's gather, pipelined (transport-free): the middle chunks a final fetches
// from other workers are fetched ahead, several at once, while the final computes its
// anchor and lays earlier chunks into its cache. Chunks are handed out strictly in plan
// order; fetches are started in plan order, so the chunk needed next is always the
// first started. When the fetcher moves several chunks of one holder as one transfer
// (KvFetcher::MaxBatch > 1: PeerKvFetcher, one gather over the pair's link, one group
// of receives), the fetch that starts a chunk takes the holder's later chunks not yet
// started along, in plan order, within the window. Fetches from different holders run
// at once (over NCCL or sockets: a gather from many peers progresses together).
//
// Memory stays bounded: the bytes fetched or in flight but not yet taken stay within
// `window_bytes`, except that the next chunk to take is always started (so one chunk
// larger than the window still moves; window 0 is the old behaviour, one chunk at a
// time). The final's peak is its cache plus the window, not two copies of the prompt.
//
// Fail closed: the first fetch that fails stops every later start, and Next returns it
// at once (the final cannot succeed without that chunk), before the chunks ahead of it.
// The destructor stops starting fetches and waits for those in flight, each of which
// ends by its own timeout (KvFetcher's contract).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/kv_transport.h"

namespace mesa::worker {

struct PrefetchOptions {
  int parallel = 4;                         // fetches in flight at most (< 1 is taken as 1)
  int64_t window_bytes = int64_t{1} << 30;  // fetched or in flight, not yet taken (see above)
  int64_t timeout_ms = 60000;               // each fetch's
  // Chunks of one holder asked for in one FetchMany at most (also capped by the
  // fetcher's MaxBatch: 1 unless it moves them as one transfer).
  int max_batch = 8;
  // Where the bytes fetched or in flight but not yet taken are also added (a worker's
  // gauge, shared by its finals); null: nowhere. What this prefetcher added is taken off
  // again by its destruction at the latest.
  std::atomic<int64_t>* pending_gauge = nullptr;
};

struct PrefetchRequest {
  std::string address;
  KvKey key;
  int64_t bytes = 0;  // what the plan says the chunk is (K + V): the window's measure
};

struct Prefetched {
  size_t index = 0;  // into the requests: the one this is about
  absl::StatusOr<std::shared_ptr<const ChunkKv>> kv = nullptr;
  double fetch_s = 0;  // the fetch's duration (a batch's shared by its chunks; 0 for an error not from a fetch)
};

class KvPrefetcher {
 public:
  // Starts fetching at once. `fetcher` must outlive this object.
  KvPrefetcher(KvFetcher& fetcher, std::vector<PrefetchRequest> requests, PrefetchOptions options);
  ~KvPrefetcher();
  KvPrefetcher(const KvPrefetcher&) = delete;
  KvPrefetcher& operator=(const KvPrefetcher&) = delete;

  // Blocks for the next request's chunk in order (index = 0, 1, ...), or returns the
  // first failed fetch (its index; kv holds the fetcher's status) as soon as one failed.
  // After a failure, or past the last request, returns FAILED_PRECONDITION.
  Prefetched Next();

  // The most bytes fetched or in flight but not taken at any moment (tests, logs).
  int64_t peak_bytes() const;

 private:
  void Loop();
  bool MayStartLocked(size_t i) const;
  void AddPendingLocked(int64_t bytes);  // negative: taken

  KvFetcher& fetcher_;
  const std::vector<PrefetchRequest> requests_;
  const PrefetchOptions options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> started_;                        // guarded by mu_
  size_t head_ = 0;                                  // the first not started; guarded by mu_
  size_t next_take_ = 0;                             // guarded by mu_
  int64_t pending_bytes_ = 0;                        // started, not taken; guarded by mu_
  int64_t peak_bytes_ = 0;                           // guarded by mu_
  std::optional<size_t> failed_;                     // guarded by mu_
  bool failure_taken_ = false;                       // guarded by mu_
  bool stop_ = false;                                // guarded by mu_
  std::vector<std::optional<Prefetched>> done_;      // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace mesa::worker
