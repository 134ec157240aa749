// A worker's pool of K/V receive memory: float vectors whose pages are already faulted
// in, handed out already sized for a chunk (holding an earlier chunk's stale bytes), so
// that the receiver overwrites each byte once, in place, and neither the kernel nor
// vector::resize zeroes anything. A received chunk's vectors come
// back when its last reference drops (Share); a long-running worker then fetches into
// memory it has used before instead of a fresh mapping per chunk.
//
// One way in, one way out: Take hands out a vector, Give takes it back (contents and
// capacity kept, never read), and Share wraps a ChunkKv so that its k and v are given back when the
// last shared_ptr to it goes, wherever that is: memory is never back in the pool while
// anyone can still read the chunk. Bounded: at most max_bytes of capacity is kept; past
// that, the buffers least recently given back are freed. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/mesa_phases.h"

namespace mesa::worker {

// An empty vector with capacity for `elements` floats, fresh: room only, in huge pages
// where the mapping is new (no zero-fill; the first write faults each page in).
std::vector<float> ReserveFloats(size_t elements);

class KvBufferPool {
 public:
  explicit KvBufferPool(int64_t max_bytes);
  KvBufferPool(const KvBufferPool&) = delete;
  KvBufferPool& operator=(const KvBufferPool&) = delete;

  // Memory for `elements` floats, in one of two forms the caller must tell apart by size():
  //  - reused: the most recently given back vector that fits without wasting more than
  //    half of it (capacity <= 2 * elements), resized to exactly `elements`; its values
  //    are an earlier chunk's (stale), to be overwritten in place. Only a part the old
  //    vector did not cover is zero-filled by the resize.
  //  - fresh (nothing fits): ReserveFloats(elements), empty, to be filled by appending.
  std::vector<float> Take(size_t elements);
  // Keeps `v`'s memory (and its values, unread) for a later Take. A vector without
  // capacity, or larger than max_bytes, is just freed.
  void Give(std::vector<float>&& v);

  // `kv` as shared, read-only, with a deleter that gives k and v back to `pool` when the
  // last reference drops (the pool lives at least as long).
  static std::shared_ptr<const ChunkKv> Share(std::shared_ptr<KvBufferPool> pool, ChunkKv kv);

  int64_t max_bytes() const { return max_bytes_; }
  int64_t held_bytes() const;      // capacity kept for reuse, in bytes
  int64_t held_buffers() const;
  int64_t reused() const;          // Takes answered from the pool
  int64_t allocated() const;       // Takes answered with fresh memory

 private:
  const int64_t max_bytes_;
  mutable std::mutex mu_;
  std::vector<std::vector<float>> free_;  // oldest first; guarded by mu_
  int64_t held_bytes_ = 0;                // guarded by mu_
  int64_t reused_ = 0, allocated_ = 0;    // guarded by mu_
};

}  // namespace mesa::worker
