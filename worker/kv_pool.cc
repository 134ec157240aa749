// KvBufferPool (worker/kv_pool.h).
#include "worker/kv_pool.h"

#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mesa::worker {
namespace {

int64_t CapacityBytes(const std::vector<float>& v) {
  return static_cast<int64_t>(v.capacity() * sizeof(float));
}

// Asks for transparent huge pages over a large buffer not yet touched: a fresh mapping
// then faults in 2 MiB at a time instead of 4 KiB (512 times fewer faults, which cost more
// than the copy into the page). Advice only: ignored where unsupported.
void AdviseHugePages(void* data, size_t size) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20, kPage = 4096;
  if (size < 2 * kHuge) return;
  const auto begin = (reinterpret_cast<uintptr_t>(data) + kPage - 1) & ~(kPage - 1);
  const auto end = (reinterpret_cast<uintptr_t>(data) + size) & ~(kPage - 1);
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data, (void)size;
#endif
}

}  // namespace

std::vector<float> ReserveFloats(size_t elements) {
  std::vector<float> v;
  v.reserve(elements);
  AdviseHugePages(v.data(), elements * sizeof(float));
  return v;
}

KvBufferPool::KvBufferPool(int64_t max_bytes) : max_bytes_(max_bytes) {}

std::vector<float> KvBufferPool::Take(size_t elements) {
  {
    std::lock_guard<std::mutex> l(mu_);
    for (size_t i = free_.size(); i-- > 0;) {  // newest first
      const size_t capacity = free_[i].capacity();
      if (capacity >= elements && capacity / 2 <= elements) {
        std::vector<float> v = std::move(free_[i]);
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        held_bytes_ -= CapacityBytes(v);
        ++reused_;
        v.resize(elements);  // within capacity: no allocation; shrinking writes nothing
        return v;
      }
    }
    ++allocated_;
  }
  return ReserveFloats(elements);
}

void KvBufferPool::Give(std::vector<float>&& v) {
  std::vector<float> mine = std::move(v);
  const int64_t bytes = CapacityBytes(mine);
  if (bytes == 0 || bytes > max_bytes_) return;  // freed here, outside the lock
  std::vector<std::vector<float>> evicted;  // freed after the lock is released
  std::lock_guard<std::mutex> l(mu_);
  free_.push_back(std::move(mine));
  held_bytes_ += bytes;
  size_t n = 0;
  for (; held_bytes_ > max_bytes_; ++n) held_bytes_ -= CapacityBytes(free_[n]);
  for (size_t i = 0; i < n; ++i) evicted.push_back(std::move(free_[i]));
  free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(n));
  // `evicted` is destroyed after `l` (declared before it): munmap outside the lock.
}

std::shared_ptr<const ChunkKv> KvBufferPool::Share(std::shared_ptr<KvBufferPool> pool, ChunkKv kv) {
  if (pool == nullptr) return std::make_shared<const ChunkKv>(std::move(kv));
  return std::shared_ptr<const ChunkKv>(
      new ChunkKv(std::move(kv)), [pool = std::move(pool)](const ChunkKv* chunk) {
        std::unique_ptr<ChunkKv> owned(const_cast<ChunkKv*>(chunk));
        pool->Give(std::move(owned->k));
        pool->Give(std::move(owned->v));
      });
}

int64_t KvBufferPool::held_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return held_bytes_;
}

int64_t KvBufferPool::held_buffers() const {
  std::lock_guard<std::mutex> l(mu_);
  return static_cast<int64_t>(free_.size());
}

int64_t KvBufferPool::reused() const {
  std::lock_guard<std::mutex> l(mu_);
  return reused_;
}

int64_t KvBufferPool::allocated() const {
  std::lock_guard<std::mutex> l(mu_);
  return allocated_;
}

}  // namespace mesa::worker
