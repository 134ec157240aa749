// Tests of KvBufferPool (worker/kv_pool.h): memory comes back LIFO and is handed out
// again as the same allocation, only where it fits; the cap evicts the oldest; a shared
// chunk gives its vectors back only when its last reference drops; concurrent use never
// hands one buffer to two holders.
#include "worker/kv_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>
#include <utility>
#include <vector>

namespace mesa::worker {
namespace {

constexpr size_t kN = 1 << 16;  // floats per buffer
constexpr int64_t kBytes = int64_t{kN} * sizeof(float);

TEST(KvBufferPool, AFreshTakeIsEmptyRoom) {
  KvBufferPool pool(8 * kBytes);
  std::vector<float> v = pool.Take(kN);
  EXPECT_TRUE(v.empty());
  EXPECT_GE(v.capacity(), kN);
  EXPECT_EQ(pool.allocated(), 1);
  EXPECT_EQ(pool.reused(), 0);
}

TEST(KvBufferPool, ReuseReturnsTheSameMemoryLastInFirstOut) {
  KvBufferPool pool(8 * kBytes);
  std::vector<float> a = pool.Take(kN), b = pool.Take(kN);
  a.assign(kN, 1.0f);
  b.assign(kN, 2.0f);
  const float* pa = a.data();
  const float* pb = b.data();
  pool.Give(std::move(a));
  pool.Give(std::move(b));
  EXPECT_EQ(pool.held_buffers(), 2);
  EXPECT_EQ(pool.held_bytes(), 2 * kBytes);
  std::vector<float> c = pool.Take(kN);
  EXPECT_EQ(c.data(), pb);  // the newest first
  ASSERT_EQ(c.size(), kN);  // reused memory comes sized, for overwriting in place
  EXPECT_EQ(c[kN - 1], 2.0f) << "stale values are kept, not zeroed";
  std::vector<float> d = pool.Take(kN / 2 + 1);  // fits within twice: resized down
  EXPECT_EQ(d.data(), pa);
  EXPECT_EQ(d.size(), kN / 2 + 1);
  EXPECT_EQ(pool.reused(), 2);
  EXPECT_EQ(pool.held_buffers(), 0);
  EXPECT_EQ(pool.held_bytes(), 0);
}

TEST(KvBufferPool, OnlyBuffersThatFitAreReused) {
  KvBufferPool pool(8 * kBytes);
  std::vector<float> small = pool.Take(kN);
  const float* p = small.data();
  pool.Give(std::move(small));
  std::vector<float> bigger = pool.Take(kN + 1);  // too small: fresh
  EXPECT_NE(bigger.data(), p);
  EXPECT_GE(bigger.capacity(), kN + 1);
  std::vector<float> tiny = pool.Take(kN / 4);  // would waste most of it: fresh
  EXPECT_NE(tiny.data(), p);
  std::vector<float> half = pool.Take(kN / 2);  // fits within twice: reused
  EXPECT_EQ(half.data(), p);
  EXPECT_EQ(half.size(), kN / 2);
  pool.Give(std::move(half));
  std::vector<float> grown = pool.Take(kN);  // the part the old size did not cover: zeros
  EXPECT_EQ(grown.data(), p);
  ASSERT_EQ(grown.size(), kN);
  EXPECT_EQ(grown[kN - 1], 0.0f);
  EXPECT_EQ(pool.allocated(), 3);
  EXPECT_EQ(pool.reused(), 2);
}

TEST(KvBufferPool, TheCapFreesTheOldestAndRefusesWhatIsTooLarge) {
  KvBufferPool pool(3 * kBytes);
  std::vector<std::vector<float>> held;  // five distinct buffers, given back in turn
  for (int i = 0; i < 5; ++i) held.push_back(pool.Take(kN));
  std::vector<const float*> order;
  for (auto& v : held) {
    order.push_back(v.data());
    pool.Give(std::move(v));
    EXPECT_LE(pool.held_bytes(), 3 * kBytes);
  }
  EXPECT_EQ(pool.held_buffers(), 3);
  EXPECT_EQ(pool.held_bytes(), 3 * kBytes);
  // The three given last remain, newest first.
  EXPECT_EQ(pool.Take(kN).data(), order[4]);
  EXPECT_EQ(pool.Take(kN).data(), order[3]);
  EXPECT_EQ(pool.Take(kN).data(), order[2]);
  EXPECT_EQ(pool.held_buffers(), 0);

  std::vector<float> huge;
  huge.reserve(4 * kN);  // over the cap by itself: freed, not kept
  pool.Give(std::move(huge));
  EXPECT_EQ(pool.held_buffers(), 0);
  pool.Give(std::vector<float>());  // no memory: nothing to keep
  EXPECT_EQ(pool.held_buffers(), 0);
}

TEST(KvBufferPool, ASharedChunkGoesBackWhenItsLastReferenceDrops) {
  auto pool = std::make_shared<KvBufferPool>(8 * kBytes);
  ChunkKv kv;
  kv.k = pool->Take(kN);
  kv.v = pool->Take(kN);
  kv.k.assign(kN, 1.0f);
  kv.v.assign(kN, 2.0f);
  const float* pk = kv.k.data();
  const float* pv = kv.v.data();
  std::shared_ptr<const ChunkKv> a = KvBufferPool::Share(pool, std::move(kv));
  std::shared_ptr<const ChunkKv> b = a;
  EXPECT_GT(pool.use_count(), 1);  // the chunk keeps the pool alive
  a.reset();
  EXPECT_EQ(pool->held_buffers(), 0) << "given back while still referenced";
  EXPECT_EQ(b->k[kN - 1], 1.0f);
  EXPECT_EQ(b->v[0], 2.0f);
  b.reset();
  EXPECT_EQ(pool.use_count(), 1);
  EXPECT_EQ(pool->held_buffers(), 2);
  const std::set<const float*> back = {pool->Take(kN).data(), pool->Take(kN).data()};
  EXPECT_EQ(back, (std::set<const float*>{pk, pv}));
}

TEST(KvBufferPool, ShareWithoutAPoolIsAPlainSharedChunk) {
  ChunkKv kv;
  kv.k.assign(4, 1.0f);
  std::shared_ptr<const ChunkKv> a = KvBufferPool::Share(nullptr, std::move(kv));
  EXPECT_EQ(a->k.size(), 4u);
}

TEST(KvBufferPool, ConcurrentTakersNeverShareABuffer) {
  KvBufferPool pool(6 * kBytes);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const size_t n = (i % 3 == 0) ? kN / 2 : kN;
        std::vector<float> v = pool.Take(n);
        if (!(v.empty() || v.size() == n) || v.capacity() < n) ++bad;
        v.assign(n, static_cast<float>(t));
        std::this_thread::yield();
        for (size_t j = 0; j < n; j += 997) {
          if (v[j] != static_cast<float>(t)) ++bad;  // someone else wrote into it
        }
        pool.Give(std::move(v));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_LE(pool.held_bytes(), 6 * kBytes);
  EXPECT_EQ(pool.reused() + pool.allocated(), 8 * 200);
  EXPECT_GT(pool.reused(), 0);
}

}  // namespace
}  // namespace mesa::worker
