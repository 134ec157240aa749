// The security flags of server and client commands, and `mesa health`
// (security_flags.h).
#include "client/cli/security_flags.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "grpcpp/grpcpp.h"
#include "rpc/health_server.h"

namespace mesa::cli {
namespace {

bool IsLoopbackListen(const std::string& listen) {
  return listen.rfind("127.", 0) == 0 || listen.rfind("localhost:", 0) == 0 || listen.rfind("[::1]:", 0) == 0;
}

std::string FromEnv(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

void AddTlsServerFlags(CLI::App* cmd, TlsFlags* f, bool tokens) {
  const std::string group = "Security";
  cmd->add_option("--tls-cert", f->tls_cert,
                  "PEM certificate (chain) of this server; also presented when this process calls another (mTLS)")
      ->group(group);
  cmd->add_option("--tls-key", f->tls_key, "PEM private key of --tls-cert (must not be readable by other users)")
      ->group(group);
  cmd->add_option("--tls-ca", f->tls_ca, "PEM CA bundle: use TLS for the calls this process makes, verified by it")
      ->group(group);
  cmd->add_option("--tls-client-ca", f->tls_client_ca,
                  "PEM CA: callers must present a certificate from it (mutual TLS between coordinator and workers)")
      ->group(group);
  cmd->add_option("--tls-server-name", f->tls_server_name,
                  "Name the certificates of the servers this process calls must hold (default: their address)")
      ->group(group);
  if (tokens) {
    cmd->add_option("--auth-token-file", f->auth_token_file,
                    "File of bearer tokens the job service accepts, one per line (# comments; mode 600)")
        ->group(group);
  }
  cmd->add_option("--health-listen", f->health_listen,
                  "HOST:PORT of a plain-text server with grpc.health.v1 only (Kubernetes gRPC probes)")
      ->group(group);
  // Combinations that cannot work are usage errors (exit 2) before any file is read.
  CLI::Option* cert = cmd->get_option("--tls-cert");
  CLI::Option* key = cmd->get_option("--tls-key");
  cert->needs(key);
  key->needs(cert);
  cmd->get_option("--tls-client-ca")->needs(cert);
  cmd->get_option("--tls-server-name")->needs(cmd->get_option("--tls-ca"));
}

absl::StatusOr<ServerSecurityConfig> ToServerSecurity(const TlsFlags& f, rpc::ClientCertMode mode) {
  ServerSecurityConfig c;
  auto server = rpc::MakeServerSecurity({f.tls_cert, f.tls_key, f.tls_client_ca}, mode);
  if (!server.ok()) return server.status();
  c.server = *std::move(server);
  // The same certificate is this process's client certificate when it calls others.
  auto channels = rpc::MakeChannelSecurity({f.tls_ca, f.tls_ca.empty() ? "" : f.tls_cert,
                                            f.tls_ca.empty() ? "" : f.tls_key, f.tls_server_name});
  if (!channels.ok()) return channels.status();
  c.channels = *std::move(channels);
  if (!f.auth_token_file.empty()) {
    auto tokens = rpc::BearerTokens::FromFile(f.auth_token_file);
    if (!tokens.ok()) return tokens.status();
    c.tokens = std::make_shared<const rpc::BearerTokens>(*std::move(tokens));
  }
  c.health_listen = f.health_listen;
  return c;
}

std::string SecurityWarnings(const ServerSecurityConfig& c, const std::string& listen) {
  std::string w;
  const bool loopback = IsLoopbackListen(listen);
  if (c.tokens && !c.server.tls() && !loopback) {
    w += "warning: --auth-token-file without --tls-cert: bearer tokens cross the network in plain text\n";
  }
  if (!c.server.tls() && !loopback) {
    w += absl::StrCat("warning: plain text on ", listen,
                      " (no --tls-cert): anyone who reaches it can read and change what it serves\n");
  }
  if (c.server.tls() && !c.channels.tls()) {
    w += "warning: --tls-cert without --tls-ca: the calls this process makes (to the coordinator or workers) "
         "are plain text, and TLS servers refuse them\n";
  }
  if (c.server.tls() && !c.server.client_ca) {
    w += "warning: no --tls-client-ca: any process that reaches this port may act as a cluster member\n";
  }
  return w;
}

void AddTlsClientFlags(CLI::App* cmd, ClientTlsFlags* f) {
  const std::string group = "Security";
  cmd->add_option("--token-file", f->token_file,
                  "File whose first token is sent as the bearer token (default: $MESA_TOKEN; mode 600)")
      ->group(group);
  cmd->add_option("--tls-ca", f->tls_ca, "PEM CA bundle: use TLS, the coordinator verified by it (default: $MESA_TLS_CA)")
      ->group(group);
  cmd->add_option("--tls-cert", f->tls_cert, "PEM client certificate (when the coordinator asks for one)")->group(group);
  cmd->add_option("--tls-key", f->tls_key, "PEM private key of --tls-cert")->group(group);
  cmd->add_option("--tls-server-name", f->tls_server_name,
                  "Name the coordinator's certificate must hold (default: the host of --coordinator)")
      ->group(group);
  cmd->get_option("--tls-cert")->needs(cmd->get_option("--tls-key"));
  cmd->get_option("--tls-key")->needs(cmd->get_option("--tls-cert"));
}

absl::Status ApplyClientSecurity(const ClientTlsFlags& f, client::ConnectionOptions* options) {
  const std::string ca = f.tls_ca.empty() ? FromEnv("MESA_TLS_CA") : f.tls_ca;
  if (ca.empty() && (!f.tls_cert.empty() || !f.tls_key.empty())) {
    return absl::InvalidArgumentError("--tls-cert/--tls-key need --tls-ca (or $MESA_TLS_CA): they are a part of TLS");
  }
  auto channel = rpc::MakeChannelSecurity({ca, f.tls_cert, f.tls_key, f.tls_server_name});
  if (!channel.ok()) return channel.status();
  options->credentials = channel->credentials;
  options->tls_server_name = channel->server_name;
  if (!f.token_file.empty()) {
    auto token = rpc::ReadTokenFile(f.token_file);
    if (!token.ok()) return token.status();
    options->bearer_token = *std::move(token);
  } else if (std::string env = FromEnv("MESA_TOKEN"); !env.empty()) {
    if (absl::Status s = rpc::CheckToken(env, "$MESA_TOKEN"); !s.ok()) return s;
    options->bearer_token = std::move(env);
  }
  return absl::OkStatus();
}

void RegisterHealthCommand(CLI::App& app) {
  struct Args {
    std::string address, service;
    double timeout_s = 5;
    ClientTlsFlags tls;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("health", "Ask a Mesa server (or any gRPC server) for its grpc.health.v1 status");
  cmd->footer(
      "Prints SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN. Exit codes: 0 SERVING; 1 anything else or an error;\n"
      "2 bad usage. Plain text unless --tls-ca (a worker's main port under mutual TLS also needs --tls-cert/--tls-key).\n"
      "Example: mesa health 10.0.0.1:8081   (a --health-listen port)");
  cmd->add_option("address", a->address, "HOST:PORT")->required();
  cmd->add_option("--service", a->service, "Service name (default: the server as a whole)");
  cmd->add_option("--timeout", a->timeout_s, "Seconds to wait for the answer")->check(CLI::PositiveNumber)
      ->capture_default_str();
  AddTlsClientFlags(cmd, &a->tls);
  cmd->callback([a] {
    client::ConnectionOptions co;
    if (absl::Status s = ApplyClientSecurity(a->tls, &co); !s.ok()) {
      ExitCode() = Fail(s);
      return;
    }
    rpc::ChannelSecurity cs{co.credentials, co.tls_server_name};
    auto status = rpc::CheckHealth(rpc::MakeChannel(a->address, cs), a->service,
                                   static_cast<int64_t>(a->timeout_s * 1000));
    if (!status.ok()) {
      ExitCode() = Fail(absl::Status(status.status().code(),
                                     absl::StrCat(a->address, ": ", status.status().message())));
      return;
    }
    std::printf("%s\n", rpc::ServingStatusName(*status));
    ExitCode() = *status == 1 ? 0 : 1;
  });
}

}  // namespace mesa::cli
