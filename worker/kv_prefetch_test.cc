// KvPrefetcher over a scripted KvFetcher (the seam): order, the window, the bound on
// fetches in flight, fail-fast and the destructor's wait. The real fetchers under it
// are tested in worker_core_test (in process) and peer_kv_test / coordinator_rpc_test.
#include "worker/kv_prefetch.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "gtest/gtest.h"

namespace mesa::worker {
namespace {

// Each fetch of chunk c blocks until Release(c) (or answers at once when c is in
// `instant`), then returns `fail[c]` or a chunk whose range.begin is c. Records what is
// in flight.
class ScriptedFetcher : public KvFetcher {
 public:
  absl::StatusOr<std::shared_ptr<const ChunkKv>> Fetch(const std::string&, const KvKey& key, int64_t) override {
    std::unique_lock<std::mutex> l(mu_);
    started_.push_back(key.chunk);
    ++in_flight_;
    max_in_flight_ = std::max(max_in_flight_, in_flight_);
    cv_.notify_all();
    cv_.wait(l, [&] { return all_released_ || released_.contains(key.chunk); });
    --in_flight_;
    if (auto it = fail_.find(key.chunk); it != fail_.end()) return it->second;
    if (null_.contains(key.chunk)) return std::shared_ptr<const ChunkKv>();
    auto kv = std::make_shared<ChunkKv>();
    kv->range = TokenRange{key.chunk, key.chunk + 1};
    return kv;
  }
  void Release(int32_t c) {
    std::lock_guard<std::mutex> l(mu_);
    released_.insert(c);
    cv_.notify_all();
  }
  void ReleaseAll() {
    std::lock_guard<std::mutex> l(mu_);
    all_released_ = true;
    cv_.notify_all();
  }
  // Waits until `n` fetches have started (false after 5 s).
  bool WaitStarted(size_t n) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, std::chrono::seconds(5), [&] { return started_.size() >= n; });
  }
  std::vector<int32_t> started() {
    std::lock_guard<std::mutex> l(mu_);
    return started_;
  }
  int max_in_flight() {
    std::lock_guard<std::mutex> l(mu_);
    return max_in_flight_;
  }
  void Fail(int32_t c, absl::Status s) {
    std::lock_guard<std::mutex> l(mu_);
    fail_[c] = std::move(s);
  }
  // With max_batch > 1, FetchMany is worth calling: it records each batch, then fetches
  // its keys one after another (KvFetcher's default).
  absl::StatusOr<std::vector<Fetched>> FetchMany(const std::string& address, absl::Span<const KvKey> keys,
                                                 int64_t timeout_ms) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      std::vector<int32_t> b;
      for (const KvKey& k : keys) b.push_back(k.chunk);
      batches_.push_back(std::move(b));
    }
    return KvFetcher::FetchMany(address, keys, timeout_ms);
  }
  int MaxBatch() const override { return max_batch; }
  int max_batch = 1;
  std::vector<std::vector<int32_t>> batches() {
    std::lock_guard<std::mutex> l(mu_);
    return batches_;
  }
  void ReturnNull(int32_t c) {
    std::lock_guard<std::mutex> l(mu_);
    null_.insert(c);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<int32_t> released_, null_;
  bool all_released_ = false;
  absl::flat_hash_map<int32_t, absl::Status> fail_;
  std::vector<int32_t> started_;
  std::vector<std::vector<int32_t>> batches_;
  int in_flight_ = 0, max_in_flight_ = 0;
};

std::vector<PrefetchRequest> Requests(int n, int64_t bytes_each) {
  std::vector<PrefetchRequest> r;
  for (int i = 0; i < n; ++i) r.push_back({"holder:" + std::to_string(i % 3), KvKey{"job", 0, i, 0}, bytes_each});
  return r;
}

TEST(KvPrefetcherTest, HandsChunksOutInPlanOrderWhateverOrderTheyArrive) {
  ScriptedFetcher f;
  KvPrefetcher p(f, Requests(6, 10), PrefetchOptions{3, 1000, 1000});
  ASSERT_TRUE(f.WaitStarted(3));
  // Released last-first: the first chunk still comes out first.
  for (int c : {5, 4, 3, 2, 1, 0}) f.Release(c);
  for (size_t i = 0; i < 6; ++i) {
    Prefetched got = p.Next();
    EXPECT_EQ(got.index, i);
    ASSERT_TRUE(got.kv.ok()) << got.kv.status();
    EXPECT_EQ((*got.kv)->range.begin, static_cast<int64_t>(i));
    EXPECT_GE(got.fetch_s, 0);
  }
  EXPECT_EQ(p.Next().kv.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_LE(f.max_in_flight(), 3);
  // Started in plan order.
  const std::vector<int32_t> started = f.started();
  ASSERT_EQ(started.size(), 6u);
  EXPECT_EQ(started[0], 0);
}

TEST(KvPrefetcherTest, TheWindowBoundsWhatIsFetchedButNotTaken) {
  ScriptedFetcher f;
  f.ReleaseAll();
  // 25 bytes a chunk, a window of 60: at most two pending (the third would be 75).
  KvPrefetcher p(f, Requests(8, 25), PrefetchOptions{4, 60, 1000});
  ASSERT_TRUE(f.WaitStarted(2));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(f.started().size(), 2u) << "a third chunk started beyond the window";
  for (int i = 0; i < 8; ++i) {
    Prefetched got = p.Next();
    ASSERT_TRUE(got.kv.ok()) << got.kv.status();
    EXPECT_EQ(got.index, static_cast<size_t>(i));
  }
  EXPECT_LE(p.peak_bytes(), 60);
  EXPECT_EQ(f.started().size(), 8u);
}

TEST(KvPrefetcherTest, WindowZeroFetchesOneChunkAtATimeAndAChunkOverTheWindowStillMoves) {
  for (int64_t window : {int64_t{0}, int64_t{5}}) {
    ScriptedFetcher f;
    f.ReleaseAll();
    KvPrefetcher p(f, Requests(5, 100), PrefetchOptions{4, window, 1000});
    for (int i = 0; i < 5; ++i) {
      Prefetched got = p.Next();
      ASSERT_TRUE(got.kv.ok()) << got.kv.status();
      EXPECT_EQ(got.index, static_cast<size_t>(i));
    }
    EXPECT_EQ(f.max_in_flight(), 1) << "window " << window;
    EXPECT_EQ(p.peak_bytes(), 100);
  }
}

TEST(KvPrefetcherTest, ALaterChunkFailingIsReturnedAtOnceAndStopsFurtherStarts) {
  ScriptedFetcher f;
  f.Fail(1, absl::UnavailableError("holder died"));
  KvPrefetcher p(f, Requests(10, 1), PrefetchOptions{2, 1000, 1000});
  ASSERT_TRUE(f.WaitStarted(2));
  f.Release(1);  // chunk 0 stays in flight: the failure must not wait for it
  Prefetched got = p.Next();
  EXPECT_EQ(got.index, 1u);
  EXPECT_EQ(got.kv.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(p.Next().kv.status().code(), absl::StatusCode::kFailedPrecondition);
  f.ReleaseAll();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // Chunks 0 and 1 were in flight; the failure stopped every later start.
  EXPECT_EQ(f.started().size(), 2u);
}

TEST(KvPrefetcherTest, AFetcherThatReturnsNothingIsDataLoss) {
  ScriptedFetcher f;
  f.ReturnNull(0);
  f.ReleaseAll();
  KvPrefetcher p(f, Requests(2, 1), PrefetchOptions{1, 0, 1000});
  Prefetched got = p.Next();
  EXPECT_EQ(got.index, 0u);
  EXPECT_EQ(got.kv.status().code(), absl::StatusCode::kDataLoss);
}

TEST(KvPrefetcherTest, TheDestructorWaitsForFetchesInFlightAndStartsNoMore) {
  ScriptedFetcher f;
  std::atomic<bool> destroyed{false};
  std::thread releaser;
  {
    KvPrefetcher p(f, Requests(20, 1), PrefetchOptions{3, 1000, 1000});
    ASSERT_TRUE(f.WaitStarted(3));
    releaser = std::thread([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      EXPECT_FALSE(destroyed.load()) << "the destructor did not wait for the fetches in flight";
      f.ReleaseAll();
    });
  }
  destroyed = true;
  releaser.join();
  // The three in flight, none after.
  EXPECT_EQ(f.started().size(), 3u);
}

// Requests(n) puts chunk i on holder i % 3.
TEST(KvPrefetcherTest, AFetchTakesItsHoldersLaterChunksAlongInPlanOrder) {
  ScriptedFetcher f;
  f.max_batch = 4;
  f.ReleaseAll();
  {
    KvPrefetcher p(f, Requests(9, 10), PrefetchOptions{3, 1000, 1000});
    for (size_t i = 0; i < 9; ++i) {
      Prefetched got = p.Next();
      ASSERT_TRUE(got.kv.ok()) << got.kv.status();
      EXPECT_EQ(got.index, i);
      EXPECT_EQ((*got.kv)->range.begin, static_cast<int64_t>(i));
    }
  }
  std::vector<std::vector<int32_t>> batches = f.batches();
  std::sort(batches.begin(), batches.end());
  EXPECT_EQ(batches, (std::vector<std::vector<int32_t>>{{0, 3, 6}, {1, 4, 7}, {2, 5, 8}}));
}

TEST(KvPrefetcherTest, BatchesStayWithinTheWindowAndTheOptionsCap) {
  {
    ScriptedFetcher f;
    f.max_batch = 8;
    f.ReleaseAll();
    // A window of 25 holds two chunks of 10: each batch is at most two.
    KvPrefetcher p(f, Requests(9, 10), PrefetchOptions{3, 25, 1000});
    for (size_t i = 0; i < 9; ++i) ASSERT_EQ(p.Next().index, i);
    EXPECT_LE(p.peak_bytes(), 25);
    for (const auto& b : f.batches()) EXPECT_LE(b.size(), 2u);
  }
  {
    ScriptedFetcher f;
    f.max_batch = 8;
    f.ReleaseAll();
    PrefetchOptions o{3, 1000, 1000};
    o.max_batch = 1;  // the caller's cap wins over the fetcher's
    KvPrefetcher p(f, Requests(9, 10), o);
    for (size_t i = 0; i < 9; ++i) ASSERT_EQ(p.Next().index, i);
    EXPECT_TRUE(f.batches().empty());
  }
}

TEST(KvPrefetcherTest, AFailedBatchFailsAsItsFirstChunk) {
  ScriptedFetcher f;
  f.max_batch = 4;
  f.Fail(3, absl::DataLossError("chunk 3 was corrupt"));
  f.ReleaseAll();
  KvPrefetcher p(f, Requests(6, 10), PrefetchOptions{1, 1000, 1000});
  Prefetched got = p.Next();  // chunks 0 and 3 moved together: 0 is the one named
  EXPECT_EQ(got.index, 0u);
  EXPECT_EQ(got.kv.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(p.Next().kv.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(KvPrefetcherTest, TheSharedGaugeFollowsWhatIsPendingAndEndsAtZero) {
  std::atomic<int64_t> gauge{0};
  {
    ScriptedFetcher f;
    f.ReleaseAll();
    PrefetchOptions o{2, 1000, 1000};
    o.pending_gauge = &gauge;
    KvPrefetcher p(f, Requests(5, 10), o);
    ASSERT_TRUE(p.Next().kv.ok());
    EXPECT_GE(gauge.load(), 0);
    EXPECT_LE(gauge.load(), 40);
    ASSERT_TRUE(f.WaitStarted(5));
  }  // dropped with chunks fetched but not taken
  EXPECT_EQ(gauge.load(), 0);
  {
    ScriptedFetcher f;
    f.ReleaseAll();
    PrefetchOptions o{2, 1000, 1000};
    o.pending_gauge = &gauge;
    KvPrefetcher p(f, Requests(3, 10), o);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(p.Next().kv.ok());
    EXPECT_EQ(gauge.load(), 0);  // everything taken
  }
  EXPECT_EQ(gauge.load(), 0);
}

TEST(KvPrefetcherTest, NoRequestsStartsNothing) {
  ScriptedFetcher f;
  KvPrefetcher p(f, {}, PrefetchOptions{});
  EXPECT_EQ(p.Next().kv.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(f.started().empty());
}

}  // namespace
}  // namespace mesa::worker
