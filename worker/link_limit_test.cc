// LinkLimit (worker/link_limit.h): places up to the bound, the least recently used idle
// link closed to make room (its closer called once, outside the lock), refusal when all
// are in use, Begin false after a close, Release freeing a place, and many threads
// taking and giving back places without ever exceeding the bound.
#include "worker/link_limit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

namespace mesa::worker {
namespace {

using ::testing::HasSubstr;

TEST(LinkLimit, TakesPlacesUpToTheBoundThenClosesTheLeastRecentlyUsedIdleLink) {
  std::map<std::string, int> closed;
  std::vector<std::string> reported;
  LinkLimit limit(2, [&](const std::string& peer) { reported.push_back(peer); });
  auto a = limit.Take("a", [&] { ++closed["a"]; });
  auto b = limit.Take("b", [&] { ++closed["b"]; });
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(limit.live(), 2);
  limit.End(**a);  // a idle first
  limit.End(**b);  // then b: a is the least recently used
  ASSERT_TRUE(limit.Begin(**a));
  limit.End(**a);  // a used again: now b is
  auto c = limit.Take("c", [&] { ++closed["c"]; });
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(closed["b"], 1);
  EXPECT_EQ(closed["a"], 0);
  EXPECT_EQ(reported, std::vector<std::string>{"b"});
  EXPECT_FALSE(limit.Begin(**b));  // closed for room: used no more
  EXPECT_TRUE(limit.Begin(**a));
  EXPECT_EQ(limit.live(), 2);
  EXPECT_EQ(limit.closed_for_room(), 1);
  limit.Release(**b);  // harmless after the close
  EXPECT_EQ(limit.live(), 2);
}

TEST(LinkLimit, WhenEveryLinkIsInUseANewOneIsRefused) {
  LinkLimit limit(1);
  auto a = limit.Take("a", nullptr);
  ASSERT_TRUE(a.ok());  // in use: being made
  auto b = limit.Take("b", nullptr);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(b.status().message()), HasSubstr("--kv-links"));
  limit.End(**a);
  ASSERT_TRUE(limit.Begin(**a));  // in use again
  EXPECT_FALSE(limit.Take("b", nullptr).ok());
  limit.End(**a);
  EXPECT_TRUE(limit.Take("b", nullptr).ok());  // a closed for room
  EXPECT_FALSE(limit.Begin(**a));
}

TEST(LinkLimit, ReleaseFreesAPlaceWithoutClosingAnything) {
  int closes = 0;
  LinkLimit limit(1);
  auto a = limit.Take("a", [&] { ++closes; });
  ASSERT_TRUE(a.ok());
  limit.Release(**a);
  limit.Release(**a);  // idempotent
  EXPECT_EQ(limit.live(), 0);
  auto b = limit.Take("b", nullptr);  // a place free: nothing closed, even with b busy
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(closes, 0);
  EXPECT_EQ(limit.closed_for_room(), 0);
  EXPECT_FALSE(limit.Begin(**a));
}

TEST(LinkLimit, NoBoundMeansEveryLinkGetsAPlace) {
  LinkLimit limit(0);
  std::vector<std::shared_ptr<LinkLimit::Place>> places;
  for (int i = 0; i < 100; ++i) {
    auto p = limit.Take("p" + std::to_string(i), [] { ADD_FAILURE() << "closed without a bound"; });
    ASSERT_TRUE(p.ok());
    places.push_back(*p);
  }
  EXPECT_EQ(limit.live(), 100);
}

TEST(LinkLimit, TheCloserMayTakeTheLimitsOtherCalls) {
  // The closer runs outside the lock: it may Release or query (as a session closing).
  LinkLimit limit(1);
  std::shared_ptr<LinkLimit::Place> a;
  auto taken = limit.Take("a", [&] {
    limit.Release(*a);
    EXPECT_EQ(limit.live(), 1);  // the new place only
  });
  ASSERT_TRUE(taken.ok());
  a = *taken;
  limit.End(*a);
  ASSERT_TRUE(limit.Take("b", nullptr).ok());
}

TEST(LinkLimit, ManyThreadsNeverExceedTheBoundAndEveryCloseIsOfAnIdleLink) {
  constexpr int kMax = 3;
  LinkLimit limit(kMax);
  std::atomic<int> in_use{0}, peak{0}, refused{0}, closed_in_use{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        auto using_it = std::make_shared<std::atomic<bool>>(true);
        auto place = limit.Take("t" + std::to_string(t), [using_it, &closed_in_use] {
          if (using_it->load()) closed_in_use.fetch_add(1);
        });
        if (!place.ok()) {
          refused.fetch_add(1);
          continue;
        }
        const int now = in_use.fetch_add(1) + 1;
        int p = peak.load();
        while (now > p && !peak.compare_exchange_weak(p, now)) {
        }
        EXPECT_LE(limit.live(), kMax);
        in_use.fetch_sub(1);
        using_it->store(false);
        limit.End(**place);
        if (i % 3 == 0) {
          if (limit.Begin(**place)) {
            using_it->store(true);
            using_it->store(false);
            limit.End(**place);
          }
        }
        if (i % 2 == 0) limit.Release(**place);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(peak.load(), kMax);
  EXPECT_EQ(closed_in_use.load(), 0);
  EXPECT_LE(limit.live(), kMax);
}

}  // namespace
}  // namespace mesa::worker
