// The NCCL PeerLink on a GPU (label gpu: skipped, saying why, where no CUDA device can
// be used). NCCL 2.28 refuses two ranks of one communicator on one GPU, so on a one-GPU
// machine the link is tested as a one-rank group sending to itself; the protocol
// around it (manifests, order, deadlines) is tested over sockets (kv_gather_test).
#include "worker/nccl_peer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

#include "kernels/cuda/device_query.h"

namespace mesa::worker {
namespace {

using ::testing::HasSubstr;

#define REQUIRE_GPU()                                                                  \
  do {                                                                                 \
    const CudaDeviceReport report = QueryCudaDevices();                                \
    if (!report.unavailable_reason.empty()) GTEST_SKIP() << report.unavailable_reason; \
  } while (0)

absl::Time Soon(double seconds) { return absl::Now() + absl::Seconds(seconds); }

std::vector<uint8_t> Pattern(size_t n, int seed) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>((i * 151 + seed * 13 + (i >> 10)) & 0xff);
  return b;
}

struct OneRank {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<NcclPeerTransport> transport;
  std::unique_ptr<PeerLink> link;
};

// A CUDA backend on cuda:0 and a one-rank NCCL group on it.
void MakeOneRank(OneRank* out) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend("cuda:0", 1);
  ASSERT_TRUE(backend.ok()) << backend.status();
  out->backend = *std::move(backend);
  absl::StatusOr<std::unique_ptr<NcclPeerTransport>> t = NcclPeerTransport::Make(*out->backend);
  ASSERT_TRUE(t.ok()) << t.status();
  out->transport = *std::move(t);
  std::printf("NCCL %d on %s\n", out->transport->version(), out->backend->Name().c_str());
  absl::StatusOr<PeerGroupId> id = out->transport->NewGroupId();
  ASSERT_TRUE(id.ok()) << id.status();
  absl::StatusOr<std::unique_ptr<PeerLink>> link = out->transport->Join(*id, 0, 1, Soon(60));
  ASSERT_TRUE(link.ok()) << link.status();
  out->link = *std::move(link);
  EXPECT_EQ(out->link->Transport(), "nccl");
  EXPECT_FALSE(out->link->HostMemory());
}

TEST(NcclPeer, OneRankSendsToItselfInPostingOrder) {
  REQUIRE_GPU();
  OneRank r;
  ASSERT_NO_FATAL_FAILURE(MakeOneRank(&r));
  // Two messages to self of different odd sizes, received in the order sent, in one
  // group; then a second group on the same communicator.
  const std::vector<size_t> sizes = {(size_t{1} << 20) + 17, 3, (size_t{32} << 20) + 5};
  std::vector<BackendBuffer> src, dst;
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto s = r.backend->Allocate(sizes[i]);
    auto d = r.backend->Allocate(sizes[i]);
    ASSERT_TRUE(s.ok() && d.ok());
    const std::vector<uint8_t> p = Pattern(sizes[i], static_cast<int>(i));
    r.backend->CopyIn(s->data(), p.data(), p.size());
    const std::vector<uint8_t> poison(sizes[i], 0xff);
    r.backend->CopyIn(d->data(), poison.data(), poison.size());
    src.push_back(*std::move(s));
    dst.push_back(*std::move(d));
  }
  for (int round = 0; round < 2; ++round) {
    std::vector<PeerOp> ops;
    for (size_t i = 0; i < sizes.size(); ++i) ops.push_back(PeerOp::Send(0, src[i].data(), static_cast<int64_t>(sizes[i])));
    for (size_t i = 0; i < sizes.size(); ++i) ops.push_back(PeerOp::Recv(0, dst[i].data(), static_cast<int64_t>(sizes[i])));
    const absl::Status s = r.link->Run(ops, Soon(60));
    ASSERT_TRUE(s.ok()) << "round " << round << ": " << s;
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::vector<uint8_t> got(sizes[i]);
      r.backend->CopyOut(got.data(), dst[i].data(), got.size());
      EXPECT_TRUE(got == Pattern(sizes[i], static_cast<int>(i))) << "round " << round << " message " << i;
    }
    ASSERT_TRUE(r.backend->status().ok()) << r.backend->status();
  }
}

TEST(NcclPeer, UnmatchedReceiveEndsByTheDeadlineAndKillsTheLink) {
  REQUIRE_GPU();
  OneRank r;
  ASSERT_NO_FATAL_FAILURE(MakeOneRank(&r));
  auto d = r.backend->Allocate(4096);
  ASSERT_TRUE(d.ok());
  const absl::Time start = absl::Now();
  const absl::Status s = r.link->Run({PeerOp::Recv(0, d->data(), 4096)}, start + absl::Seconds(2));
  const absl::Duration took = absl::Now() - start;
  std::printf("unmatched receive: %s after %s\n", s.ToString().c_str(), absl::FormatDuration(took).c_str());
  EXPECT_FALSE(s.ok());
  EXPECT_LT(took, absl::Seconds(10));
  EXPECT_FALSE(r.link->status().ok());
  const absl::Status again = r.link->Run({PeerOp::Recv(0, d->data(), 4096)}, Soon(2));
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition) << again;
  // The backend's stream is still usable after the abort.
  const std::vector<uint8_t> p = Pattern(4096, 9);
  std::vector<uint8_t> back(4096);
  r.backend->CopyIn(d->data(), p.data(), p.size());
  r.backend->CopyOut(back.data(), d->data(), back.size());
  EXPECT_EQ(back, p);
}

TEST(NcclPeer, AbortFromAnotherThreadEndsRun) {
  REQUIRE_GPU();
  OneRank r;
  ASSERT_NO_FATAL_FAILURE(MakeOneRank(&r));
  auto d = r.backend->Allocate(4096);
  ASSERT_TRUE(d.ok());
  absl::Status s;
  const absl::Time start = absl::Now();
  std::thread runner([&] { s = r.link->Run({PeerOp::Recv(0, d->data(), 4096)}, Soon(30)); });
  absl::SleepFor(absl::Milliseconds(300));
  r.link->Abort(absl::CancelledError("the job was cancelled"));
  runner.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(r.link->status().message(), HasSubstr("the job was cancelled"));
}

TEST(NcclPeer, JoinWithoutTheOtherRanksEndsByTheDeadline) {
  REQUIRE_GPU();
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend("cuda:0", 1);
  ASSERT_TRUE(backend.ok()) << backend.status();
  absl::StatusOr<std::unique_ptr<NcclPeerTransport>> t = NcclPeerTransport::Make(**backend);
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<PeerGroupId> id = (*t)->NewGroupId();
  ASSERT_TRUE(id.ok());
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<PeerLink>> link = (*t)->Join(*id, 0, 2, start + absl::Seconds(3));
  const absl::Duration took = absl::Now() - start;
  std::printf("join alone: %s after %s\n", link.status().ToString().c_str(), absl::FormatDuration(took).c_str());
  EXPECT_FALSE(link.ok());
  EXPECT_LT(took, absl::Seconds(15));
}

TEST(NcclPeer, TwoRanksOnOneGpuFailCleanly) {
  REQUIRE_GPU();
  // NCCL 2.28 refuses this ("Duplicate GPU detected"); what matters here is that both
  // ranks get an error by their deadline rather than hanging. (On a machine with two
  // GPUs, cuda:1 for rank 1 would make this a real two-rank transfer.)
  const CudaDeviceReport report = QueryCudaDevices();
  const int second = report.devices.size() > 1 ? 1 : 0;
  std::vector<std::unique_ptr<Backend>> backends;
  for (int dev : {0, second}) {
    absl::StatusOr<std::unique_ptr<Backend>> b = MakeBackend(absl::StrCat("cuda:", dev), 1);
    ASSERT_TRUE(b.ok()) << b.status();
    backends.push_back(*std::move(b));
  }
  InProcessIdChannel channel;
  std::vector<absl::StatusOr<std::unique_ptr<PeerLink>>> links(2);
  std::vector<std::unique_ptr<NcclPeerTransport>> transports(2);
  for (int r = 0; r < 2; ++r) {
    auto t = NcclPeerTransport::Make(*backends[r]);
    ASSERT_TRUE(t.ok());
    transports[r] = *std::move(t);
  }
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] { links[r] = JoinPeerGroup(*transports[r], channel, r, 2, start + absl::Seconds(10)); });
  }
  for (auto& t : threads) t.join();
  std::printf("two ranks on cuda:0 and cuda:%d: %s / %s after %s\n", second, links[0].status().ToString().c_str(),
              links[1].status().ToString().c_str(), absl::FormatDuration(absl::Now() - start).c_str());
  EXPECT_LT(absl::Now() - start, absl::Seconds(25));
  if (second == 0) {
    EXPECT_FALSE(links[0].ok() && links[1].ok()) << "NCCL accepted two ranks on one GPU (newer NCCL?)";
    return;
  }
  ASSERT_TRUE(links[0].ok() && links[1].ok());
  // Two GPUs: rank 0 sends to rank 1.
  auto s = backends[0]->Allocate(1 << 20);
  auto d = backends[1]->Allocate(1 << 20);
  ASSERT_TRUE(s.ok() && d.ok());
  const std::vector<uint8_t> p = Pattern(1 << 20, 5);
  backends[0]->CopyIn(s->data(), p.data(), p.size());
  backends[0]->Synchronize();
  absl::Status s0, s1;
  std::thread a([&] { s0 = (*links[0])->Run({PeerOp::Send(1, s->data(), 1 << 20)}, Soon(30)); });
  std::thread b([&] { s1 = (*links[1])->Run({PeerOp::Recv(0, d->data(), 1 << 20)}, Soon(30)); });
  a.join();
  b.join();
  ASSERT_TRUE(s0.ok() && s1.ok()) << s0 << s1;
  std::vector<uint8_t> got(1 << 20);
  backends[1]->CopyOut(got.data(), d->data(), got.size());
  EXPECT_EQ(got, p);
}

}  // namespace
}  // namespace mesa::worker
