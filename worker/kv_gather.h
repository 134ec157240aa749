// The K/V gather over a PeerLink (transport-free): the final worker (the receiver)
// gets the middle chunks' K/V from the workers that hold them, in the order the
// coordinator fixed (GatherPlan), over NCCL between GPUs or over sockets.
//
// The protocol, for one gather:
//   1. Each holder sends the receiver, on the control plane, a manifest of its chunks in
//      plan order (key, shape, dtype, range, byte count, CRC32C when the holder can
//      compute it: host memory), or why it cannot (a chunk it does not hold).
//   2. The receiver checks every manifest against the plan (same keys in the same order,
//      same shapes and sizes) and allocates. Any mismatch, missing manifest or failed
//      allocation refuses the whole gather before a byte moves: each holder is told why
//      (so it never posts its sends) and the error names the chunk and peer.
//   3. The receiver says "go" to every holder and posts all its receives in one group, in
//      plan order (K then V of each chunk); each holder posts its sends in the same
//      order. The sizes agree because both ends checked them against the same plan:
//      NCCL's matching by posting order alone cannot misfire.
//   4. After the group completes, the receiver checks each chunk's CRC32C where the bytes
//      are in host memory and the holder sent one. Only then are the chunks handed over.
// Every wait has the one deadline. Any failure fails the whole gather (fail closed:
// buffers are dropped, nothing partial is returned) with a status that names the chunk
// and the peer, so the coordinator can reschedule: DEADLINE_EXCEEDED (a peer that did
// not answer or send in time), UNAVAILABLE (a peer's connection broke: it died),
// INVALID_ARGUMENT (manifest against plan, or sizes that did not match on the wire),
// DATA_LOSS (a CRC32C mismatch, a malformed control message), NOT_FOUND (a holder
// without the chunk), RESOURCE_EXHAUSTED (no memory for the chunks). After a transfer
// failure the link is dead (kv_peer.h); a refusal before transfer leaves it usable.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/mesa_phases.h"
#include "kernels/backend.h"
#include "worker/kv_peer.h"
#include "worker/kv_transport.h"
#include "worker/kv_wire.h"

namespace mesa::worker {

// Messages between ranks beside the data path, in order per pair (the coordinator's
// gRPC, or LinkControl). Not thread-safe.
class GatherControl {
 public:
  virtual ~GatherControl() = default;
  virtual absl::Status Send(int to, const std::string& message, absl::Time deadline) = 0;
  virtual absl::StatusOr<std::string> Receive(int from, absl::Time deadline) = 0;
};

// The control plane over a host-memory PeerLink (a length, then the bytes): for groups
// with no other channel (and the tests). It shares the link's fate. Messages over
// kMaxControlBytes are refused (INVALID_ARGUMENT sending, DATA_LOSS receiving).
class LinkControl final : public GatherControl {
 public:
  static constexpr int64_t kMaxControlBytes = int64_t{8} << 20;
  explicit LinkControl(PeerLink& link) : link_(link) {}
  absl::Status Send(int to, const std::string& message, absl::Time deadline) override;
  absl::StatusOr<std::string> Receive(int from, absl::Time deadline) override;

 private:
  PeerLink& link_;
};

// One chunk of the plan: who holds it and the shape the coordinator expects.
struct GatherEntry {
  KvKey key;
  int holder = 0;  // rank in the link
  int64_t n_layer = 0, n_head_kv = 0, head_dim = 0;
  int64_t range_begin = 0, range_end = 0;
  std::string dtype = "f32";
  // K and V bytes each (layers * heads * tokens * dim * 4 for f32); -1 for a bad shape.
  int64_t HalfBytes() const;
};

// What the coordinator fixed: the receiver and the chunks in the order they move (per
// holder, the order of its sends).
struct GatherPlan {
  int receiver = 0;
  std::vector<GatherEntry> entries;
};
// OK, or INVALID_ARGUMENT naming what is wrong (ranks out of [0, n), a holder that is the
// receiver, a key twice, a shape that is not positive, an unsupported dtype).
absl::Status CheckGatherPlan(const GatherPlan& plan, int n);

// A holder's word on one chunk.
struct ChunkManifest {
  KvKey key;
  KvManifestInfo info;  // shape, range, dtype, total_bytes (K + V), crc32c when has_crc
  bool has_crc = false;
};

// Where one chunk's bytes are: K then V, each total/2 bytes, in the link's memory kind.
struct KvRegion {
  void* k = nullptr;
  void* v = nullptr;
};

// A chunk a holder offers: its manifest and where its bytes are (valid during the call).
struct HeldChunk {
  ChunkManifest manifest;
  const void* k = nullptr;
  const void* v = nullptr;
};
// From a host ChunkKv (with the CRC32C it stored, or computed here).
HeldChunk HeldFromChunkKv(const KvKey& key, const ChunkKv& kv, std::optional<uint32_t> crc32c = std::nullopt);

// Holder side: the entries of `plan` held by link.rank(), offered from `held` (any
// order; found by key). Returns when its sends completed, or why not.
absl::Status GatherSend(PeerLink& link, GatherControl& control, const GatherPlan& plan,
                        absl::Span<const HeldChunk> held, absl::Time deadline);

// Receiver side, over any memory: `allocate` returns where entry `index`'s bytes go
// (called after every manifest was accepted; the buffers stay the caller's, who must
// drop them if this fails). Returns the accepted manifests, in plan order.
using GatherAllocate = std::function<absl::StatusOr<KvRegion>(size_t index, const ChunkManifest& manifest)>;
absl::StatusOr<std::vector<ChunkManifest>> GatherReceive(PeerLink& link, GatherControl& control,
                                                         const GatherPlan& plan, const GatherAllocate& allocate,
                                                         absl::Time deadline);

// Receiver side into host ChunkKvs (link.HostMemory() only), CRC-checked.
absl::StatusOr<std::vector<ChunkKv>> GatherToHost(PeerLink& link, GatherControl& control, const GatherPlan& plan,
                                                  absl::Time deadline);

// Receiver side into backend memory (a GPU's for NCCL): K and V of each chunk in a
// buffer of `backend` each, laid out as ChunkKv's. Freed if the gather fails.
struct BackendChunk {
  ChunkManifest manifest;
  BackendBuffer k, v;
};
absl::StatusOr<std::vector<BackendChunk>> GatherToBackend(PeerLink& link, GatherControl& control,
                                                          const GatherPlan& plan, Backend& backend,
                                                          absl::Time deadline);

// The control messages' byte form (exposed for tests that play a hostile holder).
// Decoding checks every length and count: a malformed message is DATA_LOSS.
std::string EncodeManifests(const absl::Status& holder_status, const std::vector<ChunkManifest>& chunks);
absl::StatusOr<std::vector<ChunkManifest>> DecodeManifests(const std::string& bytes);  // the holder's error, if any
std::string EncodeVerdict(const absl::Status& verdict);
// DATA_LOSS when malformed; else OK with the receiver's verdict in *verdict.
absl::Status DecodeVerdict(const std::string& bytes, absl::Status* verdict);

}  // namespace mesa::worker
