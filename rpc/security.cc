// Credentials from PEM files, the peer-certificate check and bearer tokens (security.h).
#include "rpc/security.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "grpc/grpc_security_constants.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/auth_context.h"
#include "openssl/bio.h"
#include "openssl/err.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"

namespace mesa::rpc {
namespace {

constexpr size_t kMaxFileBytes = 1 << 20;
constexpr size_t kMinTokenBytes = 16;
constexpr size_t kMaxTokenBytes = 4096;

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Bio MemoryBio(const std::string& bytes) { return Bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size()))); }

// Never prompts for a passphrase (OpenSSL's default callback reads the terminal).
int NoPassphrase(char*, int, int, void*) { return -1; }

// The certificates of a PEM file (at least one); the first is the leaf.
absl::StatusOr<std::vector<Cert>> ParseCertificates(const std::string& pem, const std::string& path,
                                                    absl::string_view what) {
  Bio bio = MemoryBio(pem);
  std::vector<Cert> certs;
  for (;;) {
    Cert c(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
    if (!c) break;
    certs.push_back(std::move(c));
  }
  ERR_clear_error();  // the loop ends on "no start line"
  if (certs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path, ": no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"));
  }
  if (X509_cmp_current_time(X509_get0_notAfter(certs.front().get())) < 0) {
    return absl::FailedPreconditionError(absl::StrCat(what, " ", path, ": the certificate has expired"));
  }
  return certs;
}

absl::StatusOr<std::string> ReadCertificateFile(const std::string& path, absl::string_view what) {
  auto pem = ReadSmallFile(path, what, /*secret=*/false);
  if (!pem.ok()) return pem.status();
  if (auto certs = ParseCertificates(*pem, path, what); !certs.ok()) return certs.status();
  return pem;
}

// A certificate and its private key: both PEM, the key not accessible to others, and
// the key the one of the certificate's public key.
absl::Status ReadKeyPair(const std::string& cert_file, const std::string& key_file, std::string* cert_pem,
                         std::string* key_pem) {
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError(cert_file.empty() ? "--tls-key needs --tls-cert (the certificate of that key)"
                                                        : "--tls-cert needs --tls-key (the certificate's private key)");
  }
  auto cert = ReadSmallFile(cert_file, "TLS certificate", /*secret=*/false);
  if (!cert.ok()) return cert.status();
  auto certs = ParseCertificates(*cert, cert_file, "TLS certificate");
  if (!certs.ok()) return certs.status();
  auto key = ReadSmallFile(key_file, "TLS private key", /*secret=*/true);
  if (!key.ok()) return key.status();
  Bio bio = MemoryBio(*key);
  Pkey pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (!pkey) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TLS private key ", key_file, ": no unencrypted PEM private key in it (expected -----BEGIN PRIVATE KEY-----)"));
  }
  if (X509_check_private_key(certs->front().get(), pkey.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("TLS private key ", key_file, " does not match the certificate ", cert_file));
  }
  *cert_pem = *std::move(cert);
  *key_pem = *std::move(key);
  return absl::OkStatus();
}

absl::string_view Trim(absl::string_view s) { return absl::StripAsciiWhitespace(s); }

}  // namespace

// ------------------------------------------------------------------ files

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, absl::string_view what, bool secret) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int e = errno;
    if (e == ENOENT) return absl::NotFoundError(absl::StrCat(what, " ", path, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(what, " ", path, ": cannot stat: ", std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": not a regular file"));
  if (secret && (st.st_mode & 0007) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s %s: other users may read or write it (mode %04o); a secret must not be: chmod o-rwx (e.g. 600) it",
        what, path, st.st_mode & 07777));
  }
  if (static_cast<size_t>(st.st_size) > kMaxFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": larger than 1 MiB"));
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    return absl::PermissionDeniedError(absl::StrCat(what, " ", path, ": cannot read: ", std::strerror(errno)));
  }
  std::ostringstream bytes;
  bytes << f.rdbuf();
  if (f.bad()) return absl::DataLossError(absl::StrCat(what, " ", path, ": read error"));
  return bytes.str();
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Every byte of b is looked at whatever a holds; the lengths count as a difference.
  volatile unsigned char diff = static_cast<unsigned char>(a.size() != b.size());
  for (size_t i = 0; i < b.size(); ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    diff = diff | (x ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

// ------------------------------------------------------------------ servers

std::shared_ptr<grpc::ServerCredentials> ServerSecurity::Credentials() const {
  return credentials ? credentials : grpc::InsecureServerCredentials();
}

absl::StatusOr<ServerSecurity> MakeServerSecurity(const ServerTlsFiles& files, ClientCertMode mode) {
  ServerSecurity out;
  if (files.cert_file.empty() && files.key_file.empty()) {
    if (!files.client_ca_file.empty()) {
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key (client certificates are a "
                                        "part of TLS; this server would be plain text)");
    }
    return out;
  }
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  if (absl::Status s = ReadKeyPair(files.cert_file, files.key_file, &pair.cert_chain, &pair.private_key); !s.ok()) {
    return s;
  }
  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!files.client_ca_file.empty()) {
    auto ca = ReadCertificateFile(files.client_ca_file, "TLS client CA");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *std::move(ca);
    options.client_certificate_request = mode == ClientCertMode::kRequire
                                             ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                             : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
    out.client_ca = true;
  }
  out.credentials = grpc::SslServerCredentials(options);
  if (!out.credentials) return absl::InternalError("gRPC refused the TLS server credentials");
  return out;
}

grpc::Status CheckPeerCertificate(const grpc::ServerContext& ctx, absl::string_view who) {
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  // With a client CA the handshake already refused a certificate that does not verify,
  // so one that is there was verified.
  if (auth != nullptr && !auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME).empty()) {
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      absl::StrCat(who, " must present a TLS client certificate from the cluster's CA "
                                        "(--tls-cert/--tls-key signed by the CA of --tls-client-ca)"));
}

// ------------------------------------------------------------------ channels

std::shared_ptr<grpc::ChannelCredentials> ChannelSecurity::Credentials() const {
  return credentials ? credentials : grpc::InsecureChannelCredentials();
}

void ChannelSecurity::Apply(grpc::ChannelArguments* args) const {
  if (tls() && !server_name.empty()) args->SetSslTargetNameOverride(server_name);
}

absl::StatusOr<ChannelSecurity> MakeChannelSecurity(const ChannelTlsFiles& files) {
  ChannelSecurity out;
  if (files.ca_file.empty()) {
    if (!files.server_name.empty()) return absl::InvalidArgumentError("--tls-server-name needs --tls-ca");
    return out;  // plain text; a certificate of our own is for the servers this process runs
  }
  grpc::SslCredentialsOptions options;
  auto ca = ReadCertificateFile(files.ca_file, "TLS CA");
  if (!ca.ok()) return ca.status();
  options.pem_root_certs = *std::move(ca);
  if (!files.cert_file.empty() || !files.key_file.empty()) {
    if (absl::Status s = ReadKeyPair(files.cert_file, files.key_file, &options.pem_cert_chain,
                                     &options.pem_private_key);
        !s.ok()) {
      return s;
    }
  }
  out.credentials = grpc::SslCredentials(options);
  if (!out.credentials) return absl::InternalError("gRPC refused the TLS channel credentials");
  out.server_name = files.server_name;
  return out;
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, const ChannelSecurity& security,
                                           grpc::ChannelArguments args) {
  security.Apply(&args);
  return grpc::CreateCustomChannel(address, security.Credentials(), args);
}

// ------------------------------------------------------------------ bearer tokens

absl::Status CheckToken(absl::string_view token, absl::string_view what) {
  if (token.size() < kMinTokenBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": a token shorter than ", kMinTokenBytes, " characters (too easy to guess)"));
  }
  if (token.size() > kMaxTokenBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": a token longer than ", kMaxTokenBytes, " characters"));
  }
  for (char c : token) {
    if (c <= ' ' || c > '~') {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": a token holds a space or a character that is not visible ASCII"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<BearerTokens> BearerTokens::Parse(absl::string_view text, absl::string_view what) {
  BearerTokens out;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = Trim(line);
    if (line.empty() || line.front() == '#') continue;
    // The line number, never the token.
    if (absl::Status s = CheckToken(line, absl::StrCat(what, " line ", line_no)); !s.ok()) return s;
    out.tokens_.emplace_back(line);
  }
  if (out.tokens_.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": no token in it"));
  return out;
}

absl::StatusOr<BearerTokens> BearerTokens::FromFile(const std::string& path) {
  auto text = ReadSmallFile(path, "token file", /*secret=*/true);
  if (!text.ok()) return text.status();
  return Parse(*text, absl::StrCat("token file ", path));
}

bool BearerTokens::Accepts(absl::string_view token) const {
  bool any = false;
  for (const std::string& t : tokens_) any |= ConstantTimeEquals(token, t);
  return any;
}

grpc::Status BearerTokens::Check(const grpc::ServerContext& ctx) const {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this coordinator requires a bearer token (mesa: --token-file or MESA_TOKEN)");
  }
  absl::string_view value(it->second.data(), it->second.size());
  constexpr absl::string_view kScheme = "Bearer ";
  if (value.size() <= kScheme.size() || !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the authorization metadata is not 'Bearer <token>'");
  }
  if (!Accepts(Trim(value.substr(kScheme.size())))) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the bearer token is not accepted by this coordinator");
  }
  return grpc::Status::OK;
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  auto tokens = BearerTokens::FromFile(path);
  if (!tokens.ok()) return tokens.status();
  return tokens->tokens_.front();
}

}  // namespace mesa::rpc
