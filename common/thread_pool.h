// A fixed pool of worker threads running parallel-for loops. The calling thread takes
// part in every loop, so a pool of size 1 runs everything inline. One loop at a time:
// ParallelFor is not reentrant and must be called from one thread (the owner).
//
// Decode issues hundreds of short loops per token, so hand-off latency matters: idle
// workers spin briefly on an atomic generation counter before sleeping on a condition
// variable, and the caller spins for completion.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mesa {

class ThreadPool {
 public:
  // `num_threads` includes the caller; <= 0 means "all hardware threads".
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return num_threads_; }

  // Calls fn(thread_index, begin, end) over [0, n) split into contiguous ranges of at
  // least `grain` items, one range per thread; returns when all are done.
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int, int64_t, int64_t)>& fn);

  // Calls fn(thread_index) once on every thread of the pool.
  void RunOnAll(const std::function<void(int)>& fn);

  static int DefaultThreads();

 private:
  void WorkerLoop(int index);

  int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_cv_;
  std::atomic<const std::function<void(int)>*> job_{nullptr};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace mesa
