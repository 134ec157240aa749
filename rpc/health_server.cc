// HealthServer: a second grpc::Server holding only gRPC's default health service; and
// CheckHealth, the client side of grpc.health.v1 Check (health_server.h).
#include "rpc/health_server.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

namespace mesa::rpc {

absl::StatusOr<std::unique_ptr<HealthServer>> HealthServer::Start(const std::string& listen) {
  std::unique_ptr<HealthServer> h(new HealthServer());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  h->unimplemented_ = std::make_unique<grpc::CallbackGenericService>();
  builder.RegisterCallbackGenericService(h->unimplemented_.get());
  builder.SetMaxReceiveMessageSize(4096);  // health requests are a few bytes
  h->server_ = builder.BuildAndStart();
  if (!h->server_ || port == 0 || h->server_->GetHealthCheckService() == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve health checks on '", listen, "' (in use, or not an address here?)"));
  }
  const size_t colon = listen.rfind(':');
  h->address_ = absl::StrCat(listen.substr(0, colon), ":", port);
  h->SetServing(false);
  return h;
}

HealthServer::~HealthServer() { Shutdown(); }

void HealthServer::SetServing(bool serving) {
  if (server_) server_->GetHealthCheckService()->SetServingStatus(serving);
}

void HealthServer::Shutdown() {
  if (!server_) return;
  SetServing(false);
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

absl::StatusOr<int> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                                int64_t timeout_ms) {
  // HealthCheckRequest { string service = 1; }
  std::string request;
  if (!service.empty()) {
    if (service.size() > 127) return absl::InvalidArgumentError("service name longer than 127 bytes");
    request.push_back('\x0a');
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1), out;
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  grpc::Status status;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &in, &out, [&](grpc::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    status = std::move(s);
    done = true;
    cv.notify_all();
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
  }
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat("grpc.health.v1 Check: ", status.error_message()));
  }
  // HealthCheckResponse { ServingStatus status = 1; } (absent: 0, UNKNOWN)
  std::vector<grpc::Slice> slices;
  if (!out.Dump(&slices).ok()) return absl::DataLossError("grpc.health.v1 Check: unreadable answer");
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes.empty()) return 0;
  if (bytes.size() != 2 || bytes[0] != '\x08' || (bytes[1] & 0x80) != 0) {
    return absl::DataLossError("grpc.health.v1 Check: an answer that is not a HealthCheckResponse");
  }
  return static_cast<int>(bytes[1]);
}

const char* ServingStatusName(int status) {
  switch (status) {
    case 0: return "UNKNOWN";
    case 1: return "SERVING";
    case 2: return "NOT_SERVING";
    case 3: return "SERVICE_UNKNOWN";
    default: return "INVALID";
  }
}

}  // namespace mesa::rpc
