// A plain-text gRPC server with grpc.health.v1 only (--health-listen), for probes that
// cannot speak TLS or present a client certificate (Kubernetes' gRPC probes). It serves
// nothing else, so it needs no protection; its serving status is set by the process it
// belongs to (SERVING while the main server serves, NOT_SERVING while it drains or shuts
// down). Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace grpc {
class CallbackGenericService;
class Channel;
class Server;
}  // namespace grpc

namespace mesa::rpc {

class HealthServer {
 public:
  // Listens on `listen` (HOST:PORT, port 0: any free port); starts NOT_SERVING.
  static absl::StatusOr<std::unique_ptr<HealthServer>> Start(const std::string& listen);
  ~HealthServer();
  void SetServing(bool serving);  // the overall status ("") and every service's
  void Shutdown();                // idempotent
  const std::string& address() const { return address_; }

 private:
  HealthServer() = default;
  std::string address_;
  // Answers UNIMPLEMENTED to everything but the health service (registered by gRPC
  // itself): gRPC builds no server without a service of the program's own.
  std::unique_ptr<grpc::CallbackGenericService> unimplemented_;
  std::unique_ptr<grpc::Server> server_;
};

// grpc.health.v1 Health/Check of `service` ("": the server as a whole) over `channel`,
// hand-encoded (Debian's gRPC ships no health stubs): the ServingStatus (1 SERVING,
// 2 NOT_SERVING, 3 SERVICE_UNKNOWN), or the call's error.
absl::StatusOr<int> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                                int64_t timeout_ms);
const char* ServingStatusName(int status);

}  // namespace mesa::rpc
