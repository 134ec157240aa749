// How a final worker gets a middle chunk's K/V from the worker that computed it: one
// interface, chosen per pair of workers (in-process: no copy, for `mesa run`; gRPC
// stream: worker/grpc_kv.h; NCCL joins in the GPU issue). Transport-free.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/mesa_phases.h"

namespace mesa::worker {

// Every K/V entry is named by ids the coordinator issued (never ones a worker made up).
struct KvKey {
  std::string job_id;
  int64_t item = 0;
  int32_t chunk = 0;
  int32_t attempt = 0;
  bool operator==(const KvKey&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const KvKey& k) {
    return H::combine(std::move(h), k.job_id, k.item, k.chunk, k.attempt);
  }
};
std::string KvKeyString(const KvKey& key);  // "job/item/chunk/attempt" for messages

// Fetches one chunk's K/V from the worker at `address`. Implementations must fail
// (never hang, never return a partial or corrupt cache) within `timeout_ms`.
class KvFetcher {
 public:
  virtual ~KvFetcher() = default;
  virtual absl::StatusOr<std::shared_ptr<const ChunkKv>> Fetch(const std::string& address,
                                                               const KvKey& key,
                                                               int64_t timeout_ms) = 0;
  // Fetch, and `*crc32c` = KvCrc32c (worker/kv_wire.h) of the chunk returned when the
  // fetcher checked the bytes against it on the way (so a worker that keeps the chunk
  // need not read it all again for it); left empty otherwise (this default).
  virtual absl::StatusOr<std::shared_ptr<const ChunkKv>> FetchWithCrc(const std::string& address, const KvKey& key,
                                                                      int64_t timeout_ms,
                                                                      std::optional<uint32_t>* crc32c) {
    crc32c->reset();
    return Fetch(address, key, timeout_ms);
  }

  // Several chunks from the holder at `address`, all or nothing, in `keys`' order, within
  // one `timeout_ms`. A fetcher that moves them as one transfer (PeerKvFetcher: one
  // gather, a single group of receives) overrides it; this default fetches one after
  // another.
  struct Fetched {
    std::shared_ptr<const ChunkKv> kv;
    std::optional<uint32_t> crc32c;  // as FetchWithCrc's
  };
  virtual absl::StatusOr<std::vector<Fetched>> FetchMany(const std::string& address, absl::Span<const KvKey> keys,
                                                         int64_t timeout_ms);
  // How many chunks of one holder FetchMany is worth asking for at once (1: no gain
  // over asking one by one, as for this default).
  virtual int MaxBatch() const { return 1; }
};

// A fetcher that checks a CRC32C on the way (gRPC, peer links): it implements
// FetchWithCrc, and Fetch is that with the CRC dropped.
class CrcCheckingKvFetcher : public KvFetcher {
 public:
  absl::StatusOr<std::shared_ptr<const ChunkKv>> Fetch(const std::string& address, const KvKey& key,
                                                       int64_t timeout_ms) final {
    std::optional<uint32_t> crc32c;
    return FetchWithCrc(address, key, timeout_ms, &crc32c);
  }
  absl::StatusOr<std::shared_ptr<const ChunkKv>> FetchWithCrc(const std::string& address, const KvKey& key,
                                                              int64_t timeout_ms,
                                                              std::optional<uint32_t>* crc32c) override = 0;
};

}  // namespace mesa::worker
