// The coordinator's gRPC server: JobService (clients) and WorkerRegistry (workers) as
// thin adapters over CoordinatorCore, with grpc.health.v1 and server reflection on the
// same port, message size limits set on purpose, and request validation that answers
// INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED and changes nothing.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/coordinator_core.h"

namespace grpc {
class Server;
}

namespace mesa::coord {

struct CoordinatorServerOptions {
  std::string listen;                      // HOST:PORT (port 0: ephemeral)
  int64_t max_job_bytes = 1LL << 30;       // all lines of one CreateJob
};

class CoordinatorServer {
 public:
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(CoordinatorCore& core,
                                                                   CoordinatorServerOptions options);
  ~CoordinatorServer();
  void Shutdown();  // stops accepting, ends streams; idempotent
  void Wait();
  const std::string& address() const { return address_; }

 private:
  class JobServiceImpl;
  class RegistryImpl;
  CoordinatorServer() = default;
  std::string address_;
  std::unique_ptr<JobServiceImpl> jobs_;
  std::unique_ptr<RegistryImpl> registry_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace mesa::coord
