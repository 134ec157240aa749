#include "common/thread_pool.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace mesa {
namespace {

TEST(ThreadPoolTest, ParallelForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 7}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 2, 5, 64, 1000}) {
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, 1, [&](int, int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[i]++;
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << threads << " " << n;
    }
  }
}

TEST(ThreadPoolTest, GrainLimitsParts) {
  ThreadPool pool(4);
  std::atomic<int> calls{0};
  pool.ParallelFor(10, 8, [&](int, int64_t, int64_t) { calls++; });
  EXPECT_EQ(calls.load(), 2);
}

TEST(ThreadPoolTest, RunOnAllUsesEveryThreadIndex) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> seen(3);
  for (int rep = 0; rep < 50; ++rep) pool.RunOnAll([&](int t) { seen[t]++; });
  for (auto& s : seen) EXPECT_EQ(s.load(), 50);
}

}  // namespace
}  // namespace mesa
