// The worker process around a WorkerCore: the gRPC WorkerService adapter (RunChunk,
// RunFinal, FetchKv, ReleaseKv; grpc.health.v1 and reflection on the same server), and
// the agent that registers with the coordinator, beats, re-registers after a
// coordinator restart (dropping K/V the new coordinator cannot know of), expires K/V
// leases, and drains on request (finishes the task at hand, takes no new one,
// deregisters). `mesa worker` is a thin command over WorkerProcess.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "rpc/security.h"
#include "worker/peer_kv.h"
#include "worker/worker_core.h"

namespace grpc {
class Server;
}
namespace mesa::rpc {
class HealthServer;
}

namespace mesa::worker {

struct WorkerProcessOptions {
  std::string coordinator;      // HOST:PORT
  std::string listen;           // HOST:PORT; "" = an ephemeral port on the address that reaches the coordinator
  std::string name;             // "" = the host name
  int threads = 0;              // 0 = all hardware threads
  std::string device = "cpu";   // where the model runs (kernels/backend.h MakeBackend)
  std::string kv_type = "auto"; // the K/V cache element type (MakeBackend)
  int64_t kv_memory_bytes = 0;  // 0 = no limit
  int kv_lanes = 2;             // streams per K/V fetch at most (GrpcKvFetcherOptions::lanes)
  // How chunk K/V moves between workers: "grpc" (FetchKv streams), "socket" (a TCP peer
  // link per pair, worker/peer_kv.h) or "nccl" (an NCCL link per pair between GPU
  // workers, --device cuda only, chunks staged through a transfer backend per pair); a
  // holder without a link of the kind is fetched from over FetchKv. socket and nccl are
  // unencrypted: refused with TLS.
  // (PeerEndpoints: worker/peer_kv.h.)
  std::string kv_transport = "grpc";
  // A final's remote chunks fetched ahead at most (WorkerCoreOptions::final_prefetch_bytes).
  int64_t kv_prefetch_bytes = int64_t{1} << 30;
  // socket and nccl: the peer links this worker keeps at once, as receiver and as holder
  // together (worker/link_limit.h); the least recently used idle one is closed to make
  // room. 0: no bound.
  int kv_links = 16;
  int64_t register_timeout_ms = 0;  // 0 = keep trying; else give up after this long
  bool verbose = true;          // log registration and tasks (ops/log.h)
  std::shared_ptr<ops::Metrics> metrics;  // the core's metrics (worker/worker_metrics.h); null: its own
  // Transport security (rpc/security.h); the defaults are plain text. `security` is this
  // worker's server (with a client CA: ClientCertMode::kRequire, so only the cluster's
  // coordinator and workers get through the handshake); `channels` is how it calls the
  // coordinator and other workers (FetchKv), presenting its certificate for mutual TLS.
  rpc::ServerSecurity security;
  rpc::ChannelSecurity channels;
  std::string health_listen;  // "": none; else HOST:PORT of a plain-text health-only server
};


class WorkerProcess {
 public:
  // Starts the server (the port is bound before this returns) and the agent.
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Start(const Model& model, WorkerProcessOptions options);
  ~WorkerProcess();

  // Finishes the task at hand, deregisters and stops the server. Idempotent.
  void Drain();
  // Blocks until the process should exit (after Drain, or a fatal registration error);
  // returns that error, or OK after a drain.
  absl::Status Wait();
  const std::string& address() const { return address_; }
  const std::string& health_address() const;  // "" without health_listen
  WorkerCore& core() { return *core_; }
  // How this worker fetches chunk K/V from others (a PeerKvFetcher with --kv-transport
  // socket): for tests and diagnostics.
  KvFetcher& kv_fetcher() { return *fetcher_; }

 private:
  class Service;
  WorkerProcess() = default;
  void AgentLoop();
  // A token held while a task runs (null when draining: no new task).
  std::shared_ptr<void> BeginTask();
  void WaitIdle();

  WorkerProcessOptions options_;
  const Model* model_ = nullptr;
  std::string address_;
  std::string device_label_;  // what it computes on, told at registration (DeviceLabel)
  std::shared_ptr<PeerEndpoints> peer_endpoints_;  // null with kv_transport "grpc"
  std::shared_ptr<LinkLimit> link_limit_;          // with peer_endpoints_ (--kv-links)
  ops::Metrics::CallbackHandle links_gauge_;
  std::unique_ptr<KvFetcher> fetcher_;
  std::unique_ptr<WorkerCore> core_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<rpc::HealthServer> health_;
  std::thread agent_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool draining_ = false;
  bool stopped_ = false;
  int in_flight_ = 0;
  std::string worker_id_;  // as registered ("" before), for the log
  absl::Status exit_status_;
};

// The numeric IPv4 address this worker's peer links listen on: the host of `listen`
// when it is one, else (a name, 0.0.0.0) the local address that reaches `coordinator`.
absl::StatusOr<std::string> PeerHostFor(const std::string& listen, const std::string& coordinator);

// "HOST:PORT" -> the local IP address used to reach HOST (loopback for loopback).
absl::StatusOr<std::string> LocalAddressFor(const std::string& host_port);

}  // namespace mesa::worker
