// rpc/security.h and rpc/health_server.h: PEM files refused with errors naming them
// (missing, not PEM, key of another certificate, secret readable by others), token
// files (comments, short tokens, no token, never the token in a message), constant-time
// comparison, and real TLS handshakes on loopback against a health-only server: the
// right CA and client certificate pass; a foreign certificate, no certificate, plain
// text or the wrong CA fail.
#include "rpc/security.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "rpc/health_server.h"
#include "tests/testing/temp_path.h"
#include "tests/testing/test_certs.h"

namespace mesa::rpc {
namespace {

std::string Cert(const std::string& name) { return testing::TestCertsDir() + "/" + name; }

std::string WriteFile(const std::string& name, const std::string& text, mode_t mode = 0600) {
  const std::string path = testing::UniqueTempPath(name);
  std::ofstream(path) << text;
  chmod(path.c_str(), mode);
  return path;
}

std::string CopyFile(const std::string& name, const std::string& from, mode_t mode) {
  const std::string path = testing::UniqueTempPath(name);
  std::filesystem::copy_file(from, path, std::filesystem::copy_options::overwrite_existing);
  chmod(path.c_str(), mode);
  return path;
}

TEST(ServerSecurityTest, PlainTextWithoutFiles) {
  auto s = MakeServerSecurity({}, ClientCertMode::kRequire);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->tls());
  EXPECT_FALSE(s->client_ca);
}

TEST(ServerSecurityTest, GoodFiles) {
  auto s = MakeServerSecurity({Cert("worker.pem"), Cert("worker.key"), Cert("ca.pem")}, ClientCertMode::kRequire);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->tls());
  EXPECT_TRUE(s->client_ca);
}

TEST(ServerSecurityTest, BadFilesAreNamed) {
  const std::string missing = testing::UniqueTempPath("nope.pem");
  auto s = MakeServerSecurity({missing, Cert("worker.key")}, ClientCertMode::kRequire);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.status().message().find(missing), std::string::npos) << s.status();

  const std::string junk = WriteFile("junk.pem", "hello, not a certificate\n", 0644);
  s = MakeServerSecurity({junk, Cert("worker.key")}, ClientCertMode::kRequire);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find(junk), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("no PEM certificate"), std::string::npos) << s.status();

  // A certificate given as the key: not a private key.
  const std::string cert_as_key = CopyFile("cert_as_key", Cert("worker.pem"), 0600);
  s = MakeServerSecurity({Cert("worker.pem"), cert_as_key}, ClientCertMode::kRequire);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("no unencrypted PEM private key"), std::string::npos) << s.status();

  // The key of another certificate.
  s = MakeServerSecurity({Cert("worker.pem"), Cert("coordinator.key")}, ClientCertMode::kRequire);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("does not match the certificate"), std::string::npos) << s.status();

  // A client CA file that is no certificate.
  s = MakeServerSecurity({Cert("worker.pem"), Cert("worker.key"), junk}, ClientCertMode::kRequire);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("TLS client CA " + junk), std::string::npos) << s.status();

  // Half a pair, or a client CA on a plain-text server.
  EXPECT_EQ(MakeServerSecurity({Cert("worker.pem"), ""}, ClientCertMode::kRequire).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeServerSecurity({"", "", Cert("ca.pem")}, ClientCertMode::kRequire).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ServerSecurityTest, KeyReadableByOthersIsRefused) {
  const std::string key = CopyFile("open.key", Cert("worker.key"), 0644);
  auto s = MakeServerSecurity({Cert("worker.pem"), key}, ClientCertMode::kRequire);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(s.status().message().find("0644"), std::string::npos) << s.status();
  chmod(key.c_str(), 0640);  // group access is allowed
  EXPECT_TRUE(MakeServerSecurity({Cert("worker.pem"), key}, ClientCertMode::kRequire).ok());
}

TEST(ChannelSecurityTest, Files) {
  auto c = MakeChannelSecurity({});
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->tls());
  c = MakeChannelSecurity({Cert("ca.pem"), Cert("client.pem"), Cert("client.key"), "localhost"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->tls());
  EXPECT_EQ(MakeChannelSecurity({testing::UniqueTempPath("none.pem")}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(MakeChannelSecurity({"", "", "", "localhost"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeChannelSecurity({Cert("ca.pem"), Cert("client.pem"), Cert("worker.key")}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ------------------------------------------------------------------ tokens

TEST(BearerTokensTest, ParseSkipsCommentsAndBlankLines) {
  auto t = BearerTokens::Parse("# the ops team\n\n  0123456789abcdef-one  \r\n#x\nsecond-token-0123456789\n", "f");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->size(), 2u);
  EXPECT_TRUE(t->Accepts("0123456789abcdef-one"));
  EXPECT_TRUE(t->Accepts("second-token-0123456789"));
  EXPECT_FALSE(t->Accepts("0123456789abcdef-on"));
  EXPECT_FALSE(t->Accepts("0123456789abcdef-one1"));
  EXPECT_FALSE(t->Accepts(""));
  EXPECT_FALSE(t->Accepts("# the ops team"));
}

TEST(BearerTokensTest, BadTokensAreRefusedWithoutShowingThem) {
  auto t = BearerTokens::Parse("0123456789abcdef\nshort-secret\n", "token file X");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("token file X line 2"), std::string::npos) << t.status();
  EXPECT_EQ(t.status().message().find("short-secret"), std::string::npos) << t.status();
  t = BearerTokens::Parse("a token with spaces in it\n", "f");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.status().message().find("spaces in"), std::string::npos) << t.status();
  EXPECT_EQ(BearerTokens::Parse("# only a comment\n\n", "f").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BearerTokens::Parse("", "f").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BearerTokensTest, FileMustNotBeReadableByOthers) {
  const std::string path = WriteFile("tokens", "0123456789abcdef0123\n", 0644);
  auto t = BearerTokens::FromFile(path);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(t.status().message().find(path), std::string::npos) << t.status();
  chmod(path.c_str(), 0600);
  t = BearerTokens::FromFile(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->Accepts("0123456789abcdef0123"));
  auto first = ReadTokenFile(path);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, "0123456789abcdef0123");
  EXPECT_EQ(ReadTokenFile(path + ".missing").status().code(), absl::StatusCode::kNotFound);
}

TEST(ConstantTimeEqualsTest, Basics) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("ab", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(ConstantTimeEquals(absl::string_view("a\0", 2), "a"));
}

// ------------------------------------------------------------------ handshakes

// A health-only server with `security`, SERVING.
struct TlsHealthServer {
  explicit TlsHealthServer(const ServerSecurity& security) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder b;
    b.RegisterCallbackGenericService(&unimplemented);  // a server needs some service to start
    b.AddListeningPort("127.0.0.1:0", security.Credentials(), &port);
    server = b.BuildAndStart();
    if (server) server->GetHealthCheckService()->SetServingStatus(true);
  }
  ~TlsHealthServer() {
    if (server) server->Shutdown(std::chrono::system_clock::now());
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
  int port = 0;
  grpc::CallbackGenericService unimplemented;
  std::unique_ptr<grpc::Server> server;
};

absl::StatusOr<int> Probe(const std::string& address, const ChannelTlsFiles& files) {
  auto c = MakeChannelSecurity(files);
  if (!c.ok()) return c.status();
  return CheckHealth(MakeChannel(address, *c), "", 5000);
}

TEST(HandshakeTest, MutualTlsRequired) {
  auto s = MakeServerSecurity({Cert("worker.pem"), Cert("worker.key"), Cert("ca.pem")}, ClientCertMode::kRequire);
  ASSERT_TRUE(s.ok()) << s.status();
  TlsHealthServer server(*s);
  ASSERT_TRUE(server.server);
  auto ok = Probe(server.address(), {Cert("ca.pem"), Cert("client.pem"), Cert("client.key")});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, 1);
  // By name instead of address (the certificate holds DNS:localhost too).
  ok = Probe(server.address(), {Cert("ca.pem"), Cert("client.pem"), Cert("client.key"), "localhost"});
  EXPECT_TRUE(ok.ok()) << ok.status();
  // A name the certificate does not hold.
  EXPECT_EQ(Probe(server.address(), {Cert("ca.pem"), Cert("client.pem"), Cert("client.key"), "elsewhere"})
                .status().code(),
            absl::StatusCode::kUnavailable);
  // A certificate from another CA, none at all, plain text, or trusting the wrong CA.
  EXPECT_EQ(Probe(server.address(), {Cert("ca.pem"), Cert("foreign.pem"), Cert("foreign.key")}).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(Probe(server.address(), {Cert("ca.pem")}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Probe(server.address(), {}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Probe(server.address(), {Cert("foreign-ca.pem"), Cert("client.pem"), Cert("client.key")}).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(HandshakeTest, ClientCertificateOptional) {
  auto s = MakeServerSecurity({Cert("coordinator.pem"), Cert("coordinator.key"), Cert("ca.pem")},
                              ClientCertMode::kVerifyIfPresented);
  ASSERT_TRUE(s.ok()) << s.status();
  TlsHealthServer server(*s);
  ASSERT_TRUE(server.server);
  auto ok = Probe(server.address(), {Cert("ca.pem")});  // no client certificate: fine here
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(Probe(server.address(), {Cert("ca.pem"), Cert("client.pem"), Cert("client.key")}).ok());
  // One that does not verify fails the handshake.
  EXPECT_EQ(Probe(server.address(), {Cert("ca.pem"), Cert("foreign.pem"), Cert("foreign.key")}).status().code(),
            absl::StatusCode::kUnavailable);
}

// ------------------------------------------------------------------ health server

TEST(HealthServerTest, ServingStatusFollowsTheOwner) {
  auto h = HealthServer::Start("127.0.0.1:0");
  ASSERT_TRUE(h.ok()) << h.status();
  auto channel = MakeChannel((*h)->address(), ChannelSecurity{});
  auto st = CheckHealth(channel, "", 5000);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(*st, 2);  // NOT_SERVING until the owner says so
  (*h)->SetServing(true);
  st = CheckHealth(channel, "", 5000);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(*st, 1);
  // Only the health service is there.
  EXPECT_EQ(CheckHealth(channel, "mesa.v1.JobService", 5000).status().code(), absl::StatusCode::kNotFound);
  (*h)->Shutdown();
  EXPECT_FALSE(CheckHealth(channel, "", 2000).ok());
  // An address of no interface here (TEST-NET-1).
  EXPECT_EQ(HealthServer::Start("192.0.2.1:0").status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace mesa::rpc
