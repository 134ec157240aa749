// Transport security of the distributed runtime, with real gRPC servers on 127.0.0.1
// and a throwaway PKI made by scripts/make_test_certs.sh (openssl): a coordinator with
// TLS, --tls-client-ca (workers need a certificate from the cluster's CA) and bearer
// tokens; workers with mutual TLS. Checks:
//   - every JobService method (read from the service descriptor, so a new method is
//     covered) without a token, with a wrong token, or with another scheme:
//     UNAUTHENTICATED, and no job is created;
//   - a plain-text client against the TLS port: UNAVAILABLE, no job; a token is not
//     sent in plain text off loopback;
//   - a worker whose certificate comes from a foreign CA cannot register; one with no
//     certificate is refused (UNAUTHENTICATED), and so are raw Register/Heartbeat calls;
//   - FetchKv and RunChunk on a worker: refused in the handshake without a certificate
//     from the CA (foreign, none, plain text), reaching the handler with one;
//   - the happy path: mTLS + token, two workers, spread placement (chunk K/V moves
//     between workers over mTLS): every record equals a plain-text cluster's;
//   - the store keeps documents and results owner-only (dirs 0700, files 0600, the
//     SQLite WAL/SHM included) under a umask of 022;
//   - --health-listen answers in plain text, mirrors the main server, and turns
//     NOT_SERVING on a worker's drain and the coordinator's shutdown.
// Skips visibly without the shared model (MESA_SHARED_DIR).
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/lib/client.h"
#include "client/lib/grpc_connection.h"
#include "coordinator/coordinator_core.h"
#include "coordinator/coordinator_service.h"
#include "engine/model.h"
#include "google/protobuf/descriptor.h"
#include "grpc/grpc.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "mesa/v1/job_service.grpc.pb.h"
#include "mesa/v1/worker_service.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "rpc/health_server.h"
#include "rpc/security.h"
#include "tests/runtime/loopback_cluster.h"
#include "tests/testing/temp_path.h"
#include "tests/testing/test_certs.h"
#include "worker/worker_rpc.h"

namespace mesa {
namespace {

using grpc::StatusCode;
constexpr char kToken[] = "mesa-test-token-7f3a9c1e5b";

using testing::SharedPath;
using testing::WaitFor;

std::string Cert(const std::string& name) { return testing::TestCertsDir() + "/" + name; }

void Deadline(grpc::ClientContext& ctx, double seconds = 10) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
}

rpc::ChannelSecurity Channel(const std::string& ca, const std::string& cert = "", const std::string& key = "") {
  auto c = rpc::MakeChannelSecurity({ca.empty() ? "" : Cert(ca), cert.empty() ? "" : Cert(cert),
                                     key.empty() ? "" : Cert(key)});
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : rpc::ChannelSecurity{};
}

int FileMode(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int>(st.st_mode & 07777);
}

// ------------------------------------------------------------------ a cluster in-process

struct ClusterOptions {
  bool secure = true;  // TLS + client CA + tokens; false: plain text, no tokens
  coord::Placement placement = coord::Placement::kSpread;
};

// The shared in-process cluster (tests/runtime/loopback_cluster.h) with health listeners,
// secured with the test PKI and tokens unless `secure` is false. Workers are added by the
// tests: AddWorker() presents the cluster's worker certificate.
class Cluster : public testing::LoopbackCluster {
 public:
  Cluster(const Model& model, ClusterOptions options)
      : LoopbackCluster(model, Options(options)), secure_(options.secure) {}

  // Starts a worker with the cluster's certificate and waits until it is registered.
  worker::WorkerProcess* AddWorker() { return LoopbackCluster::AddWorker("worker"); }

  // A client connection: TLS to the coordinator when the cluster is secure, and `token`.
  std::unique_ptr<client::Client> Client(const std::string& token) {
    client::ConnectionOptions co;
    if (secure_) co.credentials = Channel("ca.pem").credentials;
    co.bearer_token = token;
    auto c = client::MakeGrpcConnection(address(), co);
    EXPECT_TRUE(c.ok()) << c.status();
    client::ClientOptions opts;
    opts.retry.max_attempts = 2;
    return c.ok() ? std::make_unique<client::Client>(*std::move(c), opts) : nullptr;
  }

 private:
  static testing::LoopbackClusterOptions Options(const ClusterOptions& o) {
    testing::LoopbackClusterOptions l;
    l.workers = 0;
    l.placement = o.placement;
    l.health = true;
    if (!o.secure) return l;
    l.configure_server = [](coord::CoordinatorServerOptions& so) -> absl::Status {
      auto server = rpc::MakeServerSecurity({Cert("coordinator.pem"), Cert("coordinator.key"), Cert("ca.pem")},
                                            rpc::ClientCertMode::kVerifyIfPresented);
      if (!server.ok()) return server.status();
      so.security = *server;
      so.worker_channels = Channel("ca.pem", "coordinator.pem", "coordinator.key");
      auto tokens = rpc::BearerTokens::Parse(absl::StrCat("# test\n", kToken, "\nanother-token-0123456789\n"), "t");
      if (!tokens.ok()) return tokens.status();
      so.tokens = std::make_shared<const rpc::BearerTokens>(*tokens);
      return absl::OkStatus();
    };
    // A worker presenting `cert` (a name in the test PKI; "" = no certificate) to the
    // coordinator and other workers; its own server has its certificate if it has one
    // (else the CA's worker certificate: what matters is what it presents as a client).
    l.configure_worker = [](worker::WorkerProcessOptions& wo, const std::string& cert) -> absl::Status {
      const std::string server_cert = cert.empty() ? "worker" : cert;
      auto server = rpc::MakeServerSecurity(
          {Cert(server_cert + ".pem"), Cert(server_cert + ".key"), Cert("ca.pem")}, rpc::ClientCertMode::kRequire);
      if (!server.ok()) return server.status();
      wo.security = *server;
      wo.channels = cert.empty() ? Channel("ca.pem") : Channel("ca.pem", cert + ".pem", cert + ".key");
      return absl::OkStatus();
    };
    return l;
  }
  const bool secure_;
};

// ------------------------------------------------------------------ raw calls

grpc::ByteBuffer Empty() {
  grpc::Slice slice("");
  return grpc::ByteBuffer(&slice, 1);
}

bool Await(grpc::CompletionQueue& cq) {
  void* tag = nullptr;
  bool ok = false;
  return cq.Next(&tag, &ok) && ok;
}

// Calls `method` as a generic stream: one empty message, then half-close; the status.
grpc::Status GenericCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                         const std::string& authorization) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  Deadline(ctx);
  if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
  auto call = stub.PrepareCall(&ctx, method, &cq);
  int tag = 0;
  call->StartCall(&tag);
  Await(cq);
  call->Write(Empty(), &tag);
  Await(cq);
  call->WritesDone(&tag);
  Await(cq);
  grpc::Status status;
  call->Finish(&status, &tag);
  Await(cq);
  cq.Shutdown();
  while (Await(cq)) {
  }
  return status;
}

std::string JobLine(const std::string& id, const std::string& doc) {
  return nlohmann::json{{"custom_id", id}, {"document", doc}}.dump();
}

// ------------------------------------------------------------------ the fixture

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    static const bool grpc_held = (grpc_init(), true);  // see coordinator_rpc_test.cc
    (void)grpc_held;
    ::umask(022);  // the usual one: files the store makes must be 0600 despite it
    const std::string path = SharedPath("models/stories260K-f32.gguf");
    if (path.empty()) return;
    auto m = LoadModel(path);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "shared model not found (set MESA_SHARED_DIR=../shared)";
    ASSERT_FALSE(testing::TestCertsDir().empty());
  }
  const Model& model() const { return *model_; }
  static const Model* model_;
};
const Model* SecurityTest::model_ = nullptr;

int CountJobs(Cluster& c) {
  auto jobs = c.core().ListJobs(0);
  EXPECT_TRUE(jobs.ok()) << jobs.status();
  return jobs.ok() ? static_cast<int>(jobs->size()) : -1;
}

TEST_F(SecurityTest, EveryJobServiceMethodNeedsAToken) {
  Cluster cluster(model(), {});
  ASSERT_TRUE(cluster.ok());
  auto channel = rpc::MakeChannel(cluster.address(), Channel("ca.pem"));
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("mesa.v1.JobService");
  ASSERT_NE(service, nullptr);
  ASSERT_GE(service->method_count(), 6);
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string method = absl::StrCat("/mesa.v1.JobService/", service->method(i)->name());
    for (const std::string& auth : {std::string(), absl::StrCat("Bearer wrong-", kToken), std::string("Bearer "),
                                    absl::StrCat("Basic ", kToken), absl::StrCat("Bearer ", kToken, "x")}) {
      grpc::Status s = GenericCall(channel, method, auth);
      EXPECT_EQ(s.error_code(), StatusCode::UNAUTHENTICATED) << method << " with '" << auth << "': " << s.error_message();
      EXPECT_EQ(s.error_message().find(kToken), std::string::npos) << s.error_message();
    }
  }
  // The client library: no token, a wrong one, then the right one.
  const std::vector<std::string> lines = {JobLine("a", "Once upon a time there was a dog.")};
  auto job = cluster.Client("")->SubmitLines(lines, {});
  EXPECT_EQ(job.status().code(), absl::StatusCode::kUnauthenticated) << job.status();
  job = cluster.Client("not-the-token-0123456789")->SubmitLines(lines, {});
  EXPECT_EQ(job.status().code(), absl::StatusCode::kUnauthenticated) << job.status();
  EXPECT_EQ(cluster.Client("")->List().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(CountJobs(cluster), 0);
  auto list = cluster.Client(kToken)->List();
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_TRUE(list->empty());
  // Either accepted token works.
  EXPECT_TRUE(cluster.Client("another-token-0123456789")->List().ok());
}

TEST_F(SecurityTest, PlainTextClientAgainstTlsServerFails) {
  Cluster cluster(model(), {});
  ASSERT_TRUE(cluster.ok());
  auto stub = v1::JobService::NewStub(rpc::MakeChannel(cluster.address(), {}));
  v1::Job job;
  grpc::ClientContext ctx;
  Deadline(ctx, 5);
  ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
  auto writer = stub->CreateJob(&ctx, &job);
  v1::CreateJobRequest msg;
  msg.mutable_options()->set_max_tokens(4);
  writer->Write(msg);
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
  // Through the library (a token to loopback in plain text is allowed, and useless here).
  client::ConnectionOptions co;
  co.bearer_token = kToken;
  auto conn = client::MakeGrpcConnection(cluster.address(), co);
  ASSERT_TRUE(conn.ok()) << conn.status();
  auto created = (*conn)->CreateJob({}, {JobLine("a", "A dog.")}, absl::Seconds(5));
  EXPECT_EQ(created.status().code(), absl::StatusCode::kUnavailable) << created.status();
  EXPECT_EQ(CountJobs(cluster), 0);
  // Off loopback a token is not sent in plain text at all.
  auto remote = client::MakeGrpcConnection("10.255.255.1:50051", co);
  EXPECT_EQ(remote.status().code(), absl::StatusCode::kFailedPrecondition) << remote.status();
  EXPECT_EQ(remote.status().message().find(kToken), std::string::npos);
  co.allow_plaintext_token = true;
  EXPECT_TRUE(client::MakeGrpcConnection("10.255.255.1:50051", co).ok());
}

TEST_F(SecurityTest, WorkersNeedACertificateFromTheClusterCa) {
  Cluster cluster(model(), {});
  ASSERT_TRUE(cluster.ok());
  // A certificate from another CA: the handshake fails; the worker never registers.
  auto foreign = cluster.StartWorker("foreign", /*register_timeout_ms=*/1500);
  ASSERT_TRUE(foreign.ok()) << foreign.status();
  absl::Status exit = (*foreign)->Wait();
  EXPECT_EQ(exit.code(), absl::StatusCode::kUnavailable) << exit;
  EXPECT_EQ(cluster.core().stats().workers, 0);
  foreign->reset();
  // No certificate: the handshake passes (clients of the JobService have none), the
  // registry refuses, and the worker stops at once.
  auto none = cluster.StartWorker("", /*register_timeout_ms=*/10000);
  ASSERT_TRUE(none.ok()) << none.status();
  exit = (*none)->Wait();
  EXPECT_EQ(exit.code(), absl::StatusCode::kFailedPrecondition) << exit;
  EXPECT_NE(exit.message().find("client certificate"), std::string::npos) << exit;
  EXPECT_EQ(cluster.core().stats().workers, 0);
  none->reset();
  // Raw registry calls without a certificate.
  auto registry = v1::WorkerRegistry::NewStub(rpc::MakeChannel(cluster.address(), Channel("ca.pem")));
  {
    v1::RegisterRequest req;
    req.set_address("127.0.0.1:1");
    req.set_model_fingerprint("x");
    v1::RegisterResponse resp;
    grpc::ClientContext ctx;
    Deadline(ctx);
    EXPECT_EQ(registry->Register(&ctx, req, &resp).error_code(), StatusCode::UNAUTHENTICATED);
  }
  // A real worker registers; its heartbeats from a process without a certificate are refused.
  worker::WorkerProcess* w = cluster.AddWorker();
  ASSERT_NE(w, nullptr);
  // The coordinator numbers workers from 1 (the refused ones never reached it): "w1-"
  // and the worker's name (the third started here).
  const std::string id = "w1-w2";
  ASSERT_EQ(cluster.core().stats().workers_idle, 1);
  {
    v1::HeartbeatRequest req;
    req.set_worker_id(id);
    req.set_draining(true);
    v1::HeartbeatResponse resp;
    grpc::ClientContext ctx;
    Deadline(ctx);
    EXPECT_EQ(registry->Heartbeat(&ctx, req, &resp).error_code(), StatusCode::UNAUTHENTICATED);
    v1::DeregisterRequest dreq;
    dreq.set_worker_id(id);
    v1::DeregisterResponse dresp;
    grpc::ClientContext dctx;
    Deadline(dctx);
    EXPECT_EQ(registry->Deregister(&dctx, dreq, &dresp).error_code(), StatusCode::UNAUTHENTICATED);
  }
  // Neither call changed anything: still there, not draining.
  EXPECT_EQ(cluster.core().stats().workers, 1);
  EXPECT_EQ(cluster.core().stats().workers_idle, 1);
  // The same calls with the cluster's certificate do reach the core.
  auto member = v1::WorkerRegistry::NewStub(
      rpc::MakeChannel(cluster.address(), Channel("ca.pem", "client.pem", "client.key")));
  v1::HeartbeatRequest req;
  req.set_worker_id(id);
  v1::HeartbeatResponse resp;
  grpc::ClientContext ctx;
  Deadline(ctx);
  ASSERT_TRUE(member->Heartbeat(&ctx, req, &resp).ok());
  EXPECT_TRUE(resp.known());
}

TEST_F(SecurityTest, WorkerServiceNeedsACertificateFromTheClusterCa) {
  Cluster cluster(model(), {});
  ASSERT_TRUE(cluster.ok());
  worker::WorkerProcess* w = cluster.AddWorker();
  ASSERT_NE(w, nullptr);
  auto fetch = [&](const rpc::ChannelSecurity& security) {
    auto stub = v1::WorkerService::NewStub(rpc::MakeChannel(w->address(), security));
    v1::FetchKvRequest req;  // no key: INVALID_ARGUMENT once past the handshake
    grpc::ClientContext ctx;
    Deadline(ctx, 5);
    auto reader = stub->FetchKv(&ctx, req);
    v1::KvMessage msg;
    while (reader->Read(&msg)) {
    }
    return reader->Finish();
  };
  grpc::Status s = fetch(Channel("ca.pem", "foreign.pem", "foreign.key"));
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
  s = fetch(Channel("ca.pem"));
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
  s = fetch({});
  EXPECT_EQ(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
  s = fetch(Channel("ca.pem", "client.pem", "client.key"));
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << s.error_message();
  // RunChunk with a foreign certificate does not reach the engine either.
  auto stub = v1::WorkerService::NewStub(rpc::MakeChannel(w->address(), Channel("ca.pem", "foreign.pem", "foreign.key")));
  v1::RunChunkRequest req;
  v1::RunChunkResponse resp;
  grpc::ClientContext ctx;
  Deadline(ctx, 5);
  EXPECT_EQ(stub->RunChunk(&ctx, req, &resp).error_code(), StatusCode::UNAVAILABLE);
}

// Runs `lines` on `cluster` (2 workers) and returns the records by custom_id.
std::map<std::string, nlohmann::json> RunJob(Cluster& cluster, const std::vector<std::string>& lines,
                                             const std::string& token) {
  std::map<std::string, nlohmann::json> out;
  for (int i = 0; i < 2; ++i) {
    if (cluster.AddWorker() == nullptr) return out;
  }
  auto client = cluster.Client(token);
  client::JobOptions o;
  o.max_tokens = 8;
  auto job = client->SubmitLines(lines, o);
  EXPECT_TRUE(job.ok()) << job.status();
  if (!job.ok()) return out;
  auto done = client->Wait(job->id, absl::Seconds(120));
  EXPECT_TRUE(done.ok()) << done.status();
  if (!done.ok()) return out;
  EXPECT_EQ(done->job.status, "completed");
  const std::string path = testing::UniqueTempPath(job->id + ".out.jsonl");
  auto n = client->Results(job->id, "mesa", path);
  EXPECT_TRUE(n.ok()) << n.status();
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) {
    auto j = nlohmann::json::parse(line);
    out[j.value("custom_id", "")] = j;
  }
  return out;
}

TEST_F(SecurityTest, MutualTlsAndTokenRunAJobLikePlainText) {
  // Documents over the model's 512-token context are chunked; spread placement computes
  // chunks on both workers and moves K/V between them (FetchKv over mutual TLS).
  std::string text;
  if (const std::string p = SharedPath("text/tinystories_valid_part1.txt"); !p.empty()) {
    std::ifstream f(p);
    text.assign(std::istreambuf_iterator<char>(f), {});
  }
  while (text.size() < 20000) text += "Once upon a time there was a little dog. It liked to run and play in the sun. ";
  const std::vector<std::string> lines = {JobLine("short", "Once upon a time there was a little dog."),
                                          JobLine("mid", text.substr(1000, 3000)),
                                          JobLine("long", text.substr(6000, 7000))};
  std::map<std::string, nlohmann::json> plain, secure;
  {
    Cluster cluster(model(), {.secure = false});
    ASSERT_TRUE(cluster.ok());
    plain = RunJob(cluster, lines, "");
  }
  {
    Cluster cluster(model(), {});
    ASSERT_TRUE(cluster.ok());
    secure = RunJob(cluster, lines, kToken);
    // The store: owner-only, the SQLite WAL and SHM included, and the results file.
    const std::string store = cluster.store();
    EXPECT_EQ(FileMode(store), 0700);
    EXPECT_EQ(FileMode(store + "/results"), 0700);
    for (const char* f : {"/mesa.db", "/mesa.db-wal", "/mesa.db-shm"}) EXPECT_EQ(FileMode(store + f), 0600) << f;
    int results = 0;
    for (const auto& e : std::filesystem::directory_iterator(store + "/results")) {
      EXPECT_EQ(FileMode(e.path().string()), 0600) << e.path();
      ++results;
    }
    EXPECT_EQ(results, 1);
  }
  ASSERT_EQ(plain.size(), lines.size());
  ASSERT_EQ(secure.size(), lines.size());
  for (const auto& [id, want] : plain) {
    ASSERT_TRUE(secure.count(id)) << id;
    const nlohmann::json& got = secure.at(id);
    EXPECT_EQ(want.value("status", ""), "ok") << id << ": " << want.dump();
    for (const char* field : {"status", "text", "prompt_tokens", "generated_tokens"}) {
      EXPECT_EQ(got.value(field, nlohmann::json()), want.value(field, nlohmann::json())) << id << "." << field;
    }
  }
}

TEST_F(SecurityTest, HealthPortsMirrorTheServers) {
  Cluster cluster(model(), {});
  ASSERT_TRUE(cluster.ok());
  worker::WorkerProcess* w = cluster.AddWorker();
  ASSERT_NE(w, nullptr);
  const std::string coord_health = cluster.server().health_address();
  const std::string worker_health = w->health_address();
  ASSERT_FALSE(coord_health.empty());
  ASSERT_FALSE(worker_health.empty());
  auto check = [](const std::string& address, const rpc::ChannelSecurity& security = {}) {
    auto s = rpc::CheckHealth(rpc::MakeChannel(address, security), "", 5000);
    return s.ok() ? *s : -static_cast<int>(s.status().code());
  };
  EXPECT_EQ(check(coord_health), 1);
  EXPECT_EQ(check(worker_health), 1);
  // The main port's health service stays open to TLS callers without token or certificate.
  EXPECT_EQ(check(cluster.address(), Channel("ca.pem")), 1);
  // The health port serves nothing else.
  auto jobs = v1::JobService::NewStub(rpc::MakeChannel(coord_health, {}));
  v1::ListJobsRequest req;
  v1::ListJobsResponse resp;
  grpc::ClientContext ctx;
  Deadline(ctx);
  EXPECT_EQ(jobs->ListJobs(&ctx, req, &resp).error_code(), StatusCode::UNIMPLEMENTED);
  // A draining worker and a coordinator shutting down say NOT_SERVING.
  w->Drain();
  EXPECT_EQ(check(worker_health), 2);
  cluster.server().Shutdown();
  EXPECT_EQ(check(coord_health), 2);
}

}  // namespace
}  // namespace mesa
