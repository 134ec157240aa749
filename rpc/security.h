// Transport security for Mesa's gRPC servers and channels: TLS credentials built from
// PEM files (read and checked when a process starts, every error naming its file), the
// check that a caller presented a certificate from the cluster's CA (mutual TLS between
// the coordinator and its workers), and bearer tokens for the JobService.
//
// Secret files (private keys, token files) must not be readable or writable by other
// users (mode & 0007 == 0): such a file is refused, as ssh refuses a key, rather than
// warned about, since a warning in a log is read after the secret leaked. Group access
// is allowed (a Kubernetes secret mounted with defaultMode 0440).
//
// The services stay transport-free cores: they call only BearerTokens::Check and
// CheckPeerCertificate at the top of a handler. Everything here is thread-safe once
// built (immutable).
#pragma once

#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/channel_arguments.h"

namespace grpc {
class Channel;
}

namespace mesa::rpc {

// ------------------------------------------------------------------ servers

// Which PEM files a server uses. No cert and key: plain text.
struct ServerTlsFiles {
  std::string cert_file;       // this server's certificate chain
  std::string key_file;        // its private key (a secret file)
  std::string client_ca_file;  // "": no client certificates; else verified against this CA
};

// What a server does with client certificates when it has a client CA.
enum class ClientCertMode {
  // Verified when presented; a call without one reaches the handler, which decides
  // (the coordinator: clients of the JobService have none, workers must have one).
  kVerifyIfPresented,
  // The TLS handshake fails without a certificate from the CA (a worker's port).
  kRequire,
};

struct ServerSecurity {
  std::shared_ptr<grpc::ServerCredentials> credentials;  // null: plain text
  bool client_ca = false;  // client certificates are verified against a CA
  // The credentials to listen with (insecure ones when none).
  std::shared_ptr<grpc::ServerCredentials> Credentials() const;
  bool tls() const { return credentials != nullptr; }
};

// Reads and checks the files (present, readable, PEM, key matches certificate, the key
// not accessible to others). A client CA needs a certificate and key.
absl::StatusOr<ServerSecurity> MakeServerSecurity(const ServerTlsFiles& files, ClientCertMode mode);

// OK when the call came over TLS with a client certificate the server verified against
// its client CA; UNAUTHENTICATED otherwise, with `who` ("a worker") in the message.
grpc::Status CheckPeerCertificate(const grpc::ServerContext& ctx, absl::string_view who);

// ------------------------------------------------------------------ channels

struct ChannelTlsFiles {
  std::string ca_file;    // "": plain text; else TLS, servers verified against this CA
  std::string cert_file;  // with key_file: the client certificate presented (mutual TLS)
  std::string key_file;
  // "": the target's host must be in the server's certificate; else this name must be
  // (one certificate shared by every worker, whatever their addresses).
  std::string server_name;
};

struct ChannelSecurity {
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // null: plain text
  std::string server_name;
  bool tls() const { return credentials != nullptr; }
  std::shared_ptr<grpc::ChannelCredentials> Credentials() const;  // insecure when none
  // Sets what the credentials need on a channel's arguments (the name override).
  void Apply(grpc::ChannelArguments* args) const;
};

absl::StatusOr<ChannelSecurity> MakeChannelSecurity(const ChannelTlsFiles& files);

// A channel to `address` with `security` applied to `args`.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, const ChannelSecurity& security,
                                           grpc::ChannelArguments args = {});

// ------------------------------------------------------------------ bearer tokens

// The tokens a server accepts. A token file holds one token per line; blank lines and
// lines starting with '#' are ignored, surrounding whitespace is dropped. A token is 16
// to 4096 visible ASCII characters (what an HTTP header value can carry). Tokens never
// appear in error messages.
class BearerTokens {
 public:
  static absl::StatusOr<BearerTokens> FromFile(const std::string& path);
  // `what` names the source in errors.
  static absl::StatusOr<BearerTokens> Parse(absl::string_view text, absl::string_view what);

  // Compares with every token in constant time (no early exit on the first differing
  // byte, nor on the first match).
  bool Accepts(absl::string_view token) const;

  // The JobService's check of a call's "authorization: Bearer <token>" metadata. Both
  // a missing and a wrong token are UNAUTHENTICATED (gRPC's code for absent or invalid
  // credentials; PERMISSION_DENIED would mean "known caller, not allowed"), with
  // different messages.
  grpc::Status Check(const grpc::ServerContext& ctx) const;

  size_t size() const { return tokens_.size(); }

 private:
  friend absl::StatusOr<std::string> ReadTokenFile(const std::string& path);
  std::vector<std::string> tokens_;
};

// A client's token: the first token of a token file (same rules as above).
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);
// Checks a token given some other way (MESA_TOKEN); `what` names where it came from.
absl::Status CheckToken(absl::string_view token, absl::string_view what);

// ------------------------------------------------------------------ files

// The bytes of `path`, at most 1 MiB. Errors name the file and `what` it is
// ("TLS private key"). `secret`: refused when other users may read or write it.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, absl::string_view what, bool secret);

// Compares in time independent of where the strings differ (the length of `b` may leak).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

}  // namespace mesa::rpc
