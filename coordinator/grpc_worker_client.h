// WorkerClient over gRPC: the coordinator's calls to one worker's WorkerService, with a
// deadline on every call and cancellation by task id (ClientContext::TryCancel).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "coordinator/worker_client.h"
#include "rpc/security.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace mesa::coord {

class GrpcWorkerClient : public WorkerClient {
 public:
  // `security`: TLS (and the coordinator's client certificate) for the calls.
  explicit GrpcWorkerClient(const std::string& address, const rpc::ChannelSecurity& security = {});
  ~GrpcWorkerClient() override;
  absl::StatusOr<worker::ChunkResult> RunChunk(uint64_t task, const worker::ChunkTask& t,
                                               int64_t timeout_ms) override;
  absl::StatusOr<worker::FinalResult> RunFinal(uint64_t task, const worker::FinalTask& t,
                                               int64_t timeout_ms) override;
  void Cancel(uint64_t task) override;
  absl::Status ReleaseKv(const std::string& job_id, int64_t item, int32_t attempt) override;
  absl::StatusOr<int64_t> LoadKv(const worker::KvSourceRef& source, int64_t lease_ms, int64_t timeout_ms) override;
  bool Reachable(int64_t timeout_ms) override;
  std::string kv_address() const override { return address_; }

 private:
  struct Stub;
  std::shared_ptr<grpc::ClientContext> Begin(uint64_t task, int64_t timeout_ms);
  void End(uint64_t task);
  std::string address_;
  std::unique_ptr<Stub> stub_;
  std::mutex mu_;
  std::map<uint64_t, std::shared_ptr<grpc::ClientContext>> calls_;
};

}  // namespace mesa::coord
