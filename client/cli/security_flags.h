// The transport-security flags of Mesa's commands, in one place so that every server
// command (`mesa coordinator`, `mesa worker`, `mesa cluster`) and every client command
// spells and checks them alike (the names are a contract: docs/RUNTIME.md "Security").
//   servers: --tls-cert --tls-key --tls-ca --tls-client-ca --tls-server-name
//            --auth-token-file (coordinator) --health-listen
//   clients: --token-file ($MESA_TOKEN) --tls-ca ($MESA_TLS_CA) --tls-cert --tls-key
//            --tls-server-name
// Tokens are never command-line values (ps shows those to every user) and never printed.
#pragma once

#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "client/lib/grpc_connection.h"
#include "rpc/security.h"

namespace mesa::cli {

struct TlsFlags {
  std::string tls_cert, tls_key;   // this server's certificate; also presented when it calls others
  std::string tls_ca;              // verifies the servers this process calls (TLS on for those calls)
  std::string tls_client_ca;       // requires client certificates from this CA (mutual TLS)
  std::string tls_server_name;     // name expected in the certificates of the servers called
  std::string auth_token_file;     // coordinator: tokens the JobService accepts
  std::string health_listen;       // plain-text grpc.health.v1-only server
};

// Adds the flags above to a server command; `tokens`: also --auth-token-file.
void AddTlsServerFlags(CLI::App* cmd, TlsFlags* flags, bool tokens);

// What a server process needs, built from the flags (files read and checked now).
struct ServerSecurityConfig {
  rpc::ServerSecurity server;                       // the main port
  rpc::ChannelSecurity channels;                    // calls to the coordinator / workers
  std::shared_ptr<const rpc::BearerTokens> tokens;  // null without --auth-token-file
  std::string health_listen;
};
// `mode`: what the main port does with client certificates under --tls-client-ca (the
// coordinator verifies them if presented and its registry requires one; a worker
// requires one in the handshake).
absl::StatusOr<ServerSecurityConfig> ToServerSecurity(const TlsFlags& flags, rpc::ClientCertMode mode);

// Warnings about a server's configuration ("" when none), e.g. tokens over plain text.
std::string SecurityWarnings(const ServerSecurityConfig& config, const std::string& listen);

struct ClientTlsFlags {
  std::string token_file, tls_ca, tls_cert, tls_key, tls_server_name;
};
void AddTlsClientFlags(CLI::App* cmd, ClientTlsFlags* flags);
// Fills the connection's credentials and token from the flags and the environment
// (MESA_TOKEN, MESA_TLS_CA; a flag wins over the environment).
absl::Status ApplyClientSecurity(const ClientTlsFlags& flags, client::ConnectionOptions* options);

// `mesa health ADDRESS`: grpc.health.v1 Check (exit 0 SERVING, 1 anything else).
void RegisterHealthCommand(CLI::App& app);

}  // namespace mesa::cli
