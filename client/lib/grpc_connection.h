// The Connection over gRPC: a channel to the coordinator's JobService. The generated
// stub stays inside grpc_connection.cc; this header needs only gRPC's credentials type.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/lib/connection.h"
#include "grpcpp/security/credentials.h"

namespace mesa::client {

struct ConnectionOptions {
  // Channel credentials; null = insecure (plain text), for a coordinator on a trusted
  // network. Use grpc::SslCredentials(...) for TLS.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // With TLS: the name the coordinator's certificate must hold, when it is not the
  // address's host ("" = the host).
  std::string tls_server_name;
  // Sent with every call as "authorization: Bearer <token>" (the coordinator's
  // --auth-token-file); "" = none. Visible ASCII only. Over plain text (no credentials)
  // a token is anyone's who sees the traffic, so MakeGrpcConnection refuses that unless
  // the address is loopback (127.0.0.0/8, ::1, localhost, unix:) or
  // allow_plaintext_token is set.
  std::string bearer_token;
  bool allow_plaintext_token = false;
  // gRPC's default receive limit is 4 MiB per message; result batches and jobs stay far
  // below 64 MiB, and a single input line may be that long.
  int max_receive_message_bytes = 64 << 20;
  int max_send_message_bytes = 64 << 20;
  // Pings while a call is open (a long WatchJob or upload), to notice a dead peer. The
  // coordinator must permit pings this often
  // (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS <= keepalive_time_ms), or it
  // answers with GOAWAY "too_many_pings". 0 = no keepalive pings.
  int keepalive_time_ms = 60'000;
  int keepalive_timeout_ms = 20'000;
};

// `address`: host:port (or any gRPC target, e.g. unix:/path). Connects lazily: an
// unreachable coordinator shows as UNAVAILABLE on the first call, naming `address`.
absl::StatusOr<std::unique_ptr<Connection>> MakeGrpcConnection(const std::string& address,
                                                               const ConnectionOptions& options = {});

}  // namespace mesa::client
