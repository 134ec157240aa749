#include "common/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#define MESA_CPU_RELAX() _mm_pause()
#else
#define MESA_CPU_RELAX() std::this_thread::yield()
#endif

namespace mesa {
namespace {
// How long an idle worker spins before it sleeps: longer than the gap between the
// loops of one decode step, short enough not to burn a core when the pool is idle.
constexpr auto kSpin = std::chrono::microseconds(300);
// Spinning beyond this yields the core between checks. With more runnable threads than
// cores (other processes on a 2-core machine) a pure spin holds the core that the
// thread being waited for needs: decode fell from ~330 to ~24 tok/s with one foreign
// busy process. sched_yield returns at once when nothing else is runnable, so on an
// idle machine this only adds ~1 us to hand-offs after long gaps.
constexpr auto kHotSpin = std::chrono::microseconds(50);
}  // namespace

int ThreadPool::DefaultThreads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool::ThreadPool(int num_threads)
    : num_threads_(num_threads <= 0 ? DefaultThreads() : num_threads) {
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin, then sleep, until a new generation is published.
    auto start = std::chrono::steady_clock::now();
    uint32_t spins = 0;
    bool hot = true;
    while (generation_.load(std::memory_order_acquire) == seen) {
      if (hot) {
        MESA_CPU_RELAX();
      } else {
        std::this_thread::yield();
      }
      if ((++spins & (hot ? 255 : 7)) == 0) {
        const auto waited = std::chrono::steady_clock::now() - start;
        hot = waited < kHotSpin;
        if (waited > kSpin) {
          std::unique_lock<std::mutex> lock(mu_);
          sleepers_.fetch_add(1);
          wake_cv_.wait(lock, [&] { return generation_.load() != seen; });
          sleepers_.fetch_sub(1);
          break;
        }
      }
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    (*job_.load(std::memory_order_acquire))(index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::RunOnAll(const std::function<void(int)>& fn) {
  if (num_threads_ == 1) {
    fn(0);
    return;
  }
  job_.store(&fn, std::memory_order_release);
  pending_.store(num_threads_ - 1, std::memory_order_release);
  generation_.fetch_add(1);  // seq_cst: ordered before the sleepers_ check below
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    wake_cv_.notify_all();
  }
  fn(0);
  // Spin while the workers are likely running, then yield (see kHotSpin).
  const auto start = std::chrono::steady_clock::now();
  uint32_t spins = 0;
  bool hot = true;
  while (pending_.load(std::memory_order_acquire) != 0) {
    if (hot) {
      MESA_CPU_RELAX();
      if ((++spins & 255) == 0) hot = std::chrono::steady_clock::now() - start < kHotSpin;
    } else {
      std::this_thread::yield();
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t max_parts = (n + grain - 1) / grain;
  int parts = static_cast<int>(std::min<int64_t>(num_threads_, max_parts));
  if (parts <= 1) {
    fn(0, 0, n);
    return;
  }
  RunOnAll([&](int t) {
    if (t >= parts) return;
    int64_t begin = n * t / parts;
    int64_t end = n * (t + 1) / parts;
    if (begin < end) fn(t, begin, end);
  });
}

}  // namespace mesa
