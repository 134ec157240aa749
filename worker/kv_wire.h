// The byte form of one chunk's K/V on a stream (transport-free): a manifest (shape,
// dtype, global range, byte count, CRC32C of the bytes) first, then the bytes in
// pieces of about 1 MiB, each with its offset. The receiver allocates from the
// manifest, accepts pieces only in order and only within the announced size, and
// checks the CRC32C at the end: a corrupt, truncated, reordered or oversized stream is
// an error (DATA_LOSS / INVALID_ARGUMENT / RESOURCE_EXHAUSTED), never a silently wrong
// cache. The bytes are ChunkKv::k then ChunkKv::v as little-endian f32.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/mesa_phases.h"
#include "worker/kv_pool.h"

namespace mesa::worker {

// CRC32C (Castagnoli, reflected polynomial 0x82F63B78, as iSCSI/ext4/gRPC). `crc` is a
// previous result, so Crc32c(b, nb, Crc32c(a, na)) == CRC of a followed by b. Uses the
// SSE4.2 crc32 instruction when the CPU has it, else a table-driven loop.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

// Copies `size` bytes from `src` to `dst` (not overlapping) and returns
// Crc32c(src, size, crc), reading each byte once. Large copies use streaming stores
// (the destination is not wanted in cache: a received chunk is read again much later),
// fenced before returning.
uint32_t CopyCrc32c(void* dst, const void* src, size_t size, uint32_t crc = 0);

namespace internal {
// Both paths of Crc32c and CopyCrc32c, exposed so tests can compare them. The Sse42
// ones may only be called when Crc32cSse42Available().
uint32_t Crc32cPortable(const void* data, size_t size, uint32_t crc);
bool Crc32cSse42Available();
uint32_t Crc32cSse42(const void* data, size_t size, uint32_t crc);
uint32_t CopyCrc32cPortable(void* dst, const void* src, size_t size, uint32_t crc);
uint32_t CopyCrc32cSse42(void* dst, const void* src, size_t size, uint32_t crc);
}  // namespace internal

// The CRC32C of a followed by b, from the CRCs of each (b's computed from 0) and b's
// length: O(log len_b) GF(2) matrix products, no bytes read.
uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, int64_t len_b);

struct KvManifestInfo {
  int64_t n_layer = 0, n_head_kv = 0, head_dim = 0;
  int64_t range_begin = 0, range_end = 0;
  std::string dtype = "f32";
  int64_t total_bytes = 0;  // k then v
  uint32_t crc32c = 0;
  // Streams the bytes move over at once (KvLaneRange); 1 = one stream carries them all.
  int lanes = 1;
};

constexpr int64_t kKvPieceBytes = 1 << 20;

// Lanes: one chunk's bytes moved over several streams at once, each stream (lane)
// carrying one contiguous share of them, so that the receiving and copying of the shares
// run in parallel. Lane `lane` of `lanes` covers [begin, end): equal shares cut at
// 64-byte multiples (the last ends at total_bytes; a lane may be empty for tiny chunks).
// Both ends compute the ranges from the manifest, so they never travel.
constexpr int kMaxKvLanes = 16;
struct KvByteRange {
  int64_t begin = 0, end = 0;
};
KvByteRange KvLaneRange(int64_t total_bytes, int lanes, int lane);
// How many lanes a sender uses for `total_bytes` when asked for up to `wanted`: at most
// kMaxKvLanes and one per `min_lane_bytes` (a small chunk is not worth the streams).
constexpr int64_t kKvMinLaneBytes = int64_t{4} << 20;
int KvLanesFor(int64_t total_bytes, int wanted, int64_t min_lane_bytes = kKvMinLaneBytes);

// The CRC32C of `kv`'s bytes (k then v), as the manifest carries it. A holder that keeps
// a chunk for a while computes it once when it stores the chunk (WorkerCore does) and
// passes it to MakeManifest, so that a transfer does not read every byte for it again.
uint32_t KvCrc32c(const ChunkKv& kv);

// Sender side: the manifest of `kv`, with `crc32c` when the caller has it (it must be
// KvCrc32c(kv)), else computing it.
KvManifestInfo MakeManifest(const ChunkKv& kv, std::optional<uint32_t> crc32c = std::nullopt);
// The bytes of `kv` as pieces of at most `piece_bytes` (<= 0: kKvPieceBytes): views
// into kv.k, then into kv.v (no copy; a piece never spans the k/v boundary, so the last
// piece of k may be short). Offsets count from the first byte of k. Valid while `kv`
// lives.
struct KvPiece {
  int64_t offset;
  absl::Span<const uint8_t> bytes;
};
std::vector<KvPiece> SplitPieces(const ChunkKv& kv, int64_t piece_bytes = kKvPieceBytes);
// The pieces of bytes [range.begin, range.end) only (a lane's share), cut the same way.
std::vector<KvPiece> SplitPieces(const ChunkKv& kv, int64_t piece_bytes, KvByteRange range);

// Receiver side: one chunk's streams into a ChunkKv. Move-only in effect (owns the
// buffer). With manifest.lanes > 1, each lane's pieces go to Add(lane, ...), and
// different lanes may be added from different threads at once (each writes only its
// own range and state); one lane's Adds must come from one thread at a time.
class KvAssembler {
 public:
  // Checks the manifest (positive shapes, range_end > range_begin >= 0, dtype "f32",
  // total == 2 * layers*heads*tokens*dim*4: else INVALID_ARGUMENT; total <= max_bytes:
  // else RESOURCE_EXHAUSTED) and takes memory for k and v: from `pool` when given (which
  // must outlive the assembler; memory used before, overwritten in place), else fresh
  // room that the pieces are appended to (no zero-fill either way; with lanes, fresh
  // memory is sized first, since the lanes fill it out of order). lanes must be in
  // [1, kMaxKvLanes] (0, from a sender that predates lanes, means 1).
  static absl::StatusOr<KvAssembler> Start(const KvManifestInfo& manifest, int64_t max_bytes,
                                           KvBufferPool* pool = nullptr);
  KvAssembler(KvAssembler&&) = default;
  KvAssembler& operator=(KvAssembler&&) = default;
  // An assembler that did not hand its cache over (a failed or abandoned stream) gives
  // the room back to its pool.
  ~KvAssembler();
  // Pieces must arrive in order within their lane (offset == where the lane is, else
  // DATA_LOSS "out of order"), be non-empty and stay within the lane's range (else
  // DATA_LOSS). `lane` must be < manifest().lanes.
  absl::Status Add(int64_t offset, absl::Span<const uint8_t> bytes);
  // The same for one piece that lies in several buffers (the slices a transport received
  // it in), `parts` in order: checked as one piece, copied straight into the cache.
  absl::Status Add(int64_t offset, absl::Span<const absl::Span<const uint8_t>> parts);
  absl::Status Add(int lane, int64_t offset, absl::Span<const absl::Span<const uint8_t>> parts);
  // All bytes there and the CRC32C matches (else DATA_LOSS naming expected and actual).
  // Hands over the cache: call once, after every lane's last Add.
  absl::StatusOr<ChunkKv> Finish();
  int64_t received() const;  // over all lanes; not while lanes are being added
  const KvManifestInfo& manifest() const { return manifest_; }

 private:
  struct Lane {
    KvByteRange range;
    int64_t next = 0;  // the next byte expected
    uint32_t crc = 0;  // of [range.begin, next)
  };

  // Writes checked bytes at received_ into k, then v, and takes their CRC on the way:
  // in place into memory from the pool (sized, stale), or appended to fresh room (k's
  // end is a whole float: only a float split between pieces waits in carry_).
  void Write(Lane& lane, const uint8_t* src, int64_t size);
  void Append(std::vector<float>& dst, const uint8_t* src, int64_t size);

  KvAssembler() = default;

  KvBufferPool* pool_ = nullptr;
  KvManifestInfo manifest_;
  ChunkKv kv_;
  std::vector<Lane> lanes_;
  uint8_t carry_[4] = {};  // the append path (fresh memory, one lane) only
  int carry_bytes_ = 0;
  bool finished_ = false;
};

}  // namespace mesa::worker
