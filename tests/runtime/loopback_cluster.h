// A whole cluster inside a test process, on loopback: a coordinator server over a fresh
// job store and real worker processes (worker::WorkerProcess) registered with it over
// gRPC. Shared by coordinator_rpc_test (plain text, mixed K/V transports) and
// security_test (TLS, client certificates and tokens, through the hooks). Torn down
// workers first (they drain and deregister), then the server, then the core.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "coordinator/coordinator_core.h"
#include "coordinator/coordinator_service.h"
#include "engine/model.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_path.h"
#include "worker/worker_rpc.h"

namespace mesa::testing {

// `rel` under $MESA_SHARED_DIR, or "" when it is not there.
inline std::string SharedPath(const std::string& rel) {
  const char* dir = std::getenv("MESA_SHARED_DIR");
  if (!dir) return "";
  std::string p = std::string(dir) + "/" + rel;
  return std::filesystem::exists(p) ? p : "";
}

// Polls `done` every few milliseconds for up to `timeout_s`.
template <typename F>
bool WaitFor(F done, double timeout_s) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

inline void Deadline(grpc::ClientContext& ctx, double seconds = 30) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
}

struct LoopbackClusterOptions {
  int workers = 1;  // started (and waited for) by the constructor
  coord::Placement placement = coord::Placement::kAuto;
  int64_t max_job_bytes = 1LL << 30;
  // Worker i moves K/V with kv_transports[i % size] (WorkerProcessOptions::kv_transport).
  std::vector<std::string> kv_transports = {"grpc"};
  bool health = false;  // health listeners on the coordinator and every worker
  // Security and the like: the coordinator's server options, and each worker's options
  // given the certificate it was asked to present (StartWorker's `cert`).
  std::function<absl::Status(coord::CoordinatorServerOptions&)> configure_server;
  std::function<absl::Status(worker::WorkerProcessOptions&, const std::string& cert)> configure_worker;
};

class LoopbackCluster {
 public:
  LoopbackCluster(const Model& model, LoopbackClusterOptions options) : model_(model), options_(std::move(options)) {
    static std::atomic<int> n{0};
    coord::CoordinatorOptions co;
    store_ = UniqueTempPath(absl::StrCat("store", n++));
    co.store_dir = store_;
    co.scheduler.placement = options_.placement;
    co.scheduler.heartbeat_timeout_ms = 5000;
    auto core = coord::CoordinatorCore::Create(model, co);
    EXPECT_TRUE(core.ok()) << core.status();
    if (!core.ok()) return;
    core_ = *std::move(core);
    coord::CoordinatorServerOptions so;
    so.listen = "127.0.0.1:0";
    so.max_job_bytes = options_.max_job_bytes;
    if (options_.health) so.health_listen = "127.0.0.1:0";
    if (options_.configure_server) {
      absl::Status s = options_.configure_server(so);
      EXPECT_TRUE(s.ok()) << s;
      if (!s.ok()) return;
    }
    auto server = coord::CoordinatorServer::Start(*core_, so);
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return;
    server_ = *std::move(server);
    for (int i = 0; i < options_.workers; ++i) AddWorker();
  }
  ~LoopbackCluster() {
    workers_.clear();
    server_.reset();
    core_.reset();
  }
  LoopbackCluster(const LoopbackCluster&) = delete;
  LoopbackCluster& operator=(const LoopbackCluster&) = delete;

  bool ok() const { return core_ && server_ && !failed_ && !::testing::Test::HasFatalFailure(); }

  // A worker (named w0, w1, ... in start order) presenting `cert` where the hooks use it.
  // Started, not waited for.
  absl::StatusOr<std::unique_ptr<worker::WorkerProcess>> StartWorker(const std::string& cert = "",
                                                                   int64_t register_timeout_ms = 0) {
    worker::WorkerProcessOptions wo;
    wo.coordinator = address();
    wo.name = absl::StrCat("w", n_started_);
    wo.threads = 1;
    wo.verbose = false;
    wo.register_timeout_ms = register_timeout_ms;
    wo.kv_transport = options_.kv_transports[static_cast<size_t>(n_started_) % options_.kv_transports.size()];
    if (options_.health) wo.health_listen = "127.0.0.1:0";
    ++n_started_;
    if (options_.configure_worker) {
      if (absl::Status s = options_.configure_worker(wo, cert); !s.ok()) return s;
    }
    return worker::WorkerProcess::Start(model_, wo);
  }

  // Starts one more worker and waits until the coordinator counts it.
  worker::WorkerProcess* AddWorker(const std::string& cert = "") {
    const int64_t before = core_->stats().workers;
    auto w = StartWorker(cert);
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) {
      failed_ = true;
      return nullptr;
    }
    workers_.push_back(*std::move(w));
    if (!WaitFor([&] { return core_->stats().workers > before; }, 10)) {
      ADD_FAILURE() << "the worker did not register";
      failed_ = true;
      return nullptr;
    }
    return workers_.back().get();
  }

  const std::string& address() const { return server_->address(); }
  const std::string& store() const { return store_; }
  coord::CoordinatorServer& server() { return *server_; }
  coord::CoordinatorCore& core() { return *core_; }
  std::vector<std::unique_ptr<worker::WorkerProcess>>& workers() { return workers_; }
  int64_t kv_bytes_on_workers() {
    int64_t b = 0;
    for (auto& w : workers_) b += w->core().kv_bytes_in_use();
    return b;
  }

 private:
  const Model& model_;
  LoopbackClusterOptions options_;
  std::string store_;
  int n_started_ = 0;
  std::unique_ptr<coord::CoordinatorCore> core_;
  std::unique_ptr<coord::CoordinatorServer> server_;
  std::vector<std::unique_ptr<worker::WorkerProcess>> workers_;
  bool failed_ = false;  // a worker did not start or register
};

}  // namespace mesa::testing
