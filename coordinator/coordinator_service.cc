// CoordinatorServer: JobService and WorkerRegistry over CoordinatorCore.
#include "coordinator/coordinator_service.h"

#include <chrono>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "coordinator/grpc_worker_client.h"
#include "coordinator/request_proto.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "mesa/v1/job_service.grpc.pb.h"
#include "mesa/v1/worker_service.grpc.pb.h"
#include "rpc/health_server.h"
#include "worker/grpc_status.h"
#include "ops/log.h"

namespace mesa::coord {
namespace {

constexpr int kMaxMessageBytes = 64 << 20;
constexpr size_t kResultBatchBytes = 1 << 20;

void ToProto(const JobRecord& j, v1::Job* p) {
  p->set_id(j.id);
  p->set_status(j.status);
  p->mutable_request_counts()->set_total(j.total);
  p->mutable_request_counts()->set_completed(j.completed);
  p->mutable_request_counts()->set_failed(j.failed);
  p->set_created_at(j.created_at);
  p->set_in_progress_at(j.in_progress_at);
  p->set_finalizing_at(j.finalizing_at);
  p->set_completed_at(j.completed_at);
  p->set_failed_at(j.failed_at);
  p->set_cancelling_at(j.cancelling_at);
  p->set_cancelled_at(j.cancelled_at);
  p->set_model(j.model);
  p->set_task(j.task);
  p->set_prompt_tokens(j.prompt_tokens);
  p->set_generated_tokens(j.generated_tokens);
  if (j.in_progress_at > 0) {
    int64_t end = j.completed_at > 0 ? j.completed_at : j.cancelled_at > 0 ? j.cancelled_at : std::time(nullptr);
    const double secs = std::max<double>(1.0, static_cast<double>(end - j.in_progress_at));
    p->set_throughput_tokens_per_s(static_cast<double>(j.prompt_tokens + j.generated_tokens) / secs);
  }
  p->set_error(j.error);
  p->set_request_id(j.request_id);
  const nlohmann::json o = nlohmann::json::parse(j.options_json, nullptr, false);
  if (o.is_object()) p->set_placement(o.value("placement", std::string()));
}

grpc::Status Grpc(const absl::Status& s) { return worker::ToGrpcStatus(s); }

}  // namespace

class CoordinatorServer::JobServiceImpl final : public v1::JobService::Service {
 public:
  JobServiceImpl(CoordinatorCore& core, CoordinatorServerOptions options) : core_(core), options_(options) {}

  // Every method starts here (before reading a message): with tokens configured, a call
  // without an accepted bearer token is UNAUTHENTICATED and changes nothing.
  // (tests/runtime/security_test.cc calls every method of the service's descriptor.)
  grpc::Status Authorize(const grpc::ServerContext& ctx) const {
    return options_.tokens ? options_.tokens->Check(ctx) : grpc::Status::OK;
  }

  grpc::Status CreateJob(grpc::ServerContext* ctx, grpc::ServerReader<v1::CreateJobRequest>* reader,
                         v1::Job* response) override {
    if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
    CreateJobStream stream(options_.max_job_bytes);  // options first, lines within the byte limit
    v1::CreateJobRequest msg;
    while (reader->Read(&msg)) {
      if (absl::Status s = stream.Add(msg); !s.ok()) return Grpc(s);
    }
    if (absl::Status s = stream.Finish(); !s.ok()) return Grpc(s);
    auto job = core_.CreateJob(stream.request(), stream.lines());
    if (!job.ok()) return Grpc(job.status());
    ToProto(*job, response);
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* resp) override {
    if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
    if (req->job_id().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id is empty");
    auto job = core_.GetJob(req->job_id());
    if (!job.ok()) return Grpc(job.status());
    ToProto(*job, resp);
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req, v1::ListJobsResponse* resp) override {
    if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
    if (req->limit() < 0) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "limit < 0");
    auto jobs = core_.ListJobs(req->limit());
    if (!jobs.ok()) return Grpc(jobs.status());
    for (const JobRecord& j : *jobs) ToProto(j, resp->add_jobs());
    return grpc::Status::OK;
  }

  grpc::Status ListWorkers(grpc::ServerContext* ctx, const v1::ListWorkersRequest*,
                           v1::ListWorkersResponse* resp) override {
    if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
    for (const CoordinatorCore::WorkerInfo& w : core_.ListWorkers()) {
      v1::Worker* out = resp->add_workers();
      out->set_id(w.id);
      out->set_name(w.name);
      out->set_address(w.about.address);
      out->set_device(w.about.device);
      out->set_kv_transport(w.about.kv_transport);
      out->set_threads(w.about.threads);
      out->set_state(w.view.draining ? "draining" : (w.view.task != 0 ? "busy" : "idle"));
      out->set_kv_bytes_held(w.view.kv_bytes_held);
      out->set_kv_budget_bytes(w.view.kv_budget_bytes);
      out->set_heartbeat_age_ms(w.heartbeat_age_ms);
      out->set_kv_bytes_reported(w.report.kv_bytes_in_use);
      out->set_peer_links(w.report.peer_links);
      out->set_peer_links_max(w.about.kv_links);
      out->set_joined_at(w.joined_unix_s);
      if (w.view.task != 0) {
        v1::WorkerTask* t = out->mutable_task();
        t->set_job_id(w.view.job_id);
        t->set_item(w.view.item);
        t->set_kind(w.view.kind == TaskKind::kChunk ? "chunk" : "final");
        t->set_chunk(w.view.kind == TaskKind::kChunk ? w.view.chunk : -1);
        t->set_attempt(w.view.attempt);
        t->set_whole(w.view.whole);
        t->set_running_ms(w.running_ms);
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req, v1::Job* resp) override {
    if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
    if (req->job_id().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id is empty");
    auto job = core_.CancelJob(req->job_id());
    if (!job.ok()) return Grpc(job.status());
    ToProto(*job, resp);
    return grpc::Status::OK;
  }

  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
    if (req->job_id().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id is empty");
    std::string last;
    int64_t version = core_.version();
    while (!ctx->IsCancelled()) {
      auto job = core_.GetJob(req->job_id());
      if (!job.ok()) return Grpc(job.status());
      v1::JobEvent event;
      ToProto(*job, event.mutable_job());
      event.mutable_job()->clear_throughput_tokens_per_s();  // changes every second; not an event
      std::string key = event.SerializeAsString();
      if (key != last) {
        ToProto(*job, event.mutable_job());
        if (!writer->Write(event)) return grpc::Status::OK;  // the client left
        last = std::move(key);
      }
      if (IsTerminalJobStatus(job->status)) return grpc::Status::OK;
      version = core_.WaitForChange(version, 1000);
    }
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the watch");
  }

  grpc::Status GetResults(grpc::ServerContext* ctx, const v1::GetResultsRequest* req,
                          grpc::ServerWriter<v1::ResultBatch>* writer) override {
    if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
    if (req->job_id().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id is empty");
    auto lines = core_.Results(req->job_id(), req->format());
    if (!lines.ok()) return Grpc(lines.status());
    v1::ResultBatch batch;
    size_t bytes = 0;
    for (std::string& line : *lines) {
      bytes += line.size();
      batch.add_lines(std::move(line));
      if (bytes >= kResultBatchBytes) {
        if (!writer->Write(batch)) return grpc::Status(grpc::StatusCode::CANCELLED, "the client left");
        batch.Clear();
        bytes = 0;
      }
    }
    if (batch.lines_size() > 0 && !writer->Write(batch)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client left");
    }
    return grpc::Status::OK;
  }

 private:
  CoordinatorCore& core_;
  CoordinatorServerOptions options_;
};

class CoordinatorServer::RegistryImpl final : public v1::WorkerRegistry::Service {
 public:
  RegistryImpl(CoordinatorCore& core, const CoordinatorServerOptions& options)
      : core_(core), client_ca_(options.security.client_ca), worker_channels_(options.worker_channels) {}

  // With a client CA, only processes holding a certificate from it are workers.
  grpc::Status Authorize(const grpc::ServerContext& ctx) const {
    return client_ca_ ? rpc::CheckPeerCertificate(ctx, "a worker") : grpc::Status::OK;
  }

  grpc::Status Register(grpc::ServerContext* ctx, const v1::RegisterRequest* req, v1::RegisterResponse* resp) override {
    if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
    if (absl::Status s = CheckRequest(*req); !s.ok()) return Grpc(s);
    auto id = core_.RegisterWorker(req->name(), req->model_fingerprint(), req->model_description(),
                                   req->kv_memory_bytes(), std::make_unique<GrpcWorkerClient>(req->address(), worker_channels_),
                                   {req->address(), req->device(), req->kv_transport(), req->threads(),
                                    std::max<int32_t>(0, req->kv_links())});
    if (!id.ok()) return Grpc(id.status());
    resp->set_worker_id(*id);
    resp->set_heartbeat_interval_ms(core_.heartbeat_interval_ms());
    ops::LogInfo("worker.joined", {{"worker", *id}, {"address", req->address()},
                                   {"kv_memory_bytes", req->kv_memory_bytes()}, {"threads", req->threads()},
                                   {"device", req->device()}, {"kv_transport", req->kv_transport()}});
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req, v1::HeartbeatResponse* resp) override {
    if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
    if (absl::Status s = CheckRequest(*req); !s.ok()) return Grpc(s);
    resp->set_known(core_.Heartbeat(req->worker_id(), req->draining(),
                                    WorkerReport{std::max<int64_t>(0, req->kv_bytes_in_use()),
                                                 std::max<int32_t>(0, req->peer_links())}));
    return grpc::Status::OK;
  }

  grpc::Status Deregister(grpc::ServerContext* ctx, const v1::DeregisterRequest* req, v1::DeregisterResponse*) override {
    if (grpc::Status s = Authorize(*ctx); !s.ok()) return s;
    if (absl::Status s = CheckRequest(*req); !s.ok()) return Grpc(s);
    if (core_.DeregisterWorker(req->worker_id())) {
      ops::LogInfo("worker.left", {{"worker", req->worker_id()}});
    }
    return grpc::Status::OK;
  }

 private:
  CoordinatorCore& core_;
  const bool client_ca_;
  const rpc::ChannelSecurity worker_channels_;
};

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(CoordinatorCore& core,
                                                                            CoordinatorServerOptions options) {
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  s->jobs_ = std::make_unique<JobServiceImpl>(core, options);
  s->registry_ = std::make_unique<RegistryImpl>(core, options);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, options.security.Credentials(), &port);
  builder.RegisterService(s->jobs_.get());
  builder.RegisterService(s->registry_.get());
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen, "' (in use, or not an address here?)"));
  }
  const size_t colon = options.listen.rfind(':');
  s->address_ = absl::StrCat(options.listen.substr(0, colon), ":", port);
  if (!options.health_listen.empty()) {
    auto health = rpc::HealthServer::Start(options.health_listen);
    if (!health.ok()) return health.status();
    s->health_ = *std::move(health);
  }
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  if (s->health_) s->health_->SetServing(true);
  return s;
}

CoordinatorServer::~CoordinatorServer() {
  Shutdown();
  if (health_) health_->Shutdown();
}

const std::string& CoordinatorServer::health_address() const {
  static const std::string kNone;
  return health_ ? health_->address() : kNone;
}

void CoordinatorServer::Shutdown() {
  // NOT_SERVING first, so probes see the shutdown while calls drain.
  if (health_) health_->SetServing(false);
  if (server_) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
}

void CoordinatorServer::Wait() {
  if (server_) server_->Wait();
}

}  // namespace mesa::coord
