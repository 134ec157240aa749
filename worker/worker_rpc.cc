// WorkerProcess: the WorkerService adapter over WorkerCore and the registration agent.
#include "worker/worker_rpc.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/model_fingerprint.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "kernels/cuda/device_query.h"
#include "kernels/matmul.h"
#include "mesa/v1/worker_service.grpc.pb.h"
#include "rpc/health_server.h"
#include "ops/log.h"
#include "worker/grpc_kv.h"
#include "worker/grpc_status.h"
#include "worker/kv_pool.h"
#include "worker/peer_kv.h"
#include "worker/nccl_peer.h"
#include "worker/socket_peer.h"
#include "worker/cancel_watchers.h"
#include "worker/task_proto.h"

namespace mesa::worker {
namespace {

constexpr int kMaxMessageBytes = 64 << 20;  // prompts of a few MB at most; K/V moves in 1 MiB pieces

}  // namespace

absl::StatusOr<std::string> PeerHostFor(const std::string& listen, const std::string& coordinator) {
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  in_addr parsed{};
  if (inet_pton(AF_INET, host.c_str(), &parsed) == 1 && host != "0.0.0.0") return host;
  // A name, or every address: the one that reaches the coordinator.
  return LocalAddressFor(coordinator);
}

absl::StatusOr<std::string> LocalAddressFor(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", host_port, "' is not HOST:PORT"));
  }
  std::string host = host_port.substr(0, colon);
  if (host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), host_port.substr(colon + 1).c_str(), &hints, &res) != 0 || !res) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve '", host, "'"));
  }
  // A UDP "connect" sends nothing; it only asks the kernel which local address routes there.
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  std::string out;
  if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof local;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char buf[INET_ADDRSTRLEN];
      if (inet_ntop(AF_INET, &local.sin_addr, buf, sizeof buf)) out = buf;
    }
  }
  if (fd >= 0) close(fd);
  freeaddrinfo(res);
  if (out.empty()) return absl::UnavailableError(absl::StrCat("no local address reaches '", host, "'"));
  return out;
}

// NCCL links between GPU workers: each pair its own transfer backend on the worker's
// device (its own stream, never the one the tasks compute on) and a communicator made on
// it; held chunks are staged through it (worker/peer_kv.h).
class NcclEndpoints final : public PeerEndpoints {
 public:
  NcclEndpoints(std::string device, std::string kv_type) : device_(std::move(device)), kv_type_(std::move(kv_type)) {}
  std::string Name() const override { return "nccl"; }
  absl::StatusOr<PeerEndpoint> Make() override {
    absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend(device_, 1, kv_type_);
    if (!backend.ok()) return backend.status();
    absl::StatusOr<std::unique_ptr<NcclPeerTransport>> transport = NcclPeerTransport::Make(**backend);
    if (!transport.ok()) return transport.status();
    PeerEndpoint e;
    e.staging = *std::move(backend);
    e.transport = *std::move(transport);
    return e;
  }

 private:
  const std::string device_, kv_type_;
};

// FetchKv sends the held K/V's bytes from its memory, with the CRC32C computed when it
// was stored (KvStreamingWorkerService).
class WorkerProcess::Service final : public KvStreamingWorkerService {
 public:
  // Chunks held by the core, with the CRC32C computed when each was stored.
  Service(WorkerProcess* p)
      : KvStreamingWorkerService([p](const KvKey& key) -> absl::StatusOr<Held> {
          uint32_t crc32c = 0;
          auto kv = p->core_->GetKv(key, &crc32c);
          if (!kv.ok()) return kv.status();
          return Held{*std::move(kv), crc32c};
        }),
        p_(p) {}

  // A receiver's control stream for its peer link with this worker (worker/peer_kv.h).
  grpc::Status PeerKv(grpc::ServerContext* ctx,
                      grpc::ServerReaderWriter<v1::PeerKvMessage, v1::PeerKvMessage>* stream) override {
    {
      std::lock_guard<std::mutex> lock(peer_mu_);
      if (peer_closed_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the worker is stopping");
      peer_calls_.insert(ctx);
    }
    grpc::Status s = ServePeerKv(ctx, stream, p_->peer_endpoints_.get(), lookup(), p_->link_limit_);
    std::lock_guard<std::mutex> lock(peer_mu_);
    peer_calls_.erase(ctx);
    return s;
  }
  // Ends every open PeerKv stream (they idle for as long as their receivers live, which
  // would hold the server's shutdown to its deadline).
  void ClosePeerStreams() {
    std::lock_guard<std::mutex> lock(peer_mu_);
    peer_closed_ = true;
    for (grpc::ServerContext* ctx : peer_calls_) ctx->TryCancel();
  }

  grpc::Status RunChunk(grpc::ServerContext* ctx, const v1::RunChunkRequest* req,
                        v1::RunChunkResponse* resp) override {
    grpc::Status s = RunTask(ctx, *req, resp, &WorkerCore::RunChunk);
    if (s.ok() && ctx->IsCancelled()) {
      // The caller left (cancelled, or its deadline passed) after the chunk's last
      // cancellation check: it sees CANCELLED and will never use or release this K/V, so
      // free it now rather than when its lease ends. The attempt is this dispatch's alone.
      p_->core_->ReleaseKv(req->key().job_id(), req->key().item(), req->key().attempt());
      return grpc::Status(grpc::StatusCode::CANCELLED, "the caller left while the chunk task ran");
    }
    return s;
  }

  grpc::Status RunFinal(grpc::ServerContext* ctx, const v1::RunFinalRequest* req,
                        v1::RunFinalResponse* resp) override {
    return RunTask(ctx, *req, resp, &WorkerCore::RunFinal);
  }

  grpc::Status ReleaseKv(grpc::ServerContext*, const v1::ReleaseKvRequest* req,
                         v1::ReleaseKvResponse* resp) override {
    if (req->job_id().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "ReleaseKv without a job_id");
    const WorkerCore::Released r = p_->core_->ReleaseKv(req->job_id(), req->item(), req->attempt());
    resp->set_released_bytes(r.bytes);
    resp->set_released_entries(r.entries);
    return grpc::Status::OK;
  }

  // Not a task: it runs beside the one at hand (the engine is not taken), so it is not
  // counted for draining; a draining worker refuses it (its K/V is about to go).
  grpc::Status LoadKv(grpc::ServerContext* ctx, const v1::LoadKvRequest* req, v1::LoadKvResponse* resp) override {
    auto args = FromProto(*req);
    if (!args.ok()) return ToGrpcStatus(args.status());
    {
      std::lock_guard<std::mutex> lock(p_->mu_);
      if (p_->draining_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the worker is draining");
    }
    int64_t timeout_ms = 60000;  // the fetch ends with the call at the latest
    const auto deadline = ctx->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      timeout_ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::system_clock::now())
                       .count();
      if (timeout_ms <= 0) return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "LoadKv past its deadline");
    }
    CancelFlag cancel{false};
    const auto watch = cancel_watchers_.Watch(ctx, &cancel);
    auto r = p_->core_->LoadKv(args->source, args->lease_ms, &cancel, timeout_ms);
    if (!r.ok()) return ToGrpcStatus(r.status());
    ToProto(*r, resp);
    return grpc::Status::OK;
  }

 private:
  // Validate, refuse while draining, run on the core with the call's cancellation.
  template <typename Request, typename Response, typename Task, typename Result>
  grpc::Status RunTask(grpc::ServerContext* ctx, const Request& req, Response* resp,
                       absl::StatusOr<Result> (WorkerCore::*run)(const Task&, const CancelFlag*)) {
    auto task = FromProto(req);
    if (!task.ok()) return ToGrpcStatus(task.status());
    auto busy = p_->BeginTask();
    if (!busy) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the worker is draining");
    CancelFlag cancel{false};
    const auto watch = cancel_watchers_.Watch(ctx, &cancel);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = (p_->core_.get()->*run)(*task, &cancel);
    if (p_->options_.verbose) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const KvKey& key = task->key;
      const char* kind = key.chunk < 0 ? "final" : "chunk";
      std::string worker;
      {
        std::lock_guard<std::mutex> lock(p_->mu_);
        worker = p_->worker_id_;
      }
      if (r.ok()) {
        ops::LogDebug("task.done", {{"job", key.job_id}, {"item", key.item}, {"kind", kind}, {"chunk", key.chunk},
                                    {"attempt", key.attempt}, {"worker", worker}, {"seconds", seconds}});
      } else {
        ops::LogWarn("task.failed", {{"job", key.job_id}, {"item", key.item}, {"kind", kind}, {"chunk", key.chunk},
                                     {"attempt", key.attempt}, {"worker", worker}, {"seconds", seconds},
                                     {"error", r.status()}});
      }
    }
    if (!r.ok()) return ToGrpcStatus(r.status());
    ToProto(*r, resp);
    return grpc::Status::OK;
  }

  WorkerProcess* p_;
  CancelWatchers cancel_watchers_;  // the task calls' cancellation, one thread for all
  std::mutex peer_mu_;
  std::set<grpc::ServerContext*> peer_calls_;  // guarded by peer_mu_
  bool peer_closed_ = false;                   // guarded by peer_mu_
};

std::shared_ptr<void> WorkerProcess::BeginTask() {
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return nullptr;
  ++in_flight_;
  return std::shared_ptr<void>(this, [](WorkerProcess* p) {
    std::lock_guard<std::mutex> lock(p->mu_);
    --p->in_flight_;
    p->cv_.notify_all();
  });
}

void WorkerProcess::WaitIdle() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return in_flight_ == 0; });
}

namespace {

// What a worker computes on, for people (`mesa workers`): "cpu (avx512)" or "cuda:0
// (NVIDIA H200, 139 GiB)"; `device` as --device takes it.
std::string DeviceLabel(const std::string& device) {
  if (device.empty() || device == "cpu") return absl::StrCat("cpu (", cpu::ActiveIsaName(), ")");
  int index = 0;  // "cuda" = cuda:0
  if (absl::StartsWith(device, "cuda:") && !absl::SimpleAtoi(device.substr(5), &index)) return device;
  for (const CudaDeviceInfo& d : QueryCudaDevices().devices) {
    if (d.index == index) {
      return absl::StrCat("cuda:", index, " (", d.name, ", ", d.total_memory_bytes >> 30, " GiB)");
    }
  }
  return device;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerProcess>> WorkerProcess::Start(const Model& model, WorkerProcessOptions options) {
  if (options.coordinator.empty()) return absl::InvalidArgumentError("no coordinator address given");
  if (!options.metrics) options.metrics = ops::Metrics::Create();  // the core's and the fetcher's
  std::unique_ptr<WorkerProcess> p(new WorkerProcess());
  p->model_ = &model;
  if (options.name.empty()) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    options.name = host[0] ? host : "worker";
  }
  std::string listen = options.listen;
  if (listen.empty()) {
    auto local = LocalAddressFor(options.coordinator);
    if (!local.ok()) return local.status();
    listen = *local + ":0";
  }
  p->options_ = options;
  p->device_label_ = DeviceLabel(options.device);
  // K/V memory reused across chunks (fetched or computed here) once they are consumed
  // or released: up to the K/V budget, at most 1 GiB.
  constexpr int64_t kMaxPooledKvBytes = int64_t{1} << 30;
  auto kv_pool = std::make_shared<KvBufferPool>(
      options.kv_memory_bytes > 0 ? std::min(options.kv_memory_bytes, kMaxPooledKvBytes) : kMaxPooledKvBytes);
  GrpcKvFetcherOptions fetcher_options;
  fetcher_options.kv_pool = kv_pool;
  fetcher_options.lanes = options.kv_lanes;
  fetcher_options.credentials = options.channels.credentials;
  options.channels.Apply(&fetcher_options.channel_args);
  if (options.kv_transport == "grpc") {
    p->fetcher_ = std::make_unique<GrpcKvFetcher>(std::move(fetcher_options));
  } else if (options.kv_transport == "socket" || options.kv_transport == "nccl") {
    if (options.security.tls() || options.channels.credentials != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--kv-transport ", options.kv_transport, " moves K/V unencrypted (",
          options.kv_transport == "socket" ? "plain TCP" : "NCCL", "), beside TLS-protected gRPC; use "
          "--kv-transport grpc with TLS"));
    }
    if (options.kv_transport == "socket") {
      // The links listen on the address the worker serves on (its host part).
      auto host = PeerHostFor(listen, options.coordinator);
      if (!host.ok()) return host.status();
      SocketPeerOptions socket;
      socket.host = *host;
      p->peer_endpoints_ =
          std::make_shared<SharedTransportEndpoints>(std::make_shared<SocketPeerTransport>(std::move(socket)));
    } else {
      if (options.device.rfind("cuda", 0) != 0) {
        return absl::InvalidArgumentError(absl::StrCat("--kv-transport nccl moves K/V between GPUs: it needs "
                                                       "--device cuda or cuda:N (not '", options.device, "')"));
      }
      p->peer_endpoints_ = std::make_shared<NcclEndpoints>(options.device, options.kv_type);
      // Made once now, so that a plugin without NCCL or a device it cannot use fails at
      // start, saying why, rather than at the first fetch.
      absl::StatusOr<PeerEndpoint> probe = p->peer_endpoints_->Make();
      if (!probe.ok()) {
        return absl::Status(probe.status().code(),
                            absl::StrCat("--kv-transport nccl: ", probe.status().message()));
      }
    }
    // One bound over the links this worker makes and those it serves.
    auto link_metrics = std::make_shared<KvLinkMetrics>(*options.metrics);
    const bool log_links = options.verbose;
    p->link_limit_ = std::make_shared<LinkLimit>(options.kv_links, [link_metrics, log_links](const std::string& peer) {
      link_metrics->links_closed_for_room.Increment();
      if (log_links) ops::LogInfo("kv.link_closed_for_room", {{"peer", peer}});
    });
    p->links_gauge_ = options.metrics->AddGaugeCallback(
        "mesa_worker_kv_links", "Peer links this worker keeps now, as receiver and as holder (--kv-links bounds them).",
        [limit = p->link_limit_] {
          return std::vector<ops::Metrics::Sample>{{{}, static_cast<double>(limit->live())}};
        });
    PeerKvFetcherOptions peer;
    peer.endpoints = p->peer_endpoints_;
    peer.link_limit = p->link_limit_;
    peer.kv_pool = kv_pool;
    peer.credentials = fetcher_options.credentials;
    peer.channel_args = fetcher_options.channel_args;
    peer.log = options.verbose;
    peer.metrics = options.metrics;
    // One gather per holder for several chunks where a gather's control round trips weigh
    // against its transfer (NCCL: GPU to GPU is fast); over sockets one chunk per gather
    // keeps the final's pipeline finer and measured no slower (bench/results/kv_gather.md).
    peer.max_batch = options.kv_transport == "nccl" ? 8 : 1;
    peer.fallback = std::make_shared<GrpcKvFetcher>(std::move(fetcher_options));
    p->fetcher_ = std::make_unique<PeerKvFetcher>(std::move(peer));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-transport '", options.kv_transport, "': expected grpc, socket or nccl"));
  }
  WorkerCoreOptions core_options;
  core_options.kv_memory_bytes = options.kv_memory_bytes;
  core_options.final_prefetch_bytes = options.kv_prefetch_bytes;
  core_options.kv_pool = std::move(kv_pool);
  core_options.metrics = options.metrics;
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend(options.device, options.threads, options.kv_type);
  if (!backend.ok()) return backend.status();
  p->core_ = std::make_unique<WorkerCore>(model, *std::move(backend), core_options, p->fetcher_.get());
  p->service_ = std::make_unique<Service>(p.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, options.security.Credentials(), &port);
  builder.RegisterService(p->service_.get());
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  p->server_ = builder.BuildAndStart();
  if (!p->server_ || port == 0) return absl::UnavailableError(absl::StrCat("cannot listen on '", listen, "'"));
  const size_t colon = listen.rfind(':');
  p->address_ = absl::StrCat(listen.substr(0, colon), ":", port);
  if (p->address_.rfind("0.0.0.0:", 0) == 0 || p->address_.rfind("[::]:", 0) == 0) {
    // Listening on every address: advertise the one that reaches the coordinator.
    auto local = LocalAddressFor(options.coordinator);
    if (local.ok()) p->address_ = absl::StrCat(*local, ":", port);
  }
  if (!options.health_listen.empty()) {
    auto health = rpc::HealthServer::Start(options.health_listen);
    if (!health.ok()) return health.status();
    p->health_ = *std::move(health);
    p->health_->SetServing(true);
    if (options.verbose) {
      ops::LogInfo("health.listening", {{"address", p->health_->address()}, {"note", "plain text, grpc.health.v1 only"}});
    }
  }
  p->server_->GetHealthCheckService()->SetServingStatus(true);
  if (options.verbose) {
    ops::LogInfo("worker.serving", {{"address", p->address_}, {"name", options.name},
                                    {"model", DescribeModel(model)}, {"kv_memory_bytes", options.kv_memory_bytes}});
  }
  p->agent_ = std::thread([w = p.get()] { w->AgentLoop(); });
  return p;
}

WorkerProcess::~WorkerProcess() {
  Drain();
  if (agent_.joinable()) agent_.join();
  if (service_) service_->ClosePeerStreams();
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (health_) health_->Shutdown();
}

const std::string& WorkerProcess::health_address() const {
  static const std::string kNone;
  return health_ ? health_->address() : kNone;
}

void WorkerProcess::Drain() {
  // Probes see NOT_SERVING from the start of a drain.
  if (health_) health_->SetServing(false);
  if (server_) server_->GetHealthCheckService()->SetServingStatus(false);
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
  cv_.notify_all();
}

absl::Status WorkerProcess::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return stopped_; });
  return exit_status_;
}

void WorkerProcess::AgentLoop() {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  auto channel = rpc::MakeChannel(options_.coordinator, options_.channels, args);
  auto stub = v1::WorkerRegistry::NewStub(channel);
  const ModelFingerprint fp = FingerprintModel(*model_);
  const auto start = std::chrono::steady_clock::now();
  std::string worker_id;
  int64_t interval_ms = 1000;
  int64_t backoff_ms = 100;
  absl::Status fatal;
  auto finish = [&](absl::Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    exit_status_ = std::move(s);
    stopped_ = true;
    cv_.notify_all();
  };
  for (;;) {
    bool draining;
    {
      std::unique_lock<std::mutex> lock(mu_);
      draining = draining_;
    }
    core_->ExpireLeases();
    if (draining) {
      if (!worker_id.empty()) {
        // Tell the coordinator first (no new tasks), then finish the task at hand.
        v1::HeartbeatRequest hb;
        hb.set_worker_id(worker_id);
        hb.set_draining(true);
        v1::HeartbeatResponse hr;
        grpc::ClientContext hctx;
        hctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        (void)stub->Heartbeat(&hctx, hb, &hr);
        WaitIdle();
        v1::DeregisterRequest dr;
        dr.set_worker_id(worker_id);
        v1::DeregisterResponse dresp;
        grpc::ClientContext dctx;
        dctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        (void)stub->Deregister(&dctx, dr, &dresp);
        if (options_.verbose) ops::LogInfo("worker.deregistered", {{"worker", worker_id}, {"reason", "drained"}});
      }
      finish(absl::OkStatus());
      return;
    }
    if (worker_id.empty()) {
      v1::RegisterRequest req;
      req.set_name(options_.name);
      req.set_address(address_);
      req.set_model_fingerprint(fp.ToString());
      req.set_model_description(DescribeModel(*model_));
      req.set_kv_memory_bytes(options_.kv_memory_bytes);
      req.set_threads(options_.threads);
      req.set_device(device_label_);
      req.set_kv_transport(options_.kv_transport);
      if (link_limit_) req.set_kv_links(link_limit_->max_links());
      v1::RegisterResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      grpc::Status s = stub->Register(&ctx, req, &resp);
      if (s.ok()) {
        worker_id = resp.worker_id();
        interval_ms = std::max<int64_t>(50, resp.heartbeat_interval_ms());
        backoff_ms = 100;
        core_->ReleaseAll();  // a new registration: the coordinator knows of no K/V here
        {
          std::lock_guard<std::mutex> lock(mu_);
          worker_id_ = worker_id;
        }
        if (options_.verbose) {
          ops::LogInfo("worker.registered", {{"worker", worker_id}, {"coordinator", options_.coordinator}});
        }
      } else if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                 s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                 s.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
                 s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
        finish(absl::FailedPreconditionError(
            absl::StrCat("the coordinator at ", options_.coordinator, " refused this worker: ", s.error_message())));
        return;
      } else {
        const int64_t waited = std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now() - start)
                                   .count();
        if (options_.register_timeout_ms > 0 && waited > options_.register_timeout_ms) {
          finish(absl::UnavailableError(absl::StrCat(
              "cannot reach the coordinator at ", options_.coordinator, ": ", s.error_message(),
              options_.channels.tls() ? " (with TLS: is this worker's certificate from the coordinator's "
                                        "--tls-client-ca, and the coordinator's from this worker's --tls-ca?)"
                                      : "")));
          return;
        }
        if (options_.verbose) {
          ops::LogDebug("worker.register_failed", {{"coordinator", options_.coordinator},
                                                   {"error", s.error_message()}, {"retry_ms", backoff_ms * 2}});
        }
        backoff_ms = std::min<int64_t>(backoff_ms * 2, 5000);
      }
    } else {
      v1::HeartbeatRequest hb;
      hb.set_worker_id(worker_id);
      hb.set_kv_bytes_in_use(core_->kv_bytes_in_use());
      if (link_limit_) hb.set_peer_links(link_limit_->live());
      v1::HeartbeatResponse hr;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(std::max<int64_t>(interval_ms, 2000)));
      grpc::Status s = stub->Heartbeat(&ctx, hb, &hr);
      if (s.ok() && !hr.known()) {
        if (options_.verbose) {
          ops::LogWarn("worker.reregistering", {{"worker", worker_id}, {"coordinator", options_.coordinator},
                                                {"reason", "the coordinator does not know this worker (it restarted?)"}});
        }
        worker_id.clear();
        continue;
      }
      backoff_ms = s.ok() ? 100 : std::min<int64_t>(backoff_ms * 2, 5000);
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(worker_id.empty() ? backoff_ms : interval_ms),
                 [&] { return draining_; });
  }
}

}  // namespace mesa::worker
