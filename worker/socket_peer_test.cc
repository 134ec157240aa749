// The socket PeerLink on loopback: bootstrap, matching by posting order, sizes that do
// not match, deadlines, aborts, stray connections.
#include "worker/socket_peer.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <numeric>

#include "worker/peer_testing.h"

namespace mesa::worker {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> Pattern(int64_t n, int seed) {
  std::vector<uint8_t> b(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>((i * 131 + seed * 7 + (i >> 12)) & 0xff);
  return b;
}

absl::Time Soon(double seconds) { return absl::Now() + absl::Seconds(seconds); }

TEST(SocketPeer, EveryPairExchangesInOneGroupInPostingOrder) {
  constexpr int n = 4;
  auto links = MakeSocketGroup(n);
  ASSERT_TRUE(links.ok()) << links.status();
  // Each rank sends two messages to every rank (itself included) in one group: a large
  // one (both directions at once: only one group per rank, so this deadlocks unless sends
  // and receives progress together) and a small one, and receives them in the same order.
  auto size_of = [](int from, int to, int k) { return k == 0 ? (3 << 20) + 17 * from + to : 100 + from * n + to; };
  std::vector<absl::Status> results(n);
  std::vector<std::vector<std::vector<uint8_t>>> got(n);
  OnRanks(n, [&](int r) {
    std::vector<std::vector<uint8_t>> out;
    std::vector<PeerOp> ops;
    got[r].resize(2 * n);
    out.reserve(2 * n);
    for (int k = 0; k < 2; ++k) {
      for (int p = 0; p < n; ++p) {
        out.push_back(Pattern(size_of(r, p, k), r * 100 + p * 10 + k));
        got[r][k * n + p].resize(size_of(p, r, k));
      }
    }
    // Receives posted first for half of the ranks: the order of kinds within a group
    // does not matter, only the order per pair.
    for (int k = 0; k < 2; ++k) {
      for (int p = 0; p < n; ++p) {
        PeerOp s = PeerOp::Send(p, out[k * n + p].data(), size_of(r, p, k));
        PeerOp v = PeerOp::Recv(p, got[r][k * n + p].data(), size_of(p, r, k));
        if (r % 2) {
          ops.push_back(v), ops.push_back(s);
        } else {
          ops.push_back(s), ops.push_back(v);
        }
      }
    }
    results[r] = links->at(r)->Run(ops, Soon(20));
  });
  for (int r = 0; r < n; ++r) {
    ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r];
    for (int k = 0; k < 2; ++k) {
      for (int p = 0; p < n; ++p) {
        EXPECT_EQ(got[r][k * n + p], Pattern(size_of(p, r, k), p * 100 + r * 10 + k)) << r << " from " << p << " #" << k;
      }
    }
  }
  // The link stays usable for the next group.
  std::vector<uint8_t> a = Pattern(1000, 1), b(1000);
  OnRanks(2, [&](int r) {
    results[r] = r == 0 ? links->at(0)->Run({PeerOp::Send(1, a.data(), 1000)}, Soon(10))
                        : links->at(1)->Run({PeerOp::Recv(0, b.data(), 1000)}, Soon(10));
  });
  EXPECT_TRUE(results[0].ok() && results[1].ok()) << results[0] << results[1];
  EXPECT_EQ(a, b);
}

TEST(SocketPeer, SizeMismatchFailsBothSidesInsteadOfHanging) {
  auto links = MakeSocketGroup(2);
  ASSERT_TRUE(links.ok()) << links.status();
  // Larger than the socket buffers hold, so the sender is still writing when the
  // receiver gives up.
  constexpr int64_t kBig = int64_t{32} << 20;
  std::vector<uint8_t> big = Pattern(kBig, 1), small(4096);
  absl::Status s0, s1;
  int failed = -2;
  const absl::Time start = absl::Now();
  OnRanks(2, [&](int r) {
    if (r == 0) s0 = (*links)[0]->Run({PeerOp::Send(1, big.data(), kBig)}, Soon(20));
    if (r == 1) s1 = (*links)[1]->Run({PeerOp::Recv(0, small.data(), 4096)}, Soon(20), &failed);
  });
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(s1.code(), absl::StatusCode::kInvalidArgument) << s1;
  EXPECT_THAT(s1.message(), HasSubstr("different orders or sizes"));
  EXPECT_EQ(failed, 0);
  // The sender learns too (the receiver closed its end): its bytes cannot all fit in the
  // socket buffers of a receiver that stopped reading.
  EXPECT_EQ(s0.code(), absl::StatusCode::kUnavailable) << s0;
  // Dead afterwards: every call fails at once, status says why.
  EXPECT_EQ((*links)[1]->status().code(), absl::StatusCode::kInvalidArgument);
  const absl::Status again = (*links)[1]->Run({PeerOp::Recv(0, small.data(), 4096)}, Soon(20));
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition) << again;
  EXPECT_THAT(again.message(), HasSubstr("dead"));
}

TEST(SocketPeer, DeadlineAbortsTheLinkAndThePeerLearnsAtOnce) {
  auto links = MakeSocketGroup(3);
  ASSERT_TRUE(links.ok()) << links.status();
  std::vector<uint8_t> buf(1 << 16);
  int failed = -2;
  const absl::Time start = absl::Now();
  // Rank 1 waits for rank 2, which never sends.
  const absl::Status s = (*links)[1]->Run({PeerOp::Recv(2, buf.data(), 1 << 16)}, start + absl::Milliseconds(300), &failed);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(s.message(), HasSubstr("receive from peer 2"));
  EXPECT_EQ(failed, 0);
  EXPECT_GE(took, absl::Milliseconds(290));
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_EQ((*links)[1]->status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ((*links)[1]->Run({PeerOp::Send(0, buf.data(), 8)}, Soon(5)).code(), absl::StatusCode::kFailedPrecondition);
  // Rank 2's next operation with rank 1 fails at once (connection shut down), not at its
  // own deadline.
  const absl::Time t2 = absl::Now();
  const absl::Status s2 = (*links)[2]->Run({PeerOp::Recv(1, buf.data(), 8)}, Soon(20));
  EXPECT_EQ(s2.code(), absl::StatusCode::kUnavailable) << s2;
  EXPECT_THAT(s2.message(), HasSubstr("peer 1 closed the connection"));
  EXPECT_LT(absl::Now() - t2, absl::Seconds(3));
}

TEST(SocketPeer, AbortFromAnotherThreadEndsRun) {
  auto links = MakeSocketGroup(2);
  ASSERT_TRUE(links.ok()) << links.status();
  std::vector<uint8_t> buf(64);
  absl::Status s;
  const absl::Time start = absl::Now();
  std::thread runner([&] { s = (*links)[0]->Run({PeerOp::Recv(1, buf.data(), 64)}, Soon(30)); });
  absl::SleepFor(absl::Milliseconds(100));
  (*links)[0]->Abort(absl::CancelledError("the job was cancelled"));
  runner.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_THAT(s.message(), HasSubstr("the job was cancelled"));
}

TEST(SocketPeer, SendToSelfMatchesByOrder) {
  auto links = MakeSocketGroup(1);
  ASSERT_TRUE(links.ok()) << links.status();
  std::vector<uint8_t> a = Pattern(5000, 1), b = Pattern(70, 2), ra(5000), rb(70);
  ASSERT_TRUE((*links)[0]
                  ->Run({PeerOp::Recv(0, ra.data(), 5000), PeerOp::Send(0, a.data(), 5000), PeerOp::Send(0, b.data(), 70),
                         PeerOp::Recv(0, rb.data(), 70)},
                        Soon(5))
                  .ok());
  EXPECT_EQ(ra, a);
  EXPECT_EQ(rb, b);
  // Unmatched, or of other sizes: refused.
  auto l2 = MakeSocketGroup(1);
  ASSERT_TRUE(l2.ok());
  EXPECT_EQ((*l2)[0]->Run({PeerOp::Send(0, a.data(), 5000)}, Soon(5)).code(), absl::StatusCode::kInvalidArgument);
  auto l3 = MakeSocketGroup(1);
  ASSERT_TRUE(l3.ok());
  EXPECT_EQ((*l3)[0]->Run({PeerOp::Send(0, a.data(), 5000), PeerOp::Recv(0, ra.data(), 4999)}, Soon(5)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SocketPeer, BadOpsAreRefused) {
  auto links = MakeSocketGroup(2);
  ASSERT_TRUE(links.ok());
  uint8_t b[8];
  int failed = -2;
  absl::Status s = (*links)[0]->Run({PeerOp::Send(1, b, 8), PeerOp::Send(2, b, 8)}, Soon(5), &failed);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(failed, 1);
  auto l2 = MakeSocketGroup(2);
  ASSERT_TRUE(l2.ok());
  EXPECT_EQ((*l2)[0]->Run({PeerOp::Send(1, b, 0)}, Soon(5)).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SocketPeer, JoinWaitsForEveryRankUntilTheDeadline) {
  SocketPeerTransport transport;
  absl::StatusOr<PeerGroupId> id = transport.NewGroupId();
  ASSERT_TRUE(id.ok());
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<PeerLink>> l = transport.Join(*id, 0, 3, start + absl::Milliseconds(300));
  EXPECT_EQ(l.status().code(), absl::StatusCode::kDeadlineExceeded) << l.status();
  EXPECT_THAT(l.status().message(), HasSubstr("waiting for 2 rank(s) to join"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  // The id was used up by that Join.
  EXPECT_EQ(transport.Join(*id, 0, 3, Soon(1)).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SocketPeer, IdsAndRanksAreChecked) {
  SocketPeerTransport transport;
  PeerGroupId junk;
  junk.bytes.fill(0x5a);
  EXPECT_EQ(transport.Join(junk, 1, 2, Soon(1)).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<PeerGroupId> id = transport.NewGroupId();
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(transport.Join(*id, 2, 2, Soon(1)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(transport.Join(*id, 0, 0, Soon(1)).status().code(), absl::StatusCode::kInvalidArgument);
  // Rank 0 of an id made elsewhere: that transport holds the listening socket.
  SocketPeerTransport other;
  EXPECT_EQ(other.Join(*id, 0, 2, Soon(1)).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SocketPeer, StrayConnectionsDoNotJoinTheGroup) {
  SocketPeerTransport transport;
  absl::StatusOr<PeerGroupId> id = transport.NewGroupId();
  ASSERT_TRUE(id.ok());
  const uint16_t port = static_cast<uint16_t>(id->bytes[24] | (id->bytes[25] << 8));
  // A stranger connects first and sends junk the size of a hello, another sends nothing
  // and closes.
  for (int k = 0; k < 2; ++k) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    if (k == 0) {
      std::vector<char> junk(98, 'x');
      ASSERT_EQ(write(fd, junk.data(), junk.size()), 98);
    }
    close(fd);
  }
  // A third connects and stays silent through the join: it is dropped after its two
  // seconds to say hello, and the real rank joins after it.
  const int silent = socket(AF_INET, SOCK_STREAM, 0);
  {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ASSERT_EQ(connect(silent, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  }
  absl::StatusOr<std::unique_ptr<PeerLink>> l0, l1;
  OnRanks(2, [&](int r) {
    SocketPeerTransport mine;
    if (r == 0) l0 = transport.Join(*id, 0, 2, Soon(10));
    if (r == 1) l1 = mine.Join(*id, 1, 2, Soon(10));
  });
  close(silent);
  ASSERT_TRUE(l0.ok()) << l0.status();
  ASSERT_TRUE(l1.ok()) << l1.status();
  uint32_t x = 0xfeedbeef, y = 0;
  absl::Status s0, s1;
  OnRanks(2, [&](int r) {
    if (r == 0) s0 = (*l0)->Run({PeerOp::Send(1, &x, 4)}, Soon(5));
    if (r == 1) s1 = (*l1)->Run({PeerOp::Recv(0, &y, 4)}, Soon(5));
  });
  EXPECT_TRUE(s0.ok() && s1.ok()) << s0 << s1;
  EXPECT_EQ(y, x);
}

TEST(SocketPeer, ProgressIsReported) {
  std::atomic<int64_t> seen{0};
  SocketPeerOptions options;
  options.on_received = [&](int peer, int64_t received) {
    if (peer == 1) seen = received;
  };
  auto links = MakeSocketGroup(2, options);
  ASSERT_TRUE(links.ok());
  std::vector<uint8_t> a = Pattern(1 << 20, 3), b(1 << 20);
  OnRanks(2, [&](int r) {
    if (r == 1) {
      EXPECT_TRUE((*links)[1]->Run({PeerOp::Send(0, a.data(), 1 << 20)}, Soon(10)).ok());
    }
    if (r == 0) {
      EXPECT_TRUE((*links)[0]->Run({PeerOp::Recv(1, b.data(), 1 << 20)}, Soon(10)).ok());
    }
  });
  EXPECT_EQ(seen.load(), 1 << 20);
}

}  // namespace
}  // namespace mesa::worker
