// PeerKv (worker/peer_kv.h) against real loopback gRPC servers and real socket links: a
// holder service that serves ServePeerKv over a map of chunks (or a hostile one that
// speaks the protocol wrongly), and the PeerKvFetcher with a gRPC FetchKv fallback.
// Chunks must arrive bit for bit over the link, one link per pair reused across
// fetches; holders without links are fetched from over FetchKv; every failure is an
// error with a code that names the key and the peer, within the deadline, and nothing
// partial is returned.
#include "worker/peer_kv.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <cmath>
#include <map>
#include <set>
#include <thread>

#include "worker/kv_gather.h"
#include "worker/kv_testing.h"
#include "worker/rpc_testing.h"
#include "tests/testing/opaque_backend.h"
#include "worker/socket_peer.h"

namespace mesa::worker {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using Message = mesa::v1::PeerKvMessage;
using Clock = std::chrono::steady_clock;

enum class Hostile {
  kNone,             // ServePeerKv
  kStallAfterOffer,  // offers the chunk, then says and sends nothing
  kHugeOffer,        // offers a chunk of 1 TiB
  kWrongMessage,     // answers a fetch with a status instead of an offer
  kCorruptBytes,     // the right manifest, one flipped byte on the link
  kOtherManifest,    // offers one shape, then announces another in the gather
};

// A holder: chunks by key, FetchKv (the raw sender) and PeerKv over `transport`.
class Holder final : public KvStreamingWorkerService {
 public:
  struct Chunks {
    std::mutex mu;
    std::map<std::string, std::shared_ptr<const ChunkKv>> by_key;
  };

  explicit Holder(std::shared_ptr<PeerEndpoints> endpoints, std::shared_ptr<Chunks> chunks = std::make_shared<Chunks>())
      : KvStreamingWorkerService(LookupIn(chunks)), chunks_(chunks), endpoints_(std::move(endpoints)) {}

  static Lookup LookupIn(std::shared_ptr<Chunks> chunks) {
    return [chunks](const KvKey& key) -> absl::StatusOr<Held> {
      std::lock_guard<std::mutex> lock(chunks->mu);
      auto it = chunks->by_key.find(KvKeyString(key));
      if (it == chunks->by_key.end()) return absl::NotFoundError(absl::StrCat("no K/V held for ", KvKeyString(key)));
      return Held{it->second, std::nullopt};
    };
  }
  void Put(const KvKey& key, ChunkKv kv) {
    std::lock_guard<std::mutex> lock(chunks_->mu);
    chunks_->by_key[KvKeyString(key)] = std::make_shared<const ChunkKv>(std::move(kv));
  }
  std::shared_ptr<const ChunkKv> Get(const KvKey& key) {
    std::lock_guard<std::mutex> lock(chunks_->mu);
    return chunks_->by_key.at(KvKeyString(key));
  }
  void set_hostile(Hostile h) { hostile_ = h; }
  void set_limit(std::shared_ptr<LinkLimit> limit) { limit_ = std::move(limit); }
  int calls() const { return calls_.load(); }
  int finished() const { return finished_.load(); }
  // Cancels every open PeerKv call (as a holder that dies would drop them).
  void CancelStreams() {
    std::lock_guard<std::mutex> lock(mu_);
    for (grpc::ServerContext* ctx : open_) ctx->TryCancel();
  }

  grpc::Status PeerKv(grpc::ServerContext* ctx, grpc::ServerReaderWriter<Message, Message>* stream) override {
    calls_.fetch_add(1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_.insert(ctx);
    }
    grpc::Status s = hostile_ == Hostile::kNone ? ServePeerKv(ctx, stream, endpoints_.get(), LookupIn(chunks_), limit_)
                                                : ServeHostile(ctx, stream);
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_.erase(ctx);
    }
    finished_.fetch_add(1);
    return s;
  }

 private:
  // The protocol's first steps done right, then the chunk asked for offered wrongly.
  grpc::Status ServeHostile(grpc::ServerContext* ctx, grpc::ServerReaderWriter<Message, Message>* stream) {
    Message m, reply;
    if (!stream->Read(&m) || !m.has_hello()) return grpc::Status::CANCELLED;
    reply.mutable_status()->set_code(0);
    stream->Write(reply);
    if (!stream->Read(&m) || !m.has_group_id()) return grpc::Status::CANCELLED;
    PeerGroupId id;
    std::memcpy(id.bytes.data(), m.group_id().data(), id.bytes.size());
    auto endpoint = endpoints_->Make();
    if (!endpoint.ok()) return grpc::Status::CANCELLED;
    auto link = endpoint->transport->Join(id, 1, 2, absl::Now() + absl::Seconds(10));
    if (!link.ok()) return grpc::Status::CANCELLED;
    stream->Write(reply);
    if (!stream->Read(&m) || !m.has_fetch()) return grpc::Status::CANCELLED;
    const KvKey key = FromProto(m.fetch().key());
    auto held = LookupIn(chunks_)(key);
    if (!held.ok()) return grpc::Status::CANCELLED;
    const ChunkKv& kv = *held->kv;
    KvManifestInfo info = MakeManifest(kv);
    Message offer;
    offer.mutable_offer()->mutable_status()->set_code(0);
    if (hostile_ == Hostile::kHugeOffer) {
      KvManifestInfo huge = info;
      huge.range_end = huge.range_begin + (int64_t{1} << 30);
      huge.total_bytes = int64_t{1} << 40;
      ToProto(huge, offer.mutable_offer()->mutable_manifest());
    } else {
      ToProto(info, offer.mutable_offer()->mutable_manifest());
    }
    if (hostile_ == Hostile::kWrongMessage) {
      stream->Write(reply);  // a status where an offer belongs
    } else {
      stream->Write(offer);
    }
    if (hostile_ == Hostile::kCorruptBytes || hostile_ == Hostile::kOtherManifest) {
      // The gather's control over the stream, read without a deadline (a test peer).
      struct Control final : GatherControl {
        grpc::ServerReaderWriter<Message, Message>* s;
        absl::Status Send(int, const std::string& msg, absl::Time) override {
          Message c;
          c.set_control(msg);
          return s->Write(c) ? absl::OkStatus() : absl::UnavailableError("broken");
        }
        absl::StatusOr<std::string> Receive(int, absl::Time) override {
          Message c;
          if (!s->Read(&c) || !c.has_control()) return absl::UnavailableError("broken");
          return c.control();
        }
      } control;
      control.s = stream;
      ChunkKv tampered = kv;
      tampered.v[tampered.v.size() / 3] = std::nextafter(tampered.v[tampered.v.size() / 3], 1e30f);
      HeldChunk chunk = HeldFromChunkKv(key, tampered, info.crc32c);  // the original's CRC
      BackendBuffer k_dev, v_dev;
      if (!(*link)->HostMemory()) {  // staged as ServePeerKv would
        const size_t half = tampered.k.size() * sizeof(float);
        k_dev = *endpoint->staging->Allocate(half);
        v_dev = *endpoint->staging->Allocate(half);
        endpoint->staging->CopyIn(k_dev.data(), tampered.k.data(), half);
        endpoint->staging->CopyIn(v_dev.data(), tampered.v.data(), half);
        chunk.k = k_dev.data();
        chunk.v = v_dev.data();
      }
      GatherPlan plan;
      GatherEntry e;
      e.key = key;
      e.holder = 1;
      e.n_layer = info.n_layer, e.n_head_kv = info.n_head_kv, e.head_dim = info.head_dim;
      e.range_begin = info.range_begin, e.range_end = info.range_end;
      plan.entries.push_back(e);
      if (hostile_ == Hostile::kOtherManifest) chunk.manifest.info.range_end += 1;
      (void)GatherSend(**link, control, plan, {chunk}, absl::Now() + absl::Seconds(10));
    }
    // Then silence until the receiver gives up.
    while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return grpc::Status::CANCELLED;
  }

  std::shared_ptr<Chunks> chunks_;
  std::shared_ptr<PeerEndpoints> endpoints_;
  std::atomic<Hostile> hostile_{Hostile::kNone};
  std::atomic<int> calls_{0}, finished_{0};
  std::mutex mu_;
  std::set<grpc::ServerContext*> open_;  // guarded by mu_
  std::shared_ptr<LinkLimit> limit_;     // set before serving
};

// A stand-in for NCCL on machines without GPUs: socket links whose buffers are "device
// memory" (OpaqueBackend's, whose pointers fault if the host touches them), so that the
// staging through a backend (worker/peer_kv.h PeerEndpoint) runs as it would over NCCL.
class DeviceSocketLink final : public PeerLink {
 public:
  explicit DeviceSocketLink(std::unique_ptr<PeerLink> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string Transport() const override { return "device-socket"; }
  bool HostMemory() const override { return false; }
  absl::Status Run(absl::Span<const PeerOp> ops, absl::Time deadline, int* failed_op) override {
    std::vector<PeerOp> host(ops.begin(), ops.end());
    for (PeerOp& op : host) op.data = testing::Flip(op.data);  // what a GPU's DMA engine would reach
    return inner_->Run(host, deadline, failed_op);
  }
  void Abort(const absl::Status& why) override { inner_->Abort(why); }
  absl::Status status() const override { return inner_->status(); }

 private:
  std::unique_ptr<PeerLink> inner_;
};
class DeviceSocketTransport final : public PeerTransport {
 public:
  std::string Name() const override { return "device-socket"; }
  absl::StatusOr<PeerGroupId> NewGroupId() override { return sockets_.NewGroupId(); }
  absl::StatusOr<std::unique_ptr<PeerLink>> Join(const PeerGroupId& id, int rank, int n,
                                                 absl::Time deadline) override {
    auto link = sockets_.Join(id, rank, n, deadline);
    if (!link.ok()) return link.status();
    return std::make_unique<DeviceSocketLink>(*std::move(link));
  }

 private:
  SocketPeerTransport sockets_;
};
class DeviceSocketEndpoints final : public PeerEndpoints {
 public:
  std::string Name() const override { return "device-socket"; }
  absl::StatusOr<PeerEndpoint> Make() override {
    made_.fetch_add(1);
    return PeerEndpoint{std::make_unique<testing::OpaqueBackend>(1), std::make_shared<DeviceSocketTransport>()};
  }
  int made() const { return made_.load(); }

 private:
  std::atomic<int> made_{0};
};

const KvKey kA{"job-7", 2, 0, 1};
const KvKey kB{"job-7", 2, 1, 1};
const KvKey kC{"job-7", 2, 2, 1};

std::shared_ptr<PeerEndpoints> Socket(SocketPeerOptions o = {}) {
  return std::make_shared<SharedTransportEndpoints>(std::make_shared<SocketPeerTransport>(std::move(o)));
}

PeerKvFetcherOptions Options(std::shared_ptr<PeerEndpoints> endpoints, bool fallback = true) {
  PeerKvFetcherOptions o;
  o.endpoints = std::move(endpoints);
  if (fallback) o.fallback = std::make_shared<GrpcKvFetcher>();
  return o;
}

// Odd sizes: 3 x 2 x 257 x 64, 2 x 3 x 1 x 128 (one token), 4 x 4 x 1031 x 128 (8 MiB).
void PutChunks(Holder& h) {
  h.Put(kA, RandomChunkKv(3, 2, 257, 64, 100, 1));
  h.Put(kB, RandomChunkKv(2, 3, 1, 128, 357, 2));
  h.Put(kC, RandomChunkKv(4, 4, 1031, 128, 358, 3));
}

class PeerKvTest : public ::testing::Test {
 protected:
  PeerKvTest() : holder_(Socket()), server_(&holder_) {}
  void SetUp() override {
    ASSERT_TRUE(server_.ok());
    PutChunks(holder_);
  }
  static void ExpectNamed(const absl::Status& s, const KvKey& key, const std::string& address) {
    EXPECT_THAT(std::string(s.message()), HasSubstr(KvKeyString(key)));
    EXPECT_THAT(std::string(s.message()), HasSubstr(address));
  }
  // Waits (up to 10 s) until the holder's PeerKv handlers have all returned.
  static bool HandlersDone(const Holder& h) {
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (h.finished() < h.calls() && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return h.finished() == h.calls();
  }

  Holder holder_;
  LoopbackServer server_;
};

TEST_F(PeerKvTest, ChunksArriveBitForBitOverOneLinkPerPair) {
  PeerKvFetcher fetcher(Options(Socket()));
  EXPECT_EQ(fetcher.transport(), "socket");
  for (int round = 0; round < 2; ++round) {
    for (const KvKey& key : {kA, kB, kC}) {
      auto got = fetcher.Fetch(server_.address(), key, 20000);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(SameBits(**got, *holder_.Get(key))) << KvKeyString(key);
    }
  }
  std::optional<uint32_t> crc;  // the holder's, checked against the bytes on the way
  auto checked = fetcher.FetchWithCrc(server_.address(), kC, 20000, &crc);
  ASSERT_TRUE(checked.ok()) << checked.status();
  ASSERT_TRUE(crc.has_value());
  EXPECT_EQ(*crc, KvCrc32c(**checked));
  const PeerKvFetcher::Counts c = fetcher.counts();
  EXPECT_EQ(c.peer_fetches, 7);
  EXPECT_EQ(c.fallback_fetches, 0);
  EXPECT_EQ(c.links_made, 1);  // one pair, one link, six chunks
  EXPECT_EQ(c.links_lost, 0);
  EXPECT_EQ(holder_.calls(), 1);
}

TEST_F(PeerKvTest, TheFallbacksCrcComesThroughToo) {
  Holder plain(nullptr);
  PutChunks(plain);
  LoopbackServer server(&plain);
  ASSERT_TRUE(server.ok());
  PeerKvFetcher fetcher(Options(Socket()));
  std::optional<uint32_t> crc;
  auto got = fetcher.FetchWithCrc(server.address(), kA, 10000, &crc);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(crc.has_value());
  EXPECT_EQ(*crc, KvCrc32c(**got));
  EXPECT_EQ(fetcher.counts().fallback_fetches, 1);
}

TEST_F(PeerKvTest, CountersSayWhichRouteEachChunkTook) {
  Holder plain(nullptr);
  PutChunks(plain);
  LoopbackServer server(&plain);
  ASSERT_TRUE(server.ok());
  PeerKvFetcherOptions o = Options(Socket());
  o.metrics = ops::Metrics::Create();
  PeerKvFetcher fetcher(o);
  ASSERT_TRUE(fetcher.Fetch(server_.address(), kA, 10000).ok());
  ASSERT_TRUE(fetcher.Fetch(server_.address(), kB, 10000).ok());
  ASSERT_TRUE(fetcher.Fetch(server.address(), kA, 10000).ok());
  const std::string text = o.metrics->TextExposition();
  EXPECT_THAT(text, HasSubstr("mesa_worker_kv_link_chunks_total{route=\"link\"} 2"));
  EXPECT_THAT(text, HasSubstr("mesa_worker_kv_link_chunks_total{route=\"fallback\"} 1"));
  EXPECT_THAT(text, HasSubstr("mesa_worker_kv_links_total{event=\"made\"} 1"));
  EXPECT_THAT(text, HasSubstr("mesa_worker_kv_links_total{event=\"refused\"} 1"));
  EXPECT_THAT(text, HasSubstr("mesa_worker_kv_links_total{event=\"lost\"} 0"));
}

TEST_F(PeerKvTest, ConcurrentFetchesFromOneHolderTakeTurnsOnItsLink) {
  PeerKvFetcher fetcher(Options(Socket()));
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const KvKey key = t % 2 ? kA : kC;
      auto got = fetcher.Fetch(server_.address(), key, 30000);
      if (got.ok() && SameBits(**got, *holder_.Get(key))) good.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 4);
  EXPECT_EQ(fetcher.counts().links_made, 1);
}

TEST_F(PeerKvTest, FetchesIntoAPoolAndGivesTheMemoryBack) {
  auto pool = std::make_shared<KvBufferPool>(int64_t{64} << 20);
  PeerKvFetcherOptions o = Options(Socket());
  o.kv_pool = pool;
  PeerKvFetcher fetcher(std::move(o));
  for (int i = 0; i < 3; ++i) {
    auto got = fetcher.Fetch(server_.address(), kC, 20000);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(SameBits(**got, *holder_.Get(kC)));
  }  // each chunk dropped: its vectors back in the pool
  EXPECT_GE(pool->reused(), 4);  // k and v of the 2nd and 3rd fetch
}

TEST_F(PeerKvTest, AChunkNotHeldIsNotFoundAndTheLinkStays) {
  PeerKvFetcher fetcher(Options(Socket()));
  const KvKey missing{"job-7", 2, 9, 1};
  auto got = fetcher.Fetch(server_.address(), missing, 10000);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
  ExpectNamed(got.status(), missing, server_.address());
  auto next = fetcher.Fetch(server_.address(), kA, 10000);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(fetcher.counts().links_made, 1);
  EXPECT_EQ(fetcher.counts().links_lost, 0);
}

TEST_F(PeerKvTest, SeveralChunksMoveAsOneGatherInTheirOrderOverTheSameLink) {
  PeerKvFetcherOptions o = Options(Socket());
  o.max_batch = 8;
  PeerKvFetcher fetcher(o);
  EXPECT_EQ(fetcher.MaxBatch(), 8);
  for (const std::vector<KvKey>& keys : {std::vector<KvKey>{kC, kA, kB}, std::vector<KvKey>{kB, kC}}) {
    auto got = fetcher.FetchMany(server_.address(), keys, 20000);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      EXPECT_TRUE(SameBits(*(*got)[i].kv, *holder_.Get(keys[i]))) << KvKeyString(keys[i]);
      ASSERT_TRUE((*got)[i].crc32c.has_value());
      EXPECT_EQ(*(*got)[i].crc32c, KvCrc32c(*(*got)[i].kv));
    }
  }
  // One missing among them: NOT_FOUND naming it, nothing returned, the link kept.
  const KvKey missing{"job-7", 2, 9, 1};
  auto partial = fetcher.FetchMany(server_.address(), std::vector<KvKey>{kA, missing, kB}, 10000);
  ASSERT_FALSE(partial.ok());
  EXPECT_EQ(partial.status().code(), absl::StatusCode::kNotFound) << partial.status();
  EXPECT_THAT(std::string(partial.status().message()), HasSubstr(KvKeyString(missing)));
  ASSERT_TRUE(fetcher.Fetch(server_.address(), kA, 10000).ok());
  // More keys than one fetch may carry: refused before anything is asked.
  EXPECT_EQ(fetcher.FetchMany(server_.address(), std::vector<KvKey>(65, kA), 10000).status().code(),
            absl::StatusCode::kInvalidArgument);
  const PeerKvFetcher::Counts c = fetcher.counts();
  EXPECT_EQ(c.peer_fetches, 6);
  EXPECT_EQ(c.links_made, 1);
  EXPECT_EQ(c.links_lost, 0);
  EXPECT_EQ(holder_.calls(), 1);
}

TEST_F(PeerKvTest, SeveralChunksFromAHolderWithoutLinksComeOverFetchKv) {
  Holder plain(nullptr);
  PutChunks(plain);
  LoopbackServer server(&plain);
  ASSERT_TRUE(server.ok());
  PeerKvFetcher fetcher(Options(Socket()));
  auto got = fetcher.FetchMany(server.address(), std::vector<KvKey>{kB, kA}, 10000);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 2u);
  EXPECT_TRUE(SameBits(*(*got)[0].kv, *plain.Get(kB)));
  EXPECT_TRUE(SameBits(*(*got)[1].kv, *plain.Get(kA)));
  EXPECT_EQ(fetcher.counts().fallback_fetches, 2);
  EXPECT_EQ(fetcher.counts().peer_fetches, 0);
}

TEST_F(PeerKvTest, AHolderWithoutLinksIsFetchedFromOverFetchKvAndNotAskedAgainSoon) {
  Holder plain(nullptr);  // a worker started with --kv-transport grpc
  PutChunks(plain);
  LoopbackServer server(&plain);
  ASSERT_TRUE(server.ok());
  PeerKvFetcher fetcher(Options(Socket()));
  for (const KvKey& key : {kA, kC}) {
    auto got = fetcher.Fetch(server.address(), key, 20000);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(SameBits(**got, *plain.Get(key)));
  }
  EXPECT_EQ(fetcher.counts().fallback_fetches, 2);
  EXPECT_EQ(fetcher.counts().peer_fetches, 0);
  EXPECT_EQ(plain.calls(), 1);  // refused once, then not asked again for retry_peer_ms
  EXPECT_TRUE(HandlersDone(plain));
}

TEST_F(PeerKvTest, WithoutAFallbackARefusedLinkIsAnErrorThatSaysWhy) {
  Holder plain(nullptr);
  PutChunks(plain);
  LoopbackServer server(&plain);
  ASSERT_TRUE(server.ok());
  PeerKvFetcher fetcher(Options(Socket(), /*fallback=*/false));
  auto got = fetcher.Fetch(server.address(), kA, 10000);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("no socket links"));
  ExpectNamed(got.status(), kA, server.address());
}

// A worker that predates PeerKv answers UNIMPLEMENTED: the fallback serves it.
class OldWorker final : public KvStreamingWorkerService {
 public:
  explicit OldWorker(Lookup lookup) : KvStreamingWorkerService(std::move(lookup)) {}
};

TEST_F(PeerKvTest, AWorkerWithoutPeerKvIsFetchedFromOverFetchKv) {
  OldWorker old([this](const KvKey& key) -> absl::StatusOr<KvStreamingWorkerService::Held> {
    return KvStreamingWorkerService::Held{holder_.Get(key), std::nullopt};
  });
  LoopbackServer server(&old);
  ASSERT_TRUE(server.ok());
  PeerKvFetcher fetcher(Options(Socket()));
  auto got = fetcher.Fetch(server.address(), kB, 10000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(SameBits(**got, *holder_.Get(kB)));
  EXPECT_EQ(fetcher.counts().fallback_fetches, 1);
}

TEST_F(PeerKvTest, ALinkThatCannotBeMadeFallsBack) {
  // This rank's links would listen on an address that is not this host's: NewGroupId fails.
  SocketPeerOptions nowhere;
  nowhere.host = "203.0.113.7";  // TEST-NET-3
  PeerKvFetcher fetcher(Options(Socket(nowhere)));
  auto got = fetcher.Fetch(server_.address(), kA, 10000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(SameBits(**got, *holder_.Get(kA)));
  EXPECT_EQ(fetcher.counts().fallback_fetches, 1);
  EXPECT_EQ(fetcher.counts().links_made, 0);
}

TEST_F(PeerKvTest, AHolderThatGoesAwayMidTransferFailsTheFetchAtOnceAndTheNextMakesANewLink) {
  std::atomic<bool> armed{true};
  SocketPeerOptions o;
  o.on_received = [&](int, int64_t received) {
    if (received > (1 << 20) && armed.exchange(false)) {
      holder_.CancelStreams();  // the holder's end of the pair goes: its link is aborted
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the rest cannot arrive meanwhile
    }
  };
  PeerKvFetcher fetcher(Options(Socket(o)));
  const auto t0 = Clock::now();
  auto got = fetcher.Fetch(server_.address(), kC, 30000);
  ASSERT_FALSE(got.ok());
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(10));  // not at the deadline
  EXPECT_THAT(got.status().code(), AnyOf(absl::StatusCode::kUnavailable, absl::StatusCode::kCancelled))
      << got.status();
  ExpectNamed(got.status(), kC, server_.address());
  EXPECT_EQ(fetcher.counts().links_lost, 1);
  EXPECT_EQ(fetcher.counts().peer_fetches, 0);
  auto again = fetcher.Fetch(server_.address(), kC, 30000);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(SameBits(**again, *holder_.Get(kC)));
  EXPECT_EQ(fetcher.counts().links_made, 2);
}

TEST_F(PeerKvTest, AnIdleLinkTheHolderClosedIsMadeAgainWithoutFailingAFetch) {
  PeerKvFetcher fetcher(Options(Socket()));
  ASSERT_TRUE(fetcher.Fetch(server_.address(), kA, 10000).ok());
  holder_.CancelStreams();
  ASSERT_TRUE(HandlersDone(holder_));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the receiver's reader sees the end
  auto got = fetcher.Fetch(server_.address(), kB, 10000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(fetcher.counts().links_made, 2);
}

TEST_F(PeerKvTest, TheHolderEndsItsSideWhenTheReceiverGoes) {
  {
    PeerKvFetcher fetcher(Options(Socket()));
    ASSERT_TRUE(fetcher.Fetch(server_.address(), kA, 10000).ok());
    EXPECT_EQ(holder_.finished(), 0);  // the pair's stream idles while both live
  }
  EXPECT_TRUE(HandlersDone(holder_));
  EXPECT_EQ(holder_.finished(), 1);
}

TEST_F(PeerKvTest, AStalledHolderFailsTheFetchByItsDeadline) {
  holder_.set_hostile(Hostile::kStallAfterOffer);
  PeerKvFetcher fetcher(Options(Socket()));
  const auto t0 = Clock::now();
  auto got = fetcher.Fetch(server_.address(), kA, 1500);
  const auto took = Clock::now() - t0;
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  ExpectNamed(got.status(), kA, server_.address());
  EXPECT_GE(took, std::chrono::milliseconds(1400));
  EXPECT_LT(took, std::chrono::milliseconds(4000));
  EXPECT_EQ(fetcher.counts().links_lost, 1);
}

TEST_F(PeerKvTest, AnOfferOverTheLimitIsRefusedBeforeAnythingIsAllocated) {
  holder_.set_hostile(Hostile::kHugeOffer);
  PeerKvFetcher fetcher(Options(Socket()));
  auto got = fetcher.Fetch(server_.address(), kA, 10000);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted) << got.status();
  ExpectNamed(got.status(), kA, server_.address());
}

TEST_F(PeerKvTest, AMessageOutOfTurnIsDataLoss) {
  holder_.set_hostile(Hostile::kWrongMessage);
  PeerKvFetcher fetcher(Options(Socket()));
  auto got = fetcher.Fetch(server_.address(), kA, 10000);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("expected an offer"));
}

TEST_F(PeerKvTest, AFlippedByteOnTheLinkIsDataLoss) {
  holder_.set_hostile(Hostile::kCorruptBytes);
  PeerKvFetcher fetcher(Options(Socket()));
  auto got = fetcher.Fetch(server_.address(), kC, 10000);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("CRC32C"));
  ExpectNamed(got.status(), kC, server_.address());
}

TEST_F(PeerKvTest, AGatherManifestThatDiffersFromTheOfferIsRefusedBeforeTheBytes) {
  holder_.set_hostile(Hostile::kOtherManifest);
  PeerKvFetcher fetcher(Options(Socket()));
  auto got = fetcher.Fetch(server_.address(), kA, 10000);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("manifest refused"));
}

// Device-memory links (NCCL's kind): each pair its own staging backend; the holder
// stages its host chunk in, the receiver stages it out and checks the CRC32C itself.
TEST(PeerKvStaging, ChunksCrossADeviceMemoryLinkThroughEachPairsStagingBackend) {
  auto holder_endpoints = std::make_shared<DeviceSocketEndpoints>();
  Holder holder(holder_endpoints);
  PutChunks(holder);
  LoopbackServer server(&holder);
  ASSERT_TRUE(server.ok());
  auto endpoints = std::make_shared<DeviceSocketEndpoints>();
  PeerKvFetcherOptions o;
  o.endpoints = endpoints;
  o.kv_pool = std::make_shared<KvBufferPool>(int64_t{64} << 20);
  PeerKvFetcher fetcher(o);
  EXPECT_EQ(fetcher.transport(), "device-socket");
  for (int round = 0; round < 2; ++round) {
    for (const KvKey& key : {kA, kB, kC}) {
      auto got = fetcher.Fetch(server.address(), key, 20000);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(SameBits(**got, *holder.Get(key))) << KvKeyString(key);
    }
  }
  // Several in one gather, each staged in and out through the pair's backends.
  auto many = fetcher.FetchMany(server.address(), std::vector<KvKey>{kC, kB, kA}, 20000);
  ASSERT_TRUE(many.ok()) << many.status();
  ASSERT_EQ(many->size(), 3u);
  EXPECT_TRUE(SameBits(*(*many)[0].kv, *holder.Get(kC)));
  EXPECT_TRUE(SameBits(*(*many)[1].kv, *holder.Get(kB)));
  EXPECT_TRUE(SameBits(*(*many)[2].kv, *holder.Get(kA)));
  EXPECT_EQ(fetcher.counts().peer_fetches, 9);
  EXPECT_EQ(fetcher.counts().links_made, 1);
  EXPECT_EQ(endpoints->made(), 1);         // one endpoint per pair, reused
  EXPECT_EQ(holder_endpoints->made(), 1);
}

TEST(PeerKvStaging, AFlippedByteBehindTheDeviceLinkIsCaughtByTheReceiversCrcCheck) {
  // A hostile holder over a device link: the gather cannot check a CRC over device
  // memory, so the receiver's check after staging out is all that stands between a
  // flipped byte and the cache.
  Holder holder(std::make_shared<DeviceSocketEndpoints>());
  PutChunks(holder);
  holder.set_hostile(Hostile::kCorruptBytes);
  LoopbackServer server(&holder);
  ASSERT_TRUE(server.ok());
  PeerKvFetcherOptions o;
  o.endpoints = std::make_shared<DeviceSocketEndpoints>();
  PeerKvFetcher fetcher(o);
  auto got = fetcher.Fetch(server.address(), kC, 10000);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("after staging out of opaque"));
}

TEST_F(PeerKvTest, ANonPositiveTimeoutIsInvalidArgument) {
  PeerKvFetcher fetcher(Options(Socket()));
  EXPECT_EQ(fetcher.Fetch(server_.address(), kA, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PeerKvTest, AStoppedHolderIsUnavailable) {
  Holder gone(Socket());
  auto server = std::make_unique<LoopbackServer>(&gone);
  const std::string address = server->address();
  server.reset();
  PeerKvFetcher fetcher(Options(Socket()));
  auto got = fetcher.Fetch(address, kA, 5000);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
}


// --- the bound on live links (--kv-links, worker/link_limit.h) -----------------------------

TEST_F(PeerKvTest, AtItsLinkLimitTheReceiverClosesItsLeastRecentlyUsedLinkAndMakesItAgainWhenNeeded) {
  Holder second(Socket());
  PutChunks(second);
  LoopbackServer second_server(&second);
  ASSERT_TRUE(second_server.ok());
  auto limit = std::make_shared<LinkLimit>(1);
  PeerKvFetcherOptions o = Options(Socket());
  o.link_limit = limit;
  PeerKvFetcher fetcher(o);
  for (int round = 0; round < 2; ++round) {
    for (auto [server, holder] : {std::pair{&server_, &holder_}, std::pair{&second_server, &second}}) {
      auto got = fetcher.Fetch(server->address(), kC, 20000);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(SameBits(**got, *holder->Get(kC)));
      EXPECT_EQ(limit->live(), 1);  // never two links at once
    }
  }
  const PeerKvFetcher::Counts c = fetcher.counts();
  EXPECT_EQ(c.peer_fetches, 4);
  EXPECT_EQ(c.fallback_fetches, 0);
  EXPECT_EQ(c.links_made, 4);  // each fetch made the link the one before it closed
  EXPECT_EQ(limit->closed_for_room(), 3);
  // The holders' ends of the closed links ended with them.
  EXPECT_TRUE(HandlersDone(holder_));
  EXPECT_EQ(holder_.calls(), 2);
  EXPECT_EQ(holder_.finished(), 2);
  EXPECT_EQ(second.finished(), 1);  // its second link still open
}

TEST_F(PeerKvTest, WhenEveryLinkIsInUseAFetchGoesOverFetchKvAndTheNextAsksAgain) {
  auto limit = std::make_shared<LinkLimit>(1);
  auto busy = limit->Take("another pair", nullptr);  // in use, as a transfer in progress
  ASSERT_TRUE(busy.ok());
  PeerKvFetcherOptions o = Options(Socket());
  o.link_limit = limit;
  PeerKvFetcher fetcher(o);
  auto got = fetcher.Fetch(server_.address(), kA, 10000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(SameBits(**got, *holder_.Get(kA)));
  EXPECT_EQ(fetcher.counts().fallback_fetches, 1);
  EXPECT_EQ(fetcher.counts().links_made, 0);
  limit->Release(**busy);
  got = fetcher.Fetch(server_.address(), kB, 10000);  // not banned: room now, a link
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(fetcher.counts().links_made, 1);
  EXPECT_EQ(fetcher.counts().peer_fetches, 1);
}

TEST_F(PeerKvTest, AnEndpointOutOfMemoryIsARefusalNotBusyAndIsNotAskedAgainSoon) {
  // RESOURCE_EXHAUSTED from making the pair's endpoint (a GPU out of memory for its
  // staging backend) is not "every link busy": the holder is not asked again at once.
  class OutOfMemory final : public PeerEndpoints {
   public:
    std::string Name() const override { return "socket"; }
    absl::StatusOr<PeerEndpoint> Make() override {
      return absl::ResourceExhaustedError("out of GPU memory for a staging backend");
    }
  };
  PeerKvFetcher fetcher(Options(std::make_shared<OutOfMemory>()));
  for (const KvKey& key : {kA, kB}) {
    auto got = fetcher.Fetch(server_.address(), key, 10000);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(SameBits(**got, *holder_.Get(key)));
  }
  EXPECT_EQ(fetcher.counts().fallback_fetches, 2);
  EXPECT_EQ(holder_.calls(), 1);  // the second fetch went straight to FetchKv
}

TEST_F(PeerKvTest, AHolderAtItsLinkLimitClosesAnIdleLinkForANewReceiverAndTheOldOneMakesItsAgain) {
  auto limit = std::make_shared<LinkLimit>(1);
  holder_.set_limit(limit);
  PeerKvFetcher first(Options(Socket())), second(Options(Socket()));
  ASSERT_TRUE(first.Fetch(server_.address(), kA, 10000).ok());
  auto got = second.Fetch(server_.address(), kC, 20000);  // the holder closes first's link
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(SameBits(**got, *holder_.Get(kC)));
  got = first.Fetch(server_.address(), kC, 20000);  // made again (closing second's)
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(SameBits(**got, *holder_.Get(kC)));
  EXPECT_EQ(first.counts().links_made, 2);
  EXPECT_EQ(first.counts().fallback_fetches + second.counts().fallback_fetches, 0);
  EXPECT_EQ(limit->closed_for_room(), 2);
  EXPECT_EQ(limit->live(), 1);
}

TEST_F(PeerKvTest, AHolderWhoseLinksAreAllInUseRefusesANewOneAndTheReceiverFallsBackForThatFetchOnly) {
  auto limit = std::make_shared<LinkLimit>(1);
  holder_.set_limit(limit);
  auto busy = limit->Take("another receiver", nullptr);
  ASSERT_TRUE(busy.ok());
  PeerKvFetcher fetcher(Options(Socket()));
  auto got = fetcher.Fetch(server_.address(), kB, 10000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(fetcher.counts().fallback_fetches, 1);
  limit->Release(**busy);
  ASSERT_TRUE(fetcher.Fetch(server_.address(), kB, 10000).ok());
  EXPECT_EQ(fetcher.counts().links_made, 1);
  EXPECT_EQ(holder_.calls(), 2);  // asked again at once: busy is not a refusal
}

TEST_F(PeerKvTest, ReceiversTakingTurnsAtAHolderWithOneLinkNeverFailAFetch) {
  // Each fetch closes the other receiver's idle link at the holder, sometimes just as
  // that receiver asks on it: nothing has moved then, and it makes a new link.
  auto limit = std::make_shared<LinkLimit>(1);
  holder_.set_limit(limit);
  PeerKvFetcher a(Options(Socket())), b(Options(Socket()));
  std::atomic<int> good{0}, bad{0};
  std::vector<std::thread> threads;
  for (PeerKvFetcher* f : {&a, &b}) {
    threads.emplace_back([&, f] {
      for (int i = 0; i < 15; ++i) {
        const KvKey key = i % 2 ? kA : kB;
        auto got = f->Fetch(server_.address(), key, 20000);
        if (got.ok() && SameBits(**got, *holder_.Get(key))) {
          good.fetch_add(1);
        } else {
          bad.fetch_add(1);
          ADD_FAILURE() << (got.ok() ? absl::DataLossError("other bits") : got.status());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 30);
  EXPECT_EQ(bad.load(), 0);
  EXPECT_LE(limit->live(), 1);
}


TEST_F(PeerKvTest, TwoWorkersFetchingFromEachOtherUnderOneSharedLimitEachNeverFailNorHang) {
  // Each worker's one place covers its link as receiver and as holder (as in `mesa
  // worker --kv-links 1`): fetching from the other closes the link the other made to it,
  // and the reverse; a worker whose one link is busy falls back to FetchKv.
  struct Worker {
    std::shared_ptr<LinkLimit> limit = std::make_shared<LinkLimit>(1);
    Holder holder{Socket()};
    std::unique_ptr<LoopbackServer> server;
    std::unique_ptr<PeerKvFetcher> fetcher;
  };
  Worker w[2];
  for (Worker& x : w) {
    PutChunks(x.holder);
    x.holder.set_limit(x.limit);
    x.server = std::make_unique<LoopbackServer>(&x.holder);
    ASSERT_TRUE(x.server->ok());
    PeerKvFetcherOptions o = Options(Socket());
    o.link_limit = x.limit;
    x.fetcher = std::make_unique<PeerKvFetcher>(o);
  }
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Worker& me = w[t % 2];
      Worker& other = w[1 - t % 2];
      for (int i = 0; i < 10; ++i) {
        const KvKey key = (i + t) % 3 == 0 ? kC : ((i + t) % 3 == 1 ? kA : kB);
        auto got = me.fetcher->Fetch(other.server->address(), key, 20000);
        if (got.ok() && SameBits(**got, *other.holder.Get(key))) {
          good.fetch_add(1);
        } else {
          ADD_FAILURE() << (got.ok() ? absl::DataLossError("other bits") : got.status());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 40);
  for (Worker& x : w) EXPECT_LE(x.limit->live(), 1);
  const int64_t linked = w[0].fetcher->counts().peer_fetches + w[1].fetcher->counts().peer_fetches;
  EXPECT_GT(linked, 0);  // not everything went the fallback's way
}

}  // namespace
}  // namespace mesa::worker
