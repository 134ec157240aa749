// The byte form of one chunk's K/V on a stream (transport-free): a manifest (shape,
// dtype, global range, byte count, CRC32C of the bytes) first, then the bytes in
// pieces of about 1 MiB, each with its offset. The receiver allocates from the
// manifest, accepts pieces only in order and only within the announced size, and
// checks the CRC32C at the end: a corrupt, truncated, reordered or oversized stream is
// an error (DATA_LOSS / INVALID_ARGUMENT), never a silently wrong cache.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/mesa_phases.h"

namespace mesa::worker {

uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);  // Castagnoli, as iSCSI/gRPC

struct KvManifestInfo {
  int64_t n_layer = 0, n_head_kv = 0, head_dim = 0;
  int64_t range_begin = 0, range_end = 0;
  std::string dtype = "f32";
  int64_t total_bytes = 0;  // k then v
  uint32_t crc32c = 0;
};

constexpr int64_t kKvPieceBytes = 1 << 20;

// Sender side: the manifest of `kv` (computes the CRC) and its pieces, as views into
// kv.k then kv.v (no copy; a piece may span the k/v boundary only by being split).
KvManifestInfo MakeManifest(const ChunkKv& kv);
struct KvPiece { int64_t offset; absl::Span<const uint8_t> bytes; };
std::vector<KvPiece> SplitPieces(const ChunkKv& kv, int64_t piece_bytes = kKvPieceBytes);

// Receiver side.
class KvAssembler {
 public:
  // Checks the manifest (positive shapes, dtype f32, total == 2 * layers*heads*tokens*dim*4,
  // total <= max_bytes) and allocates.
  static absl::StatusOr<KvAssembler> Start(const KvManifestInfo& manifest, int64_t max_bytes);
  absl::Status Add(int64_t offset, absl::Span<const uint8_t> bytes);  // in order only
  absl::StatusOr<ChunkKv> Finish();  // all bytes there and the CRC32C matches
  int64_t received() const { return received_; }

 private:
  KvManifestInfo manifest_;
  ChunkKv kv_;
  int64_t received_ = 0;
  uint32_t crc_ = 0;
};

}  // namespace mesa::worker
