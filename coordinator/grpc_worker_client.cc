// GrpcWorkerClient: RunChunk / RunFinal / ReleaseKv on a worker over gRPC.
#include "coordinator/grpc_worker_client.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "mesa/v1/worker_service.grpc.pb.h"
#include "worker/grpc_status.h"
#include "worker/task_proto.h"

namespace mesa::coord {
namespace {

absl::Status Named(const grpc::Status& s, const std::string& address, const char* call) {
  absl::Status st = worker::FromGrpcStatus(s);
  return absl::Status(st.code(), absl::StrCat(call, " on worker ", address, ": ", st.message()));
}

}  // namespace

struct GrpcWorkerClient::Stub {
  std::unique_ptr<v1::WorkerService::Stub> stub;
};

GrpcWorkerClient::GrpcWorkerClient(const std::string& address, const rpc::ChannelSecurity& security)
    : address_(address), stub_(std::make_unique<Stub>()) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  stub_->stub = v1::WorkerService::NewStub(rpc::MakeChannel(address, security, args));
}

GrpcWorkerClient::~GrpcWorkerClient() = default;

std::shared_ptr<grpc::ClientContext> GrpcWorkerClient::Begin(uint64_t task, int64_t timeout_ms) {
  auto ctx = std::make_shared<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  std::lock_guard<std::mutex> lock(mu_);
  calls_[task] = ctx;
  return ctx;
}

void GrpcWorkerClient::End(uint64_t task) {
  std::lock_guard<std::mutex> lock(mu_);
  calls_.erase(task);
}

absl::StatusOr<worker::ChunkResult> GrpcWorkerClient::RunChunk(uint64_t task, const worker::ChunkTask& t,
                                                               int64_t timeout_ms) {
  v1::RunChunkRequest req;
  worker::ToProto(t, &req);
  v1::RunChunkResponse resp;
  grpc::Status s = stub_->stub->RunChunk(Begin(task, timeout_ms).get(), req, &resp);
  End(task);
  if (!s.ok()) return Named(s, address_, "RunChunk");
  return worker::FromProto(resp);
}

absl::StatusOr<worker::FinalResult> GrpcWorkerClient::RunFinal(uint64_t task, const worker::FinalTask& t,
                                                               int64_t timeout_ms) {
  v1::RunFinalRequest req;
  worker::ToProto(t, &req);
  v1::RunFinalResponse resp;
  grpc::Status s = stub_->stub->RunFinal(Begin(task, timeout_ms).get(), req, &resp);
  End(task);
  if (!s.ok()) return Named(s, address_, "RunFinal");
  return worker::FromProto(resp);
}

void GrpcWorkerClient::Cancel(uint64_t task) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = calls_.find(task);
  if (it != calls_.end()) it->second->TryCancel();
}

bool GrpcWorkerClient::Reachable(int64_t timeout_ms) {
  // A release of nothing: any answer, even an error, means the process is there.
  v1::ReleaseKvRequest req;
  req.set_job_id("probe");
  req.set_item(-1);
  req.set_attempt(-1);
  v1::ReleaseKvResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  grpc::Status s = stub_->stub->ReleaseKv(&ctx, req, &resp);
  return s.error_code() != grpc::StatusCode::UNAVAILABLE && s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED;
}

absl::Status GrpcWorkerClient::ReleaseKv(const std::string& job_id, int64_t item, int32_t attempt) {
  v1::ReleaseKvRequest req;
  req.set_job_id(job_id);
  req.set_item(item);
  req.set_attempt(attempt);
  v1::ReleaseKvResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Status s = stub_->stub->ReleaseKv(&ctx, req, &resp);
  if (!s.ok()) return Named(s, address_, "ReleaseKv");
  return absl::OkStatus();
}

absl::StatusOr<int64_t> GrpcWorkerClient::LoadKv(const worker::KvSourceRef& source, int64_t lease_ms,
                                                 int64_t timeout_ms) {
  v1::LoadKvRequest req;
  worker::ToProto(source, lease_ms, &req);
  v1::LoadKvResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(std::max<int64_t>(1, timeout_ms)));
  grpc::Status s = stub_->stub->LoadKv(&ctx, req, &resp);
  if (!s.ok()) return Named(s, address_, "LoadKv");
  return resp.kv_bytes();
}

}  // namespace mesa::coord
