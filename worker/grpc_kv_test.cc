// Tests of K/V over gRPC (worker/grpc_kv.h, worker/grpc_status.h) against a real gRPC
// server on loopback: a test-only WorkerService whose FetchKv serves a random chunk
// through ServeKvStream, or a tampered stream (a flipped byte, a missing tail, swapped
// or repeated pieces, a wrong manifest, data before the manifest), or stalls, or says
// NOT_FOUND. The fetcher must return the chunk bit for bit, or an error with the right
// code that names the peer and the key, within its deadline. Then the same through
// KvStreamingWorkerService (the raw, zero-copy sender), read by the fetcher and by a
// generated stub.
#include "worker/grpc_kv.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <limits>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "worker/grpc_status.h"
#include "worker/kv_pool.h"
#include "worker/kv_testing.h"
#include "worker/rpc_testing.h"
#include "worker/task_proto.h"

namespace mesa::worker {
namespace {

using ::testing::HasSubstr;
using mesa::v1::KvMessage;
using Clock = std::chrono::steady_clock;

enum class Mode {
  kServe,          // ServeKvStream
  kCorruptByte,    // one byte of the middle piece flipped
  kTruncate,       // last piece missing, status OK
  kReorder,        // pieces 1 and 2 swapped
  kDuplicate,      // piece 1 sent twice
  kWrongManifest,  // total_bytes off by 4
  kNoManifest,     // data first
  kStall,          // never writes; waits for the client to give up
  kNotFound,       // NOT_FOUND before any message
  kCorruptLane1,   // lanes: lane 1's share has a byte flipped; the other lanes are served
  kStallLane2,     // lanes: lane 2 never writes; the other lanes are served
  kNoLanes,        // a sender that predates lanes: the whole chunk, manifest lanes unset
};

class FakeKvWorker final : public mesa::v1::WorkerService::Service {
 public:
  FakeKvWorker(ChunkKv kv, int64_t piece_bytes) : kv_(std::move(kv)), piece_bytes_(piece_bytes) {}

  void set_mode(Mode mode) { mode_ = mode; }
  const ChunkKv& kv() const { return kv_; }
  KvKey last_key() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_key_;
  }
  // The status of the next handler to finish after this call, or nullopt on timeout.
  std::optional<grpc::Status> WaitForHandler(int calls_before, std::chrono::milliseconds limit) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!done_cv_.wait_for(lock, limit, [&] { return finished_ > calls_before; })) return {};
    return last_status_;
  }
  int finished() {
    std::lock_guard<std::mutex> lock(mu_);
    return finished_;
  }
  std::vector<std::pair<int, int>> lanes_asked() {  // (lane, lanes) of every call so far
    std::lock_guard<std::mutex> lock(mu_);
    return lanes_asked_;
  }

  grpc::Status FetchKv(grpc::ServerContext* ctx, const mesa::v1::FetchKvRequest* request,
                       grpc::ServerWriter<KvMessage>* writer) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_key_ = FromProto(request->key());
      lanes_asked_.emplace_back(request->lane(), request->lanes());
    }
    const grpc::Status status = Serve(ctx, request, writer);
    std::lock_guard<std::mutex> lock(mu_);
    last_status_ = status;
    ++finished_;
    done_cv_.notify_all();
    return status;
  }

 private:
  grpc::Status Serve(grpc::ServerContext* ctx, const mesa::v1::FetchKvRequest* request,
                     grpc::ServerWriter<KvMessage>* writer) {
    switch (mode_.load()) {
      case Mode::kServe:
        return ServeKvStream(kv_, ctx, writer, piece_bytes_, std::nullopt, LaneAsk(*request));
      case Mode::kNoLanes: {
        KvMessage msg;
        ToProto(MakeManifest(kv_), msg.mutable_manifest());
        msg.mutable_manifest()->clear_lanes();
        if (!writer->Write(msg)) return grpc::Status::CANCELLED;
        for (const KvPiece& p : SplitPieces(kv_, piece_bytes_)) {
          msg.mutable_data()->set_offset(p.offset);
          msg.mutable_data()->set_data(p.bytes.data(), p.bytes.size());
          if (!writer->Write(msg)) return grpc::Status::CANCELLED;
        }
        return grpc::Status::OK;
      }
      case Mode::kCorruptLane1:
      case Mode::kStallLane2:
        if (request->lane() == 2 && mode_ == Mode::kStallLane2) {
          while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
          return grpc::Status(grpc::StatusCode::CANCELLED, "stalled until cancelled");
        }
        if (request->lane() == 1 && mode_ == Mode::kCorruptLane1) return ServeCorruptLane(*request, writer);
        return ServeKvStream(kv_, ctx, writer, piece_bytes_, std::nullopt, LaneAsk(*request));
      case Mode::kNotFound:
        return grpc::Status(grpc::StatusCode::NOT_FOUND,
                            "no K/V held for " + KvKeyString(FromProto(request->key())));
      case Mode::kStall:
        while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return grpc::Status(grpc::StatusCode::CANCELLED, "stalled until cancelled");
      case Mode::kCorruptByte:
      case Mode::kTruncate:
      case Mode::kReorder:
      case Mode::kDuplicate:
      case Mode::kWrongManifest:
      case Mode::kNoManifest:
        return ServeTampered(writer);
    }
    return grpc::Status(grpc::StatusCode::INTERNAL, "unknown mode");
  }

  grpc::Status ServeTampered(grpc::ServerWriter<KvMessage>* writer) {
    KvManifestInfo manifest = MakeManifest(kv_);
    std::vector<std::pair<int64_t, std::string>> pieces;
    for (const KvPiece& p : SplitPieces(kv_, piece_bytes_)) {
      pieces.emplace_back(p.offset, std::string(p.bytes.begin(), p.bytes.end()));
    }
    const Mode mode = mode_.load();
    if (mode == Mode::kCorruptByte) pieces[pieces.size() / 2].second[77] ^= 0x01;
    if (mode == Mode::kTruncate) pieces.pop_back();
    if (mode == Mode::kReorder) std::swap(pieces[1], pieces[2]);
    if (mode == Mode::kDuplicate) pieces.insert(pieces.begin() + 2, pieces[1]);
    if (mode == Mode::kWrongManifest) manifest.total_bytes += 4;

    KvMessage msg;
    if (mode != Mode::kNoManifest) {
      ToProto(manifest, msg.mutable_manifest());
      if (!writer->Write(msg)) return grpc::Status::CANCELLED;
    }
    for (auto& [offset, bytes] : pieces) {
      msg.mutable_data()->set_offset(offset);
      msg.mutable_data()->set_data(bytes);
      if (!writer->Write(msg)) return grpc::Status::CANCELLED;
    }
    return grpc::Status::OK;
  }

  grpc::Status ServeCorruptLane(const mesa::v1::FetchKvRequest& request,
                                grpc::ServerWriter<KvMessage>* writer) {
    KvManifestInfo manifest = MakeManifest(kv_);
    manifest.lanes = request.lanes();
    KvMessage msg;
    ToProto(manifest, msg.mutable_manifest());
    if (!writer->Write(msg)) return grpc::Status::CANCELLED;
    bool flipped = false;
    for (const KvPiece& p : SplitPieces(kv_, piece_bytes_,
                                        KvLaneRange(manifest.total_bytes, request.lanes(), request.lane()))) {
      std::string bytes(p.bytes.begin(), p.bytes.end());
      if (!flipped) bytes[bytes.size() / 2] ^= 0x40, flipped = true;
      msg.mutable_data()->set_offset(p.offset);
      msg.mutable_data()->set_data(bytes);
      if (!writer->Write(msg)) return grpc::Status::CANCELLED;
    }
    return grpc::Status::OK;
  }

  const ChunkKv kv_;
  const int64_t piece_bytes_;
  std::atomic<Mode> mode_{Mode::kServe};
  std::vector<std::pair<int, int>> lanes_asked_;  // guarded by mu_
  std::mutex mu_;
  std::condition_variable done_cv_;
  KvKey last_key_;
  grpc::Status last_status_;
  int finished_ = 0;
};

const KvKey kKey{"job-42", 7, 3, 1};

class GrpcKvTest : public ::testing::Test {
 protected:
  // 4 layers x 4 heads x 257 tokens x 128 dims x 2 x 4 bytes = 4.2 MB: 5 pieces of 1 MiB
  // for k (the last one short), and the same for v.
  GrpcKvTest() : worker_(RandomChunkKv(4, 4, 257, 128, 1000, 11), kKvPieceBytes), server_(&worker_) {}
  void SetUp() override { ASSERT_TRUE(server_.ok()); }

  absl::StatusOr<std::shared_ptr<const ChunkKv>> FetchIn(Mode mode, int64_t timeout_ms = 10000) {
    worker_.set_mode(mode);
    return fetcher_.Fetch(server_.address(), kKey, timeout_ms);
  }
  // The error names the call, the key and the peer.
  void ExpectNamed(const absl::Status& status) {
    EXPECT_THAT(std::string(status.message()), HasSubstr("job-42/7/3/1"));
    EXPECT_THAT(std::string(status.message()), HasSubstr(server_.address()));
  }

  FakeKvWorker worker_;
  LoopbackServer server_;
  GrpcKvFetcher fetcher_;
};

TEST_F(GrpcKvTest, FetchReturnsTheChunkBitForBit) {
  absl::StatusOr<std::shared_ptr<const ChunkKv>> kv = FetchIn(Mode::kServe);
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_TRUE(SameBits(**kv, worker_.kv()));
  EXPECT_EQ(worker_.last_key(), kKey);
}

TEST_F(GrpcKvTest, ConcurrentFetchesShareTheFetcher) {
  worker_.set_mode(Mode::kServe);
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 3; ++i) {
        auto kv = fetcher_.Fetch(server_.address(), kKey, 20000);
        if (kv.ok() && SameBits(**kv, worker_.kv())) ++good;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 12);
}

TEST_F(GrpcKvTest, CorruptByteIsDataLoss) {
  const auto kv = FetchIn(Mode::kCorruptByte);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kDataLoss) << kv.status();
  EXPECT_THAT(std::string(kv.status().message()), HasSubstr("CRC32C"));
  ExpectNamed(kv.status());
}

// A worker's fetcher with a pool: the second fetch receives into the memory of the
// first once that chunk is let go, bit for bit and CRC-checked as ever; a fetch that
// fails the check gives the memory it took back; memory still referenced is never
// handed out.
TEST_F(GrpcKvTest, FetchesThroughAPoolReuseMemoryAndStillCheckTheCrc) {
  auto pool = std::make_shared<KvBufferPool>(int64_t{64} << 20);
  GrpcKvFetcherOptions options;
  options.kv_pool = pool;
  GrpcKvFetcher fetcher(options);
  worker_.set_mode(Mode::kServe);
  const std::string address = server_.address();

  auto first = fetcher.Fetch(address, kKey, 10000);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(SameBits(**first, worker_.kv()));
  const std::set<const float*> first_memory = {(*first)->k.data(), (*first)->v.data()};
  EXPECT_EQ(pool->allocated(), 2);
  EXPECT_EQ(pool->held_buffers(), 0);

  {  // While the first chunk is held, a fetch gets other memory.
    auto other = fetcher.Fetch(address, kKey, 10000);
    ASSERT_TRUE(other.ok()) << other.status();
    EXPECT_EQ(first_memory.count((*other)->k.data()) + first_memory.count((*other)->v.data()), 0u);
    EXPECT_TRUE(SameBits(**first, worker_.kv()));
  }
  first->reset();  // the last reference: k and v go back
  EXPECT_EQ(pool->held_buffers(), 4);

  worker_.set_mode(Mode::kCorruptByte);
  const int64_t reused_before = pool->reused();
  auto bad = fetcher.Fetch(address, kKey, 10000);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("CRC32C"));
  EXPECT_EQ(pool->reused(), reused_before + 2);  // received into pooled memory ...
  EXPECT_EQ(pool->held_buffers(), 4);            // ... and gave it back

  worker_.set_mode(Mode::kServe);
  auto again = fetcher.Fetch(address, kKey, 10000);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(SameBits(**again, worker_.kv()));  // old contents fully overwritten
  EXPECT_EQ((std::set<const float*>{(*again)->k.data(), (*again)->v.data()}), first_memory);
  EXPECT_EQ(pool->reused(), reused_before + 4);
  EXPECT_EQ(pool->allocated(), 4);
  EXPECT_EQ(pool->held_buffers(), 2);
}

TEST_F(GrpcKvTest, TruncatedStreamIsDataLoss) {
  const auto kv = FetchIn(Mode::kTruncate);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kDataLoss) << kv.status();
  EXPECT_THAT(std::string(kv.status().message()), HasSubstr("truncated"));
  ExpectNamed(kv.status());
}

TEST_F(GrpcKvTest, ReorderedPiecesAreDataLoss) {
  const auto kv = FetchIn(Mode::kReorder);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kDataLoss) << kv.status();
  EXPECT_THAT(std::string(kv.status().message()), HasSubstr("out of order"));
  ExpectNamed(kv.status());
}

TEST_F(GrpcKvTest, DuplicatedPieceIsDataLoss) {
  const auto kv = FetchIn(Mode::kDuplicate);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kDataLoss) << kv.status();
  ExpectNamed(kv.status());
}

TEST_F(GrpcKvTest, WrongManifestIsInvalidArgument) {
  const auto kv = FetchIn(Mode::kWrongManifest);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kInvalidArgument) << kv.status();
  EXPECT_THAT(std::string(kv.status().message()), HasSubstr("total_bytes"));
  ExpectNamed(kv.status());
}

TEST_F(GrpcKvTest, DataBeforeManifestIsDataLoss) {
  const auto kv = FetchIn(Mode::kNoManifest);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kDataLoss) << kv.status();
  EXPECT_THAT(std::string(kv.status().message()), HasSubstr("before the manifest"));
}

TEST_F(GrpcKvTest, NotFoundKeepsItsCodeAndMessage) {
  const auto kv = FetchIn(Mode::kNotFound);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kNotFound) << kv.status();
  EXPECT_THAT(std::string(kv.status().message()), HasSubstr("no K/V held for job-42/7/3/1"));
  ExpectNamed(kv.status());
}

TEST_F(GrpcKvTest, StalledServerFailsByTheDeadline) {
  const int before = worker_.finished();
  const auto start = Clock::now();
  const auto kv = FetchIn(Mode::kStall, 300);
  const auto elapsed = Clock::now() - start;
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kDeadlineExceeded) << kv.status();
  ExpectNamed(kv.status());
  EXPECT_GE(elapsed, std::chrono::milliseconds(290));
  EXPECT_LT(elapsed, std::chrono::milliseconds(300 + 1500));
  // The server sees the cancellation and its handler returns.
  EXPECT_TRUE(worker_.WaitForHandler(before, std::chrono::seconds(5)).has_value());
}

TEST_F(GrpcKvTest, ManifestOverTheLimitIsRefusedBeforeTheBytes) {
  GrpcKvFetcherOptions options;
  options.max_kv_bytes = static_cast<int64_t>(worker_.kv().bytes()) - 1;
  GrpcKvFetcher small(options);
  worker_.set_mode(Mode::kServe);
  const auto kv = small.Fetch(server_.address(), kKey, 10000);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kResourceExhausted) << kv.status();
}

TEST_F(GrpcKvTest, MessagesOverTheReceiveLimitAreRefused) {
  GrpcKvFetcherOptions options;
  options.max_receive_message_bytes = 512 << 10;  // the server sends 1 MiB pieces
  GrpcKvFetcher strict(options);
  worker_.set_mode(Mode::kServe);
  const auto kv = strict.Fetch(server_.address(), kKey, 10000);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kResourceExhausted) << kv.status();
}

TEST_F(GrpcKvTest, NonPositiveTimeoutIsInvalidArgument) {
  EXPECT_EQ(FetchIn(Mode::kServe, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GrpcKvTest, StoppedServerIsUnavailable) {
  const std::string address = server_.address();
  server_.Stop();
  const auto start = Clock::now();
  const auto kv = fetcher_.Fetch(address, kKey, 5000);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kUnavailable) << kv.status();
  EXPECT_THAT(std::string(kv.status().message()), HasSubstr(address));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5)) << "fails fast, not at the deadline";
}

// A client that cancels after the manifest: ServeKvStream stops with CANCELLED rather
// than writing the rest (24 MiB in 64 KiB pieces cannot all fit in flow-control windows).
// ---- Lanes: one chunk over several streams at once ----

class GrpcKvLanesTest : public ::testing::Test {
 protected:
  // 4 x 4 x 1025 x 128 x 2 x 4 bytes = 16.8 MB: 4 lanes of ~4.2 MB (KvLanesFor).
  GrpcKvLanesTest() : worker_(RandomChunkKv(4, 4, 1025, 128, 0, 12), kKvPieceBytes), server_(&worker_) {}
  void SetUp() override { ASSERT_TRUE(server_.ok()); }
  static GrpcKvFetcherOptions FourLanes() {
    GrpcKvFetcherOptions options;
    options.lanes = 4;
    return options;
  }
  absl::StatusOr<std::shared_ptr<const ChunkKv>> FetchIn(Mode mode, GrpcKvFetcherOptions options = FourLanes(),
                                                         int64_t timeout_ms = 10000) {
    worker_.set_mode(mode);
    GrpcKvFetcher fetcher(std::move(options));
    return fetcher.Fetch(server_.address(), kKey, timeout_ms);
  }
  FakeKvWorker worker_;
  LoopbackServer server_;
};

TEST_F(GrpcKvLanesTest, FourLanesBringTheChunkBitForBit) {
  for (bool pooled : {false, true}) {
    GrpcKvFetcherOptions options = FourLanes();
    if (pooled) options.kv_pool = std::make_shared<KvBufferPool>(int64_t{64} << 20);
    const int calls = worker_.finished();
    absl::StatusOr<std::shared_ptr<const ChunkKv>> kv = FetchIn(Mode::kServe, options);
    ASSERT_TRUE(kv.ok()) << kv.status();
    EXPECT_TRUE(SameBits(**kv, worker_.kv()));
    EXPECT_EQ(worker_.finished() - calls, 4) << "one call per lane";
  }
  const std::vector<std::pair<int, int>> asked = worker_.lanes_asked();
  ASSERT_EQ(asked.size(), 8u);
  EXPECT_EQ(asked[0], std::make_pair(0, 4));  // lane 0 asks for up to 4
  std::set<std::pair<int, int>> rest(asked.begin() + 1, asked.begin() + 4);
  EXPECT_EQ(rest, (std::set<std::pair<int, int>>{{1, 4}, {2, 4}, {3, 4}}));
}

TEST_F(GrpcKvLanesTest, TheSenderChoosesFewerLanesForSmallChunksAndOneLaneStaysOne) {
  GrpcKvFetcherOptions one;
  one.lanes = 1;
  absl::StatusOr<std::shared_ptr<const ChunkKv>> kv = FetchIn(Mode::kServe, one);
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_TRUE(SameBits(**kv, worker_.kv()));
  EXPECT_EQ(worker_.lanes_asked(), (std::vector<std::pair<int, int>>{{0, 1}}));
  // The 4.2 MB chunk of GrpcKvTest: one lane whatever is asked.
  FakeKvWorker small(RandomChunkKv(4, 4, 257, 128, 0, 13), kKvPieceBytes);
  LoopbackServer server(&small);
  ASSERT_TRUE(server.ok());
  GrpcKvFetcherOptions sixteen;
  sixteen.lanes = 16;
  kv = GrpcKvFetcher(sixteen).Fetch(server.address(), kKey, 10000);
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_TRUE(SameBits(**kv, small.kv()));
  EXPECT_EQ(small.lanes_asked(), (std::vector<std::pair<int, int>>{{0, 16}}));
}

TEST_F(GrpcKvLanesTest, ASenderThatPredatesLanesIsReadAsOneLane) {
  absl::StatusOr<std::shared_ptr<const ChunkKv>> kv = FetchIn(Mode::kNoLanes);
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_TRUE(SameBits(**kv, worker_.kv()));
  EXPECT_EQ(worker_.lanes_asked().size(), 1u);
}

TEST_F(GrpcKvLanesTest, ACorruptLaneIsDataLossNamingTheLane) {
  const auto kv = FetchIn(Mode::kCorruptLane1);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kDataLoss) << kv.status();
  EXPECT_THAT(std::string(kv.status().message()), HasSubstr("CRC32C"));
  EXPECT_THAT(std::string(kv.status().message()), HasSubstr(server_.address()));
}

// A lane that stalls: the fetch ends by its deadline, every lane's call ends (the
// others' threads are joined, nothing left running), the error is the deadline's.
TEST_F(GrpcKvLanesTest, AStalledLaneFailsTheFetchByTheDeadline) {
  const auto start = Clock::now();
  const auto kv = FetchIn(Mode::kStallLane2, FourLanes(), 600);
  const auto took = Clock::now() - start;
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kDeadlineExceeded) << kv.status();
  EXPECT_THAT(std::string(kv.status().message()), HasSubstr("lane 2 of 4"));
  EXPECT_LT(took, std::chrono::seconds(5));
  EXPECT_TRUE(worker_.WaitForHandler(3, std::chrono::seconds(5)).has_value()) << "the stalled handler never ended";
}

// What a client that asks for a lane the sender cannot have gets.
TEST_F(GrpcKvLanesTest, ALaneOutOfRangeIsInvalidArgument) {
  auto channel = grpc::CreateChannel(server_.address(), grpc::InsecureChannelCredentials());
  auto stub = mesa::v1::WorkerService::NewStub(channel);
  for (auto [lane, lanes] : {std::pair{3, 3}, std::pair{1, kMaxKvLanes + 1}, std::pair{-1, 4}, std::pair{2, 0}}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    mesa::v1::FetchKvRequest request;
    ToProto(kKey, request.mutable_key());
    request.set_lane(lane);
    request.set_lanes(lanes);
    auto reader = stub->FetchKv(&ctx, request);
    KvMessage msg;
    EXPECT_FALSE(reader->Read(&msg)) << "lane " << lane << " of " << lanes;
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "lane " << lane << " of " << lanes;
  }
}

TEST(ServeKvStream, StopsWhenTheClientCancels) {
  FakeKvWorker worker(RandomChunkKv(4, 8, 768, 128, 0, 12), 64 << 10);
  LoopbackServer server(&worker);
  ASSERT_TRUE(server.ok());
  auto stub = mesa::v1::WorkerService::NewStub(
      grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  mesa::v1::FetchKvRequest request;
  ToProto(kKey, request.mutable_key());
  auto reader = stub->FetchKv(&ctx, request);
  KvMessage msg;
  ASSERT_TRUE(reader->Read(&msg));
  EXPECT_TRUE(msg.has_manifest());
  ctx.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const std::optional<grpc::Status> served = worker.WaitForHandler(0, std::chrono::seconds(5));
  ASSERT_TRUE(served.has_value()) << "the handler did not return";
  EXPECT_EQ(served->error_code(), grpc::StatusCode::CANCELLED) << served->error_message();
}

TEST(ServeKvStream, RefusesAChunkThatDoesNotMatchItsShape) {
  FakeKvWorker worker([] {
    ChunkKv kv = RandomChunkKv(1, 2, 3, 4, 0, 13);
    kv.v.pop_back();
    return kv;
  }(), kKvPieceBytes);
  LoopbackServer server(&worker);
  ASSERT_TRUE(server.ok());
  GrpcKvFetcher fetcher;
  const auto kv = fetcher.Fetch(server.address(), kKey, 10000);
  EXPECT_EQ(kv.status().code(), absl::StatusCode::kInternal) << kv.status();
}

// KvStreamingWorkerService: FetchKv served raw (pieces sent from the chunk's memory, the
// CRC32C the holder stored), the same KvMessage stream on the wire.
class RawKvWorker {
 public:
  explicit RawKvWorker(KvStreamingWorkerService::Lookup lookup)
      : service_(std::move(lookup), 256 << 10), server_(&service_) {}
  bool ok() const { return server_.ok(); }
  std::string address() const { return server_.address(); }

 private:
  KvStreamingWorkerService service_;
  LoopbackServer server_;
};

TEST(KvStreamingWorkerService, FetcherGetsTheChunkBitForBitAndTheChunkIsLetGo) {
  auto kv = std::make_shared<const ChunkKv>(RandomChunkKv(4, 4, 257, 128, 1000, 21));
  const ChunkKv copy = *kv;
  std::weak_ptr<const ChunkKv> watch = kv;
  std::shared_ptr<const ChunkKv> held = std::move(kv);
  RawKvWorker worker([&](const KvKey& key) -> absl::StatusOr<KvStreamingWorkerService::Held> {
    EXPECT_EQ(key, kKey);
    // Handed over: from here only the stream (and the slices it sends) hold the chunk.
    return KvStreamingWorkerService::Held{std::exchange(held, nullptr), KvCrc32c(copy)};
  });
  ASSERT_TRUE(worker.ok());
  GrpcKvFetcher fetcher;
  const auto got = fetcher.Fetch(worker.address(), kKey, 10000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(SameBits(**got, copy));
  const auto start = Clock::now();
  while (!watch.expired() && Clock::now() - start < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(watch.expired()) << "the sent slices still hold the chunk";
}

TEST(KvStreamingWorkerService, AStoredCrcThatDoesNotMatchIsDataLoss) {
  auto kv = std::make_shared<const ChunkKv>(RandomChunkKv(2, 4, 100, 64, 0, 22));
  RawKvWorker worker([&](const KvKey&) -> absl::StatusOr<KvStreamingWorkerService::Held> {
    return KvStreamingWorkerService::Held{kv, KvCrc32c(*kv) ^ 1};
  });
  ASSERT_TRUE(worker.ok());
  GrpcKvFetcher fetcher;
  const auto got = fetcher.Fetch(worker.address(), kKey, 10000);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("CRC32C"));
}

TEST(KvStreamingWorkerService, GeneratedStubReadsTheSameMessages) {
  auto kv = std::make_shared<const ChunkKv>(RandomChunkKv(4, 4, 257, 128, 1000, 23));
  RawKvWorker worker([&](const KvKey&) -> absl::StatusOr<KvStreamingWorkerService::Held> {
    return KvStreamingWorkerService::Held{kv, std::nullopt};  // CRC computed per fetch
  });
  ASSERT_TRUE(worker.ok());
  auto stub = mesa::v1::WorkerService::NewStub(
      grpc::CreateChannel(worker.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  mesa::v1::FetchKvRequest request;
  ToProto(kKey, request.mutable_key());
  auto reader = stub->FetchKv(&ctx, request);
  KvMessage msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_TRUE(msg.has_manifest());
  const KvManifestInfo manifest = FromProto(msg.manifest());
  EXPECT_EQ(manifest.crc32c, MakeManifest(*kv).crc32c);
  absl::StatusOr<KvAssembler> a = KvAssembler::Start(manifest, manifest.total_bytes);
  ASSERT_TRUE(a.ok()) << a.status();
  const std::vector<KvPiece> pieces = SplitPieces(*kv, 256 << 10);
  size_t n = 0;
  while (reader->Read(&msg)) {
    ASSERT_TRUE(msg.has_data());
    ASSERT_LT(n, pieces.size());
    EXPECT_EQ(msg.data().offset(), pieces[n].offset);
    EXPECT_EQ(msg.data().data().size(), pieces[n].bytes.size());
    const std::string& bytes = msg.data().data();
    ASSERT_TRUE(a->Add(msg.data().offset(),
                       absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()),
                                                 bytes.size()))
                    .ok());
    ++n;
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(n, pieces.size());
  absl::StatusOr<ChunkKv> out = a->Finish();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(SameBits(*out, *kv));
}

TEST(KvStreamingWorkerService, LookupErrorsKeepTheirCodeAndAKeyIsRequired) {
  RawKvWorker worker([](const KvKey& key) -> absl::StatusOr<KvStreamingWorkerService::Held> {
    return absl::NotFoundError("no K/V held for " + KvKeyString(key));
  });
  ASSERT_TRUE(worker.ok());
  GrpcKvFetcher fetcher;
  const auto got = fetcher.Fetch(worker.address(), kKey, 10000);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("no K/V held for job-42/7/3/1"));
  const auto keyless = fetcher.Fetch(worker.address(), KvKey{}, 10000);
  EXPECT_EQ(keyless.status().code(), absl::StatusCode::kInvalidArgument) << keyless.status();
}

// Pieces not in protobuf's usual layout (an unknown field after KvData.data) are still
// pieces: the fetcher parses them with protobuf rather than in place.
class UnusualLayoutWorker final : public mesa::v1::WorkerService::Service {
 public:
  explicit UnusualLayoutWorker(ChunkKv kv) : kv_(std::move(kv)) {}
  const ChunkKv& kv() const { return kv_; }
  grpc::Status FetchKv(grpc::ServerContext*, const mesa::v1::FetchKvRequest*,
                       grpc::ServerWriter<KvMessage>* writer) override {
    KvMessage msg;
    ToProto(MakeManifest(kv_), msg.mutable_manifest());
    if (!writer->Write(msg)) return grpc::Status::CANCELLED;
    for (const KvPiece& p : SplitPieces(kv_, 300000)) {
      KvMessage piece;
      mesa::v1::KvData* data = piece.mutable_data();
      data->set_offset(p.offset);
      data->set_data(p.bytes.data(), p.bytes.size());
      data->GetReflection()->MutableUnknownFields(data)->AddVarint(15, 7);
      if (!writer->Write(piece)) return grpc::Status::CANCELLED;
    }
    return grpc::Status::OK;
  }

 private:
  const ChunkKv kv_;
};

TEST(GrpcKvFetcher, ReadsPiecesInAnotherLayout) {
  UnusualLayoutWorker worker(RandomChunkKv(2, 4, 300, 64, 0, 24));
  LoopbackServer server(&worker);
  ASSERT_TRUE(server.ok());
  GrpcKvFetcher fetcher;
  const auto got = fetcher.Fetch(server.address(), kKey, 10000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(SameBits(**got, worker.kv()));
}

TEST(GrpcKvProto, KeyAndManifestRoundTrip) {
  mesa::v1::KvKey key_proto;
  ToProto(kKey, &key_proto);
  EXPECT_EQ(FromProto(key_proto), kKey);
  const KvManifestInfo m = MakeManifest(RandomChunkKv(2, 3, 4, 5, 6, 14));
  mesa::v1::KvManifest manifest_proto;
  ToProto(m, &manifest_proto);
  const KvManifestInfo back = FromProto(manifest_proto);
  EXPECT_EQ(back.n_layer, m.n_layer);
  EXPECT_EQ(back.n_head_kv, m.n_head_kv);
  EXPECT_EQ(back.head_dim, m.head_dim);
  EXPECT_EQ(back.range_begin, m.range_begin);
  EXPECT_EQ(back.range_end, m.range_end);
  EXPECT_EQ(back.dtype, m.dtype);
  EXPECT_EQ(back.total_bytes, m.total_bytes);
  EXPECT_EQ(back.crc32c, m.crc32c);
}

TEST(GrpcStatus, EveryCodeAndMessageSurvivesBothWays) {
  for (int code = 0; code <= 16; ++code) {
    const absl::Status a(static_cast<absl::StatusCode>(code), code == 0 ? "" : "why it failed");
    const grpc::Status g = ToGrpcStatus(a);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(g.error_message(), std::string(a.message()));
    EXPECT_EQ(FromGrpcStatus(g), a);
  }
}

TEST(GrpcStatus, NonCanonicalCodesBecomeUnknown) {
  const grpc::Status g(static_cast<grpc::StatusCode>(99), "odd");
  EXPECT_EQ(FromGrpcStatus(g).code(), absl::StatusCode::kUnknown);
  EXPECT_THAT(std::string(FromGrpcStatus(g).message()), HasSubstr("odd"));
  const absl::Status a(static_cast<absl::StatusCode>(77), "odd");
  EXPECT_EQ(ToGrpcStatus(a).error_code(), grpc::StatusCode::UNKNOWN);
}

TEST(GrpcStatus, ContextGoesInFront) {
  const absl::Status s =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "connect failed"), "FetchKv x");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "FetchKv x: connect failed");
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK, "FetchKv x").ok());
}

// Found by fuzz/rpc_fuzzer.cc: "temperature >= 0" and "0 <= top_p <= 1" let NaN through
// (every comparison with NaN is false), and an infinite temperature too.
TEST(TaskProto, NonFiniteSamplingIsInvalidArgument) {
  v1::RunFinalRequest req;
  req.mutable_key()->set_job_id("j");
  req.mutable_key()->set_chunk(-1);
  req.add_prompt(1);
  req.set_max_new_tokens(4);
  ASSERT_TRUE(FromProto(req).ok());
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (auto [temperature, top_p] : {std::pair{nan, 0.5f}, {inf, 0.5f}, {0.5f, nan}, {-1.0f, 0.5f}, {0.5f, 1.5f}}) {
    req.mutable_sampling()->set_temperature(temperature);
    req.mutable_sampling()->set_top_p(top_p);
    EXPECT_EQ(FromProto(req).status().code(), absl::StatusCode::kInvalidArgument) << temperature << " " << top_p;
  }
  req.mutable_sampling()->set_temperature(0.7f);
  req.mutable_sampling()->set_top_p(1.0f);
  EXPECT_TRUE(FromProto(req).ok());
}

}  // namespace
}  // namespace mesa::worker
