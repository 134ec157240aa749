// The coordinator's gRPC server: JobService (clients) and WorkerRegistry (workers) as
// thin adapters over CoordinatorCore, with grpc.health.v1 and server reflection on the
// same port, message size limits set on purpose, and request validation that answers
// INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED and changes nothing.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/coordinator_core.h"
#include "rpc/security.h"

namespace grpc {
class Server;
}
namespace mesa::rpc {
class HealthServer;
}

namespace mesa::coord {

struct CoordinatorServerOptions {
  std::string listen;                      // HOST:PORT (port 0: ephemeral)
  int64_t max_job_bytes = 1LL << 30;       // all lines of one CreateJob
  // Transport security (rpc/security.h); the defaults are plain text and no tokens.
  // With a client CA (ClientCertMode::kVerifyIfPresented) the WorkerRegistry requires
  // a verified client certificate; the JobService requires a token when `tokens` is set.
  rpc::ServerSecurity security;
  rpc::ChannelSecurity worker_channels;            // how the coordinator calls workers
  std::shared_ptr<const rpc::BearerTokens> tokens;  // null: any caller may use the JobService
  std::string health_listen;  // "": none; else HOST:PORT of a plain-text health-only server
};

class CoordinatorServer {
 public:
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(CoordinatorCore& core,
                                                                   CoordinatorServerOptions options);
  ~CoordinatorServer();
  void Shutdown();  // stops accepting, ends streams; idempotent
  void Wait();
  const std::string& address() const { return address_; }
  const std::string& health_address() const;  // "" without health_listen

 private:
  class JobServiceImpl;
  class RegistryImpl;
  CoordinatorServer() = default;
  std::string address_;
  std::unique_ptr<JobServiceImpl> jobs_;
  std::unique_ptr<RegistryImpl> registry_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<rpc::HealthServer> health_;
};

}  // namespace mesa::coord
