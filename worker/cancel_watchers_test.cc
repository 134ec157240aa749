// CancelWatchers (worker/cancel_watchers.h) over a real loopback gRPC server: a handler
// that watches its call sees its flag set soon after the client cancels or the call's
// deadline passes, never for a call that goes on, and one watcher serves many calls at
// once; a handle gone means the call is not looked at again.
#include "worker/cancel_watchers.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "mesa/v1/worker_service.grpc.pb.h"
#include "worker/rpc_testing.h"

namespace mesa::worker {
namespace {

using Clock = std::chrono::steady_clock;

// RunChunk watches its call and waits (up to kept_ms of the request's lease_ms) for the
// flag; it answers kv_bytes = milliseconds until the flag was set, or -1.
class Watching final : public mesa::v1::WorkerService::Service {
 public:
  grpc::Status RunChunk(grpc::ServerContext* ctx, const mesa::v1::RunChunkRequest* req,
                        mesa::v1::RunChunkResponse* resp) override {
    CancelFlag flag{false};
    const auto start = Clock::now();
    {
      const auto watch = watchers.Watch(ctx, &flag);
      peak.store(std::max<int>(peak.load(), static_cast<int>(watchers.watched())));
      while (!flag.load() && Clock::now() - start < std::chrono::milliseconds(req->lease_ms())) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    seen_ms.store(flag.load() ? ms : -1);
    done.fetch_add(1);
    resp->set_kv_bytes(flag.load() ? ms : -1);
    return grpc::Status::OK;
  }

  CancelWatchers watchers;
  std::atomic<int> peak{0}, done{0};
  std::atomic<int64_t> seen_ms{0};
};

class CancelWatchersTest : public ::testing::Test {
 protected:
  CancelWatchersTest() : server_(&service_), stub_(mesa::v1::WorkerService::NewStub(
                                                 grpc::CreateChannel(server_.address(), grpc::InsecureChannelCredentials()))) {}
  bool WaitDone(int n) {
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (service_.done.load() < n && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return service_.done.load() >= n;
  }
  Watching service_;
  LoopbackServer server_;
  std::unique_ptr<mesa::v1::WorkerService::Stub> stub_;
};

TEST_F(CancelWatchersTest, AClientsCancelSetsTheFlagSoon) {
  ASSERT_TRUE(server_.ok());
  grpc::ClientContext ctx;
  mesa::v1::RunChunkRequest req;
  req.set_lease_ms(8000);
  mesa::v1::RunChunkResponse resp;
  std::thread cancel([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ctx.TryCancel();
  });
  EXPECT_EQ(stub_->RunChunk(&ctx, req, &resp).error_code(), grpc::StatusCode::CANCELLED);
  cancel.join();
  ASSERT_TRUE(WaitDone(1));
  EXPECT_GE(service_.seen_ms.load(), 150);
  EXPECT_LT(service_.seen_ms.load(), 3000);  // 200 ms + a poll (20 ms), not the 8 s wait
}

TEST_F(CancelWatchersTest, APassedDeadlineSetsTheFlag) {
  ASSERT_TRUE(server_.ok());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  mesa::v1::RunChunkRequest req;
  req.set_lease_ms(8000);
  mesa::v1::RunChunkResponse resp;
  EXPECT_EQ(stub_->RunChunk(&ctx, req, &resp).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(WaitDone(1));
  EXPECT_GE(service_.seen_ms.load(), 0);
  EXPECT_LT(service_.seen_ms.load(), 3000);
}

TEST_F(CancelWatchersTest, ACallThatGoesOnIsNotFlaggedAndManyShareTheWatcher) {
  ASSERT_TRUE(server_.ok());
  constexpr int kCalls = 12;
  std::vector<std::thread> threads;
  std::atomic<int> flagged{0}, ok{0};
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  for (int i = 0; i < kCalls; ++i) ctxs.push_back(std::make_unique<grpc::ClientContext>());
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext* ctx = ctxs[i].get();
      mesa::v1::RunChunkRequest req;
      req.set_lease_ms(i % 2 == 0 ? 8000 : 600);  // odd calls end by themselves
      mesa::v1::RunChunkResponse resp;
      grpc::Status s = stub_->RunChunk(ctx, req, &resp);
      if (s.ok()) {
        ok.fetch_add(1);
        if (resp.kv_bytes() >= 0) flagged.fetch_add(1);
      }
    });
  }
  // Every call watched at once, then the even ones cancelled.
  const auto until = Clock::now() + std::chrono::seconds(5);
  while (service_.peak.load() < kCalls && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  for (int i = 0; i < kCalls; i += 2) ctxs[i]->TryCancel();
  for (auto& t : threads) t.join();
  ASSERT_TRUE(WaitDone(kCalls));
  EXPECT_EQ(ok.load(), kCalls / 2);  // the calls that went on answered
  EXPECT_EQ(flagged.load(), 0);      // none of them was flagged
  EXPECT_GE(service_.peak.load(), kCalls - 2);  // (all but a straggler or two at once)
  EXPECT_EQ(service_.watchers.watched(), 0u);   // every handle gone
}

}  // namespace
}  // namespace mesa::worker
