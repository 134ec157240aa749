// The distributed runtime's gRPC surface in one process: a real CoordinatorServer (over
// a CoordinatorCore on a temporary store) and real WorkerProcess servers (1 thread each)
// on 127.0.0.1, with the shared stories260K model (trained context 512: documents over
// ~500 tokens are chunked). Checks, through the raw generated stubs and mesa::client:
//   - bad RPCs answer the right code and change nothing (jobs, workers);
//   - grpc.health.v1 answers SERVING on the coordinator and a worker, and server
//     reflection lists the services (both through GenericStub with hand-encoded
//     messages: Debian's gRPC ships neither the health stubs nor the reflection client);
//   - WatchJob streams events with non-decreasing counts and ends after the terminal one;
//   - 64 concurrent clients: every job completes, one result per input line, each equal
//     to `mesa run`'s (jobs::RunBatch + LongContextGenerator) for the same document;
//     prints p50/p99 GetJob latency;
//   - fairness: a short job submitted after a long one finishes first; a job whose lines
//     all fail completes at once without stalling the others;
//   - CreateJob with one request_id (sequential and concurrent) makes one job;
//   - cancel mid-job: cancelled, finished results still readable, no K/V left on workers.
// Skips visibly without the shared model (MESA_SHARED_DIR).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/lib/client.h"
#include "client/lib/grpc_connection.h"
#include "kernels/cpu/cpu_backend.h"
#include "coordinator/coordinator_core.h"
#include "coordinator/coordinator_service.h"
#include "engine/model.h"
#include "engine/model_fingerprint.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpc/grpc.h"
#include "gtest/gtest.h"
#include "jobs/batch_runner.h"
#include "jobs/long_generator.h"
#include "jobs/templates.h"
#include "mesa/v1/job_service.grpc.pb.h"
#include "mesa/v1/worker_service.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/runtime/loopback_cluster.h"
#include "tests/testing/temp_path.h"
#include "worker/peer_kv.h"
#include "worker/worker_rpc.h"

namespace mesa {
namespace {

using Clock = std::chrono::steady_clock;
using grpc::StatusCode;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

bool Terminal(const std::string& status) {
  return status == "completed" || status == "failed" || status == "cancelled" || status == "expired";
}

// ------------------------------------------------------------------ a cluster in-process

using Cluster = testing::LoopbackCluster;
using ClusterOptions = testing::LoopbackClusterOptions;
using testing::Deadline;
using testing::SharedPath;
using testing::WaitFor;

std::shared_ptr<grpc::Channel> Channel(const std::string& address, int max_send = 128 << 20) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(max_send);
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// ------------------------------------------------------------------ job helpers

v1::CreateJobRequest OptionsMsg(const v1::JobOptions& o) {
  v1::CreateJobRequest m;
  *m.mutable_options() = o;
  return m;
}
v1::CreateJobRequest LinesMsg(const std::vector<std::string>& lines) {
  v1::CreateJobRequest m;
  for (const auto& l : lines) m.mutable_lines()->add_lines(l);
  return m;
}
v1::JobOptions Opts(int64_t max_tokens = 6) {
  v1::JobOptions o;
  o.set_max_tokens(max_tokens);
  return o;
}

grpc::Status RawCreate(v1::JobService::Stub& stub, const std::vector<v1::CreateJobRequest>& msgs,
                       v1::Job* job = nullptr) {
  v1::Job local;
  grpc::ClientContext ctx;
  Deadline(ctx, 60);
  auto writer = stub.CreateJob(&ctx, job ? job : &local);
  for (const auto& m : msgs) {
    if (!writer->Write(m)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

int CountJobs(v1::JobService::Stub& stub) {
  v1::ListJobsRequest req;
  v1::ListJobsResponse resp;
  grpc::ClientContext ctx;
  Deadline(ctx);
  grpc::Status s = stub.ListJobs(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp.jobs_size();
}

grpc::Status RawGet(v1::JobService::Stub& stub, const std::string& id, v1::Job* job) {
  v1::GetJobRequest req;
  req.set_job_id(id);
  grpc::ClientContext ctx;
  Deadline(ctx);
  return stub.GetJob(&ctx, req, job);
}

grpc::Status RawResults(v1::JobService::Stub& stub, const std::string& id, const std::string& format,
                        std::vector<std::string>* lines) {
  v1::GetResultsRequest req;
  req.set_job_id(id);
  req.set_format(format);
  grpc::ClientContext ctx;
  Deadline(ctx);
  auto reader = stub.GetResults(&ctx, req);
  v1::ResultBatch batch;
  while (reader->Read(&batch)) {
    for (const auto& l : batch.lines()) {
      if (lines) lines->push_back(l);
    }
  }
  return reader->Finish();
}

std::string JobLine(const std::string& custom_id, const std::string& document) {
  return nlohmann::json{{"custom_id", custom_id}, {"document", document}}.dump();
}

struct Record {
  std::string custom_id, status, text, error;
  int64_t prompt_tokens = 0, generated_tokens = 0;
};
Record ParseRecord(const std::string& line) {
  Record r;
  auto j = nlohmann::json::parse(line, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << line;
  if (j.is_discarded() || !j.is_object()) return r;
  if (j.contains("custom_id") && j["custom_id"].is_string()) r.custom_id = j["custom_id"];
  r.status = j.value("status", "");
  if (j.contains("text") && j["text"].is_string()) r.text = j["text"];
  if (j.contains("error") && j["error"].is_string()) r.error = j["error"];
  r.prompt_tokens = j.value("prompt_tokens", int64_t{0});
  r.generated_tokens = j.value("generated_tokens", int64_t{0});
  return r;
}

// ------------------------------------------------------------------ the fixture

class CoordinatorRpcTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Hold gRPC's library reference for the whole process. Otherwise each test's last
    // server destructor runs the final grpc_shutdown synchronously, which (gRPC 1.51)
    // joins an executor thread that may sit in a poll with a ~10 s timer: 10 s per test.
    static const bool grpc_held = (grpc_init(), true);
    (void)grpc_held;
    const std::string path = SharedPath("models/stories260K-f32.gguf");
    if (path.empty()) return;
    auto m = LoadModel(path);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m).release();
    const std::string text_path = SharedPath("text/tinystories_valid_part1.txt");
    if (!text_path.empty()) {
      std::ifstream f(text_path, std::ios::binary);
      text_ = new std::string(200000, '\0');
      f.read(text_->data(), static_cast<std::streamsize>(text_->size()));
      text_->resize(static_cast<size_t>(f.gcount()));
    }
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
    delete text_;
    text_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "shared model not found (set MESA_SHARED_DIR=../shared)";
  }
  const Model& model() const { return *model_; }

  // Document `i` of about `bytes` bytes of the shared stories (words, whitespace kept),
  // or a synthetic one when the text is missing. Distinct i give distinct documents.
  static std::string Doc(int i, size_t bytes) {
    std::string src;
    if (text_ && text_->size() > 4 * bytes + 10000) {
      src = *text_;
    } else {
      for (int k = 0; src.size() < 4 * bytes + 20000; ++k) {
        src += absl::StrCat("Once upon a time there was a dog named Dog", k, ". It liked to run and play. ");
      }
    }
    size_t begin = (static_cast<size_t>(i) * 7919 + 13) % (src.size() - bytes - 2000);
    begin = src.find(' ', begin) + 1;
    std::string doc = src.substr(begin, bytes);
    doc.resize(doc.rfind(' '));
    return absl::StrCat("[", i, "] ", doc);
  }

  // `mesa run`'s records for `docs` (one line each), keyed by document.
  std::map<std::string, Record> Reference(const std::vector<std::string>& docs, int64_t max_tokens) {
    static std::atomic<int> n{0};
    const int k = n++;
    const std::string in = testing::UniqueTempPath(absl::StrCat("ref", k, ".jsonl"));
    const std::string out = testing::UniqueTempPath(absl::StrCat("ref", k, ".out.jsonl"));
    {
      std::ofstream f(in);
      for (size_t i = 0; i < docs.size(); ++i) f << JobLine(absl::StrCat("d", i), docs[i]) << "\n";
    }
    CpuBackend backend(2);
    jobs::LongContextGenerator gen(model(), backend, LongContextOptions{}, SamplingParams{});
    jobs::BatchOptions bo;
    bo.chat_template = jobs::ResolveChatTemplate(jobs::ChatTemplate::kAuto, model().chat_template);
    bo.max_tokens = max_tokens;
    auto summary = jobs::RunBatch(in, out, *model().tokenizer, gen, bo);
    EXPECT_TRUE(summary.ok()) << summary.status();
    std::map<std::string, Record> ref;
    std::ifstream f(out);
    for (std::string line; std::getline(f, line);) {
      Record r = ParseRecord(line);
      const size_t i = std::stoul(r.custom_id.substr(1));
      ref[docs.at(i)] = r;
    }
    EXPECT_EQ(ref.size(), docs.size());
    return ref;
  }

  static const Model* model_;
  static std::string* text_;
};
const Model* CoordinatorRpcTest::model_ = nullptr;
std::string* CoordinatorRpcTest::text_ = nullptr;

// Checks one job's result lines against the reference: one record per input line, in
// input order, each equal (status, text, token counts) to `mesa run`'s for its document.
void ExpectMatchesReference(const std::vector<std::string>& result_lines,
                            const std::vector<std::pair<std::string, std::string>>& inputs,  // custom_id, doc
                            const std::map<std::string, Record>& ref, const std::string& what) {
  ASSERT_EQ(result_lines.size(), inputs.size()) << what;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Record got = ParseRecord(result_lines[i]);
    const Record& want = ref.at(inputs[i].second);
    EXPECT_EQ(got.custom_id, inputs[i].first) << what << " line " << i;
    EXPECT_EQ(got.status, want.status) << what << " " << got.custom_id << ": " << got.error;
    EXPECT_EQ(got.text, want.text) << what << " " << got.custom_id;
    EXPECT_EQ(got.prompt_tokens, want.prompt_tokens) << what << " " << got.custom_id;
    EXPECT_EQ(got.generated_tokens, want.generated_tokens) << what << " " << got.custom_id;
  }
}

// ------------------------------------------------------------------ 1. bad RPCs

TEST_F(CoordinatorRpcTest, BadRequestsGetTheRightCodeAndChangeNothing) {
  // A small job-bytes limit to check that path too (the receive limit stays 64 MiB).
  ClusterOptions co;
  co.max_job_bytes = 1 << 20;
  Cluster cluster(model(), co);
  ASSERT_TRUE(cluster.ok());
  auto stub = v1::JobService::NewStub(Channel(cluster.address()));

  // One good job, so that "unchanged" means something and format checks have a target.
  v1::Job good;
  ASSERT_TRUE(RawCreate(*stub, {OptionsMsg(Opts()), LinesMsg({JobLine("a", Doc(1, 300))})}, &good).ok());
  const int jobs_before = CountJobs(*stub);
  ASSERT_EQ(jobs_before, 1);
  const std::vector<std::string> one_line = {JobLine("x", "A cat sat on a mat.")};

  struct Case {
    std::string name;
    std::vector<v1::CreateJobRequest> msgs;
    StatusCode code;
  };
  std::vector<Case> cases;
  cases.push_back({"no messages", {}, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"lines before options", {LinesMsg(one_line), OptionsMsg(Opts())}, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"options twice", {OptionsMsg(Opts()), OptionsMsg(Opts()), LinesMsg(one_line)},
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"options after lines", {OptionsMsg(Opts()), LinesMsg(one_line), OptionsMsg(Opts())},
                   StatusCode::INVALID_ARGUMENT});
  cases.push_back({"no lines", {OptionsMsg(Opts())}, StatusCode::INVALID_ARGUMENT});
  cases.push_back({"only blank lines", {OptionsMsg(Opts()), LinesMsg({"", "  ", "\r"})}, StatusCode::INVALID_ARGUMENT});
  {
    v1::JobOptions o = Opts();
    o.set_task("translate");
    cases.push_back({"unknown task", {OptionsMsg(o), LinesMsg(one_line)}, StatusCode::INVALID_ARGUMENT});
  }
  {
    v1::JobOptions o = Opts();
    o.set_template_("jinja-of-my-own");
    cases.push_back({"unknown template", {OptionsMsg(o), LinesMsg(one_line)}, StatusCode::INVALID_ARGUMENT});
  }
  {
    v1::JobOptions o = Opts();
    o.set_placement("everywhere");
    cases.push_back({"unknown placement", {OptionsMsg(o), LinesMsg(one_line)}, StatusCode::INVALID_ARGUMENT});
  }
  {
    v1::JobOptions o = Opts();
    o.set_max_tokens(-1);
    cases.push_back({"negative max_tokens", {OptionsMsg(o), LinesMsg(one_line)}, StatusCode::INVALID_ARGUMENT});
  }
  {
    v1::JobOptions o = Opts();
    o.set_max_doc_bytes(-5);
    cases.push_back({"negative max_doc_bytes", {OptionsMsg(o), LinesMsg(one_line)}, StatusCode::INVALID_ARGUMENT});
  }
  {
    v1::JobOptions o = Opts();
    o.set_request_id(std::string(300, 'r'));
    cases.push_back({"request_id too long", {OptionsMsg(o), LinesMsg(one_line)}, StatusCode::INVALID_ARGUMENT});
  }
  // The job's lines over max_job_bytes (1 MiB here), in messages under the receive limit.
  cases.push_back({"lines over max_job_bytes",
                   {OptionsMsg(Opts()), LinesMsg({JobLine("p", std::string(700000, 'a'))}),
                    LinesMsg({JobLine("q", std::string(700000, 'b'))})},
                   StatusCode::RESOURCE_EXHAUSTED});
  for (const Case& c : cases) {
    grpc::Status s = RawCreate(*stub, c.msgs);
    EXPECT_EQ(s.error_code(), c.code) << c.name << ": " << s.error_message();
    EXPECT_FALSE(s.error_message().empty()) << c.name;
    EXPECT_EQ(CountJobs(*stub), jobs_before) << c.name;
  }

  // One message over the server's 64 MiB receive limit (the client may send 128 MiB).
  {
    grpc::Status s = RawCreate(*stub, {OptionsMsg(Opts()), LinesMsg({std::string((64 << 20) + 1024, 'z')})});
    EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_EQ(CountJobs(*stub), jobs_before);
  }

  // Unknown and empty job ids, on every call that takes one.
  for (const auto& [id, code] : std::vector<std::pair<std::string, StatusCode>>{
           {"job_doesnotexist", StatusCode::NOT_FOUND}, {"", StatusCode::INVALID_ARGUMENT}}) {
    SCOPED_TRACE("job_id '" + id + "'");
    v1::Job job;
    EXPECT_EQ(RawGet(*stub, id, &job).error_code(), code);
    {
      v1::CancelJobRequest req;
      req.set_job_id(id);
      grpc::ClientContext ctx;
      Deadline(ctx);
      EXPECT_EQ(stub->CancelJob(&ctx, req, &job).error_code(), code);
    }
    {
      v1::WatchJobRequest req;
      req.set_job_id(id);
      grpc::ClientContext ctx;
      Deadline(ctx, 10);
      auto reader = stub->WatchJob(&ctx, req);
      v1::JobEvent e;
      EXPECT_FALSE(reader->Read(&e));
      EXPECT_EQ(reader->Finish().error_code(), code);
    }
    std::vector<std::string> lines;
    EXPECT_EQ(RawResults(*stub, id, "mesa", &lines).error_code(), code);
    EXPECT_TRUE(lines.empty());
  }
  // An unknown results format, for a job that exists.
  {
    std::vector<std::string> lines;
    grpc::Status s = RawResults(*stub, good.id(), "csv", &lines);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_TRUE(lines.empty());
  }
  // A negative list limit.
  {
    v1::ListJobsRequest req;
    req.set_limit(-1);
    v1::ListJobsResponse resp;
    grpc::ClientContext ctx;
    Deadline(ctx);
    EXPECT_EQ(stub->ListJobs(&ctx, req, &resp).error_code(), StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_EQ(CountJobs(*stub), jobs_before);
  // The good job was not disturbed: it is still there, unchanged in identity.
  {
    v1::Job job;
    ASSERT_TRUE(RawGet(*stub, good.id(), &job).ok());
    EXPECT_EQ(job.request_counts().total(), 1);
  }

  // The worker registry.
  auto registry = v1::WorkerRegistry::NewStub(Channel(cluster.address()));
  const int64_t workers_before = cluster.core().stats().workers;
  ASSERT_EQ(workers_before, 1);
  const std::string fp = FingerprintModel(model()).ToString();
  auto reg = [&](const std::string& address, const std::string& fingerprint, const std::string& device = "cpu") {
    v1::RegisterRequest req;
    req.set_name("intruder");
    req.set_address(address);
    req.set_model_fingerprint(fingerprint);
    req.set_model_description("a test");
    req.set_device(device);
    v1::RegisterResponse resp;
    grpc::ClientContext ctx;
    Deadline(ctx);
    grpc::Status s = registry->Register(&ctx, req, &resp);
    EXPECT_TRUE(resp.worker_id().empty());
    return s;
  };
  EXPECT_EQ(reg("", fp).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(reg("127.0.0.1:1", "").error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(reg("127.0.0.1:1", fp, std::string(257, 'x')).error_code(), StatusCode::INVALID_ARGUMENT);
  {
    grpc::Status s = reg("127.0.0.1:1", "0123456789abcdef-fedcba9876543210");
    EXPECT_EQ(s.error_code(), StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_NE(s.error_message().find("different model"), std::string::npos) << s.error_message();
  }
  EXPECT_EQ(cluster.core().stats().workers, workers_before);
  {
    v1::HeartbeatRequest req;
    req.set_worker_id("w999-nobody");
    v1::HeartbeatResponse resp;
    resp.set_known(true);
    grpc::ClientContext ctx;
    Deadline(ctx);
    ASSERT_TRUE(registry->Heartbeat(&ctx, req, &resp).ok());
    EXPECT_FALSE(resp.known());
  }
  {
    v1::HeartbeatRequest req;
    v1::HeartbeatResponse resp;
    grpc::ClientContext ctx;
    Deadline(ctx);
    EXPECT_EQ(registry->Heartbeat(&ctx, req, &resp).error_code(), StatusCode::INVALID_ARGUMENT);
  }
  {
    v1::DeregisterRequest req;
    req.set_worker_id("w999-nobody");
    v1::DeregisterResponse resp;
    grpc::ClientContext ctx;
    Deadline(ctx);
    EXPECT_TRUE(registry->Deregister(&ctx, req, &resp).ok());  // unknown: nothing to do
  }
  EXPECT_EQ(cluster.core().stats().workers, workers_before);

  // And the good job still completes on the untouched worker.
  EXPECT_TRUE(WaitFor(
      [&] {
        v1::Job job;
        return RawGet(*stub, good.id(), &job).ok() && job.status() == "completed";
      },
      30));
}

// ------------------------------------------------------------------ 2. health, reflection

// Protobuf wire encoding by hand (no generated health or reflection types here).
std::string Varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}
std::string LenField(int field, const std::string& value) {
  return Varint(static_cast<uint64_t>(field) << 3 | 2) + Varint(value.size()) + value;
}
std::string ToBytes(const grpc::ByteBuffer& buf) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buf.Dump(&slices).ok()) return out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}
grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

bool Await(grpc::CompletionQueue& cq, void* tag) {
  void* got = nullptr;
  bool ok = false;
  if (!cq.Next(&got, &ok)) return false;
  EXPECT_EQ(got, tag);
  return ok;
}

// grpc.health.v1.Health/Check: the status enum (SERVING = 1), or -1 with `code` set.
int HealthCheck(const std::string& address, const std::string& service, StatusCode* code) {
  grpc::GenericStub stub(Channel(address));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  Deadline(ctx, 10);
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check",
                                    ToBuffer(service.empty() ? "" : LenField(1, service)), &cq);
  call->StartCall();
  grpc::ByteBuffer resp;
  grpc::Status status;
  int tag = 0;
  call->Finish(&resp, &status, &tag);
  Await(cq, &tag);
  cq.Shutdown();
  *code = status.error_code();
  if (!status.ok()) return -1;
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(ToBytes(resp))) return -2;
  for (int i = 0; i < fields.field_count(); ++i) {
    if (fields.field(i).number() == 1 && fields.field(i).type() == google::protobuf::UnknownField::TYPE_VARINT) {
      return static_cast<int>(fields.field(i).varint());
    }
  }
  return 0;  // proto3 default: UNKNOWN
}

// One request on grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo; returns
// the response's bytes ("" on failure, with the status in `status`).
std::string ReflectionCall(const std::string& address, const std::string& request, grpc::Status* status) {
  grpc::GenericStub stub(Channel(address));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  Deadline(ctx, 10);
  auto call = stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  int t_start = 0, t_write = 0, t_done = 0, t_read = 0, t_finish = 0;
  std::string out;
  call->StartCall(&t_start);
  if (Await(cq, &t_start)) {
    call->Write(ToBuffer(request), &t_write);
    if (Await(cq, &t_write)) {
      grpc::ByteBuffer resp;
      call->Read(&resp, &t_read);
      if (Await(cq, &t_read)) out = ToBytes(resp);
    }
    call->WritesDone(&t_done);
    Await(cq, &t_done);
    grpc::ByteBuffer extra;
    call->Read(&extra, &t_read);
    EXPECT_FALSE(Await(cq, &t_read)) << "a second reflection response";
  }
  call->Finish(status, &t_finish);
  Await(cq, &t_finish);
  cq.Shutdown();
  return out;
}

// Length-delimited fields numbered `field` of a message.
std::vector<std::string> Submessages(const std::string& bytes, int field) {
  google::protobuf::UnknownFieldSet fields;
  std::vector<std::string> out;
  if (!fields.ParseFromString(bytes)) return out;
  for (int i = 0; i < fields.field_count(); ++i) {
    if (fields.field(i).number() == field &&
        fields.field(i).type() == google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
      out.push_back(fields.field(i).length_delimited());
    }
  }
  return out;
}

std::set<std::string> ListServices(const std::string& address) {
  grpc::Status status;
  // ServerReflectionRequest.list_services = 7.
  const std::string resp = ReflectionCall(address, LenField(7, "*"), &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::set<std::string> names;
  // ServerReflectionResponse.list_services_response = 6 -> service = 1 -> name = 1.
  for (const std::string& list : Submessages(resp, 6)) {
    for (const std::string& service : Submessages(list, 1)) {
      for (const std::string& name : Submessages(service, 1)) names.insert(name);
    }
  }
  return names;
}

TEST_F(CoordinatorRpcTest, HealthAndReflection) {
  Cluster cluster(model(), {});
  ASSERT_TRUE(cluster.ok());
  const std::string worker = cluster.workers().at(0)->address();
  for (const std::string& address : {cluster.address(), worker}) {
    SCOPED_TRACE(address);
    StatusCode code;
    EXPECT_EQ(HealthCheck(address, "", &code), 1) << "status code " << code;  // SERVING
    EXPECT_EQ(code, StatusCode::OK);
    // A service the health service was never told of.
    EXPECT_EQ(HealthCheck(address, "no.such.Service", &code), -1);
    EXPECT_EQ(code, StatusCode::NOT_FOUND);
  }

  const std::set<std::string> coord = ListServices(cluster.address());
  for (const char* s : {"mesa.v1.JobService", "mesa.v1.WorkerRegistry", "grpc.health.v1.Health"}) {
    EXPECT_TRUE(coord.contains(s)) << s << " not listed by the coordinator's reflection";
  }
  EXPECT_FALSE(coord.contains("mesa.v1.WorkerService"));
  const std::set<std::string> work = ListServices(worker);
  EXPECT_TRUE(work.contains("mesa.v1.WorkerService")) << "not listed by the worker's reflection";
  EXPECT_FALSE(work.contains("mesa.v1.JobService"));

  // The file that defines JobService, as a FileDescriptorProto (file_containing_symbol
  // = 4 -> file_descriptor_response = 4 -> file_descriptor_proto = 1).
  grpc::Status status;
  const std::string resp = ReflectionCall(cluster.address(), LenField(4, "mesa.v1.JobService"), &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  bool found = false;
  for (const std::string& fdr : Submessages(resp, 4)) {
    for (const std::string& bytes : Submessages(fdr, 1)) {
      google::protobuf::FileDescriptorProto file;
      ASSERT_TRUE(file.ParseFromString(bytes));
      if (file.name() != "mesa/v1/job_service.proto") continue;
      found = true;
      ASSERT_EQ(file.service_size(), 1);
      EXPECT_EQ(file.service(0).name(), "JobService");
      std::set<std::string> methods;
      for (const auto& m : file.service(0).method()) methods.insert(m.name());
      EXPECT_EQ(methods, (std::set<std::string>{"CreateJob", "GetJob", "ListJobs", "CancelJob", "WatchJob",
                                                "GetResults", "ListWorkers"}));
    }
  }
  EXPECT_TRUE(found) << "no descriptor of mesa/v1/job_service.proto in the reflection answer";
}

// ------------------------------------------------------------------ 3. WatchJob

TEST_F(CoordinatorRpcTest, WatchJobStreamsUntilTerminal) {
  // No worker yet: the job cannot move until one joins, so the watch surely sees it
  // before the end.
  Cluster cluster(model(), ClusterOptions{.workers = 0});
  ASSERT_TRUE(cluster.ok());
  auto stub = v1::JobService::NewStub(Channel(cluster.address()));
  std::vector<std::string> lines;
  for (int i = 0; i < 5; ++i) lines.push_back(JobLine(absl::StrCat("d", i), Doc(100 + i, 400 + 300 * i)));
  v1::Job created;
  ASSERT_TRUE(RawCreate(*stub, {OptionsMsg(Opts()), LinesMsg(lines)}, &created).ok());
  EXPECT_EQ(created.request_counts().total(), 5);

  v1::WatchJobRequest req;
  req.set_job_id(created.id());
  grpc::ClientContext ctx;
  Deadline(ctx, 60);
  auto reader = stub->WatchJob(&ctx, req);
  std::vector<v1::Job> events;
  v1::JobEvent e;
  ASSERT_TRUE(reader->Read(&e)) << "no first event";
  events.push_back(e.job());
  EXPECT_EQ(events[0].status(), "in_progress");
  EXPECT_EQ(events[0].request_counts().completed(), 0);
  ASSERT_NE(cluster.AddWorker(), nullptr);
  const auto start = Clock::now();
  while (reader->Read(&e)) {
    events.push_back(e.job());
    ASSERT_LT(Seconds(start), 60) << "the watch did not end";
  }
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back().status(), "completed");
  EXPECT_EQ(events.back().request_counts().completed(), 5);
  for (size_t i = 1; i < events.size(); ++i) {
    const auto& a = events[i - 1].request_counts();
    const auto& b = events[i].request_counts();
    EXPECT_EQ(events[i].id(), created.id());
    EXPECT_EQ(b.total(), 5);
    EXPECT_GE(b.completed(), a.completed()) << "event " << i;
    EXPECT_GE(b.failed(), a.failed()) << "event " << i;
    EXPECT_GE(events[i].generated_tokens(), events[i - 1].generated_tokens());
    EXPECT_FALSE(Terminal(events[i - 1].status())) << "an event after the terminal one";
  }
  std::printf("WatchJob: %zu events for 5 documents\n", events.size());

  // Watching a finished job: one event, the terminal one, then the end.
  grpc::ClientContext ctx2;
  Deadline(ctx2, 10);
  auto again = stub->WatchJob(&ctx2, req);
  ASSERT_TRUE(again->Read(&e));
  EXPECT_EQ(e.job().status(), "completed");
  EXPECT_FALSE(again->Read(&e));
  EXPECT_TRUE(again->Finish().ok());

  // The results, both formats, one line per input line.
  std::vector<std::string> mesa_lines, openai_lines;
  ASSERT_TRUE(RawResults(*stub, created.id(), "", &mesa_lines).ok());
  ASSERT_TRUE(RawResults(*stub, created.id(), "openai", &openai_lines).ok());
  EXPECT_EQ(mesa_lines.size(), 5u);
  ASSERT_EQ(openai_lines.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    auto j = nlohmann::json::parse(openai_lines[i]);
    EXPECT_EQ(j.value("custom_id", ""), absl::StrCat("d", i));
    EXPECT_EQ(j["response"]["status_code"], 200) << openai_lines[i];
  }
}

// ------------------------------------------------------------------ 4. concurrency

TEST_F(CoordinatorRpcTest, SixtyFourConcurrentClients) {
  constexpr int kClients = 64;
  constexpr int64_t kMaxTokens = 6;
  // A pool of distinct short documents (80-500 tokens); clients share them.
  std::vector<std::string> pool;
  for (int i = 0; i < 12; ++i) pool.push_back(Doc(200 + i, 250 + 120 * i));
  const auto ref_start = Clock::now();
  const std::map<std::string, Record> ref = Reference(pool, kMaxTokens);
  ASSERT_EQ(ref.size(), pool.size());
  std::printf("reference (mesa run path, %zu documents): %.2f s\n", pool.size(), Seconds(ref_start));

  Cluster cluster(model(), ClusterOptions{.workers = 2});
  ASSERT_TRUE(cluster.ok());
  struct Outcome {
    std::string job_id, error;
    std::vector<std::pair<std::string, std::string>> inputs;
    std::vector<std::string> results;
    std::vector<double> get_ms;
    std::string status;
    int64_t total = 0;
  };
  std::vector<Outcome> out(kClients);
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      Outcome& o = out[c];
      auto conn = client::MakeGrpcConnection(cluster.address());
      if (!conn.ok()) {
        o.error = conn.status().ToString();
        return;
      }
      client::ClientOptions copts;
      copts.call_timeout = absl::Seconds(10);
      copts.poll_interval = absl::Milliseconds(50);
      client::Client cl(*std::move(conn), copts);
      std::vector<std::string> lines;
      for (int d = 0; d < 1 + c % 3; ++d) {
        const std::string& doc = pool[(c * 5 + d * 7) % pool.size()];
        const std::string id = absl::StrCat("c", c, "-d", d);
        o.inputs.emplace_back(id, doc);
        lines.push_back(JobLine(id, doc));
      }
      client::JobOptions jo;
      jo.max_tokens = kMaxTokens;
      auto job = cl.SubmitLines(lines, jo);
      if (!job.ok()) {
        o.error = absl::StrCat("submit: ", job.status().ToString());
        return;
      }
      o.job_id = job->id;
      auto get = [&]() -> absl::StatusOr<client::JobInfo> {
        const auto t = Clock::now();
        auto j = cl.Get(o.job_id);
        o.get_ms.push_back(Seconds(t) * 1000);
        return j;
      };
      const auto deadline = Clock::now() + std::chrono::seconds(90);
      if (c % 2 == 1) {  // half follow the event stream
        auto w = cl.Wait(o.job_id, absl::Seconds(90));
        if (!w.ok() || w->timed_out) {
          o.error = w.ok() ? "wait timed out" : w.status().ToString();
          return;
        }
      }
      for (;;) {  // the others poll (and all read the final state)
        auto j = get();
        if (!j.ok()) {
          o.error = absl::StrCat("get: ", j.status().ToString());
          return;
        }
        if (Terminal(j->status)) {
          o.status = j->status;
          o.total = j->request_counts.total;
          break;
        }
        if (Clock::now() > deadline) {
          o.error = "timed out polling";
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      const std::string path = testing::UniqueTempPath(absl::StrCat("results-", c, ".jsonl"));
      auto n = cl.Results(o.job_id, "mesa", path);
      if (!n.ok()) {
        o.error = absl::StrCat("results: ", n.status().ToString());
        return;
      }
      std::ifstream f(path);
      for (std::string line; std::getline(f, line);) o.results.push_back(line);
    });
  }
  for (auto& t : threads) t.join();
  const double wall = Seconds(start);

  std::vector<double> lat;
  std::set<std::string> ids;
  int64_t docs = 0;
  for (int c = 0; c < kClients; ++c) {
    const Outcome& o = out[c];
    SCOPED_TRACE(absl::StrCat("client ", c));
    ASSERT_TRUE(o.error.empty()) << o.error;
    EXPECT_EQ(o.status, "completed");
    EXPECT_EQ(o.total, static_cast<int64_t>(o.inputs.size()));
    EXPECT_TRUE(ids.insert(o.job_id).second) << "two clients got job " << o.job_id;
    ExpectMatchesReference(o.results, o.inputs, ref, o.job_id);
    lat.insert(lat.end(), o.get_ms.begin(), o.get_ms.end());
    docs += static_cast<int64_t>(o.inputs.size());
  }
  auto stub = v1::JobService::NewStub(Channel(cluster.address()));
  EXPECT_EQ(CountJobs(*stub), kClients);
  ASSERT_FALSE(lat.empty());
  std::sort(lat.begin(), lat.end());
  const double p50 = lat[lat.size() / 2];
  const double p99 = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
  std::printf("64 clients, %lld documents, 2 workers: %.2f s wall; GetJob latency over %zu calls: "
              "p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
              static_cast<long long>(docs), wall, lat.size(), p50, p99, lat.back());
  EXPECT_LT(p99, 2000.0);
}

// ------------------------------------------------------------------ 5. fairness

TEST_F(CoordinatorRpcTest, ShortJobOvertakesLongAndFailingJobDoesNotStall) {
  Cluster cluster(model(), ClusterOptions{.workers = 0});
  ASSERT_TRUE(cluster.ok());
  auto stub = v1::JobService::NewStub(Channel(cluster.address()));
  std::vector<std::string> long_lines, short_lines, bad_lines;
  for (int i = 0; i < 8; ++i) long_lines.push_back(JobLine(absl::StrCat("L", i), Doc(300 + i, 1200)));
  for (int i = 0; i < 2; ++i) short_lines.push_back(JobLine(absl::StrCat("S", i), Doc(400 + i, 600)));
  // Every document over the job's max_doc_bytes: each line fails on its own.
  v1::JobOptions tiny = Opts();
  tiny.set_max_doc_bytes(16);
  for (int i = 0; i < 3; ++i) bad_lines.push_back(JobLine(absl::StrCat("B", i), Doc(500 + i, 400)));

  v1::Job long_job, bad_job, short_job;
  ASSERT_TRUE(RawCreate(*stub, {OptionsMsg(Opts(8)), LinesMsg(long_lines)}, &long_job).ok());
  ASSERT_TRUE(RawCreate(*stub, {OptionsMsg(tiny), LinesMsg(bad_lines)}, &bad_job).ok());
  ASSERT_TRUE(RawCreate(*stub, {OptionsMsg(Opts(8)), LinesMsg(short_lines)}, &short_job).ok());

  // The failing job needs no worker: it is settled already.
  v1::Job job;
  ASSERT_TRUE(WaitFor([&] { return RawGet(*stub, bad_job.id(), &job).ok() && Terminal(job.status()); }, 10))
      << job.status();
  EXPECT_EQ(job.status(), "completed");
  EXPECT_EQ(job.request_counts().total(), 3);
  EXPECT_EQ(job.request_counts().failed(), 3);
  EXPECT_EQ(job.request_counts().completed(), 0);
  std::vector<std::string> bad_results;
  ASSERT_TRUE(RawResults(*stub, bad_job.id(), "mesa", &bad_results).ok());
  ASSERT_EQ(bad_results.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const Record r = ParseRecord(bad_results[i]);
    EXPECT_EQ(r.custom_id, absl::StrCat("B", i));
    EXPECT_EQ(r.status, "error");
    EXPECT_FALSE(r.error.empty());
  }

  // One worker for both jobs: round-robin across jobs lets the short one finish first.
  ASSERT_NE(cluster.AddWorker(), nullptr);
  v1::Job l, s;
  const auto start = Clock::now();
  bool short_done = false;
  while (!short_done) {
    ASSERT_LT(Seconds(start), 60) << "the short job did not finish";
    ASSERT_TRUE(RawGet(*stub, short_job.id(), &s).ok());
    short_done = Terminal(s.status());
    if (!short_done) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  // Read after the short job's end: the long one must still be running.
  ASSERT_TRUE(RawGet(*stub, long_job.id(), &l).ok());
  EXPECT_EQ(s.status(), "completed");
  EXPECT_EQ(s.request_counts().completed(), 2);
  EXPECT_FALSE(Terminal(l.status())) << "the long job (8 documents) finished before the short one (2)";
  EXPECT_LT(l.request_counts().completed(), 8);
  std::printf("when the short job completed, the long job had %lld of 8 documents done\n",
              static_cast<long long>(l.request_counts().completed()));
  ASSERT_TRUE(WaitFor([&] { return RawGet(*stub, long_job.id(), &l).ok() && Terminal(l.status()); }, 60));
  EXPECT_EQ(l.status(), "completed");
  EXPECT_EQ(l.request_counts().completed(), 8);
}

// ------------------------------------------------------------------ 6. idempotent create

TEST_F(CoordinatorRpcTest, OneRequestIdMakesOneJob) {
  Cluster cluster(model(), ClusterOptions{.workers = 1});
  ASSERT_TRUE(cluster.ok());
  auto stub = v1::JobService::NewStub(Channel(cluster.address()));
  const std::vector<std::string> lines = {JobLine("a", Doc(600, 300)), JobLine("b", Doc(601, 300))};
  v1::JobOptions o = Opts();
  o.set_request_id("7f1c6a52-0b7e-4d0e-9a1f-1234567890ab");
  v1::Job first, second;
  ASSERT_TRUE(RawCreate(*stub, {OptionsMsg(o), LinesMsg(lines)}, &first).ok());
  ASSERT_TRUE(RawCreate(*stub, {OptionsMsg(o), LinesMsg(lines)}, &second).ok());
  EXPECT_FALSE(first.id().empty());
  EXPECT_EQ(first.id(), second.id());
  EXPECT_EQ(second.request_id(), o.request_id());
  EXPECT_EQ(CountJobs(*stub), 1);

  // Concurrent repeats of another request_id, through the client library: one job.
  o.set_request_id("c0ffee00-race");
  constexpr int kThreads = 8;
  std::vector<std::string> ids(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto conn = client::MakeGrpcConnection(cluster.address());
      ASSERT_TRUE(conn.ok());
      client::Client cl(*std::move(conn));
      client::JobOptions jo;
      jo.max_tokens = 6;
      jo.request_id = "c0ffee00-race";
      auto job = cl.SubmitLines(lines, jo);
      ASSERT_TRUE(job.ok()) << job.status();
      ids[i] = job->id;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 1; i < kThreads; ++i) EXPECT_EQ(ids[i], ids[0]) << "thread " << i;
  EXPECT_NE(ids[0], first.id());
  EXPECT_EQ(CountJobs(*stub), 2);

  // Both jobs run once: each completes with exactly one result per line.
  for (const std::string& id : {first.id(), ids[0]}) {
    v1::Job j;
    ASSERT_TRUE(WaitFor([&] { return RawGet(*stub, id, &j).ok() && Terminal(j.status()); }, 30)) << id;
    EXPECT_EQ(j.status(), "completed");
    EXPECT_EQ(j.request_counts().completed(), 2);
    std::vector<std::string> results;
    ASSERT_TRUE(RawResults(*stub, id, "mesa", &results).ok());
    EXPECT_EQ(results.size(), 2u);
  }
}

// ------------------------------------------------------------------ 7. cancel

TEST_F(CoordinatorRpcTest, CancelMidJobKeepsFinishedResultsAndFreesKv) {
  constexpr int64_t kMaxTokens = 6;
  // Long documents (~1000-1500 tokens: 2-3 middle chunks each), spread over two workers,
  // so that chunk K/V is held on the workers while items are in flight.
  std::vector<std::string> docs;
  for (int i = 0; i < 12; ++i) docs.push_back(Doc(700 + i, 2500 + 150 * i));

  Cluster cluster(model(), ClusterOptions{.workers = 2, .placement = coord::Placement::kSpread});
  ASSERT_TRUE(cluster.ok());
  auto stub = v1::JobService::NewStub(Channel(cluster.address()));
  std::vector<std::string> lines;
  for (size_t i = 0; i < docs.size(); ++i) lines.push_back(JobLine(absl::StrCat("d", i), docs[i]));
  v1::Job job;
  ASSERT_TRUE(RawCreate(*stub, {OptionsMsg(Opts(kMaxTokens)), LinesMsg(lines)}, &job).ok());

  // Cancel once an item is done while K/V is held on a worker.
  bool saw_kv = false;
  v1::Job now;
  ASSERT_TRUE(WaitFor(
      [&] {
        saw_kv = saw_kv || cluster.kv_bytes_on_workers() > 0;
        return saw_kv && RawGet(*stub, job.id(), &now).ok() && now.request_counts().completed() >= 1;
      },
      60))
      << "no finished item with K/V held (saw K/V: " << saw_kv << ")";
  ASSERT_FALSE(Terminal(now.status())) << "the job finished before it could be cancelled";

  const int64_t kv_at_cancel = cluster.kv_bytes_on_workers();
  v1::CancelJobRequest req;
  req.set_job_id(job.id());
  v1::Job cancelled;
  grpc::ClientContext ctx;
  Deadline(ctx);
  ASSERT_TRUE(stub->CancelJob(&ctx, req, &cancelled).ok());
  EXPECT_TRUE(cancelled.status() == "cancelled" || cancelled.status() == "cancelling") << cancelled.status();
  ASSERT_TRUE(WaitFor([&] { return RawGet(*stub, job.id(), &now).ok() && now.status() == "cancelled"; }, 10))
      << now.status();
  EXPECT_GT(now.cancelled_at(), 0);
  EXPECT_LT(now.request_counts().completed(), 12);

  // No K/V left on the workers, and nothing running.
  const auto t = Clock::now();
  EXPECT_TRUE(WaitFor([&] { return cluster.kv_bytes_on_workers() == 0; }, 5))
      << cluster.kv_bytes_on_workers() << " K/V bytes still held after the cancel";
  std::printf("K/V freed %.0f ms after the cancel\n", Seconds(t) * 1000);
  EXPECT_TRUE(WaitFor([&] { return cluster.core().stats().tasks_in_flight == 0; }, 10));

  // A second cancel is harmless; the job stays cancelled.
  {
    grpc::ClientContext ctx2;
    Deadline(ctx2);
    ASSERT_TRUE(stub->CancelJob(&ctx2, req, &cancelled).ok());
    EXPECT_EQ(cancelled.status(), "cancelled");
  }

  // The finished items are still readable: one record each, equal to `mesa run`'s.
  ASSERT_TRUE(RawGet(*stub, job.id(), &now).ok());
  EXPECT_EQ(now.status(), "cancelled");
  std::vector<std::string> results;
  ASSERT_TRUE(RawResults(*stub, job.id(), "mesa", &results).ok());
  EXPECT_GE(results.size(), 1u);
  EXPECT_EQ(static_cast<int64_t>(results.size()), now.request_counts().completed() + now.request_counts().failed());
  std::set<std::string> seen;
  std::vector<Record> got;
  std::vector<std::string> finished_docs;
  for (const std::string& line : results) {
    got.push_back(ParseRecord(line));
    ASSERT_TRUE(seen.insert(got.back().custom_id).second) << "two records for " << got.back().custom_id;
    finished_docs.push_back(docs.at(std::stoul(got.back().custom_id.substr(1))));
  }
  // `mesa run`'s records for just the finished documents.
  const std::map<std::string, Record> ref = Reference(finished_docs, kMaxTokens);
  for (size_t i = 0; i < got.size(); ++i) {
    const Record& r = got[i];
    const Record& want = ref.at(finished_docs[i]);
    EXPECT_EQ(r.status, want.status) << r.custom_id << ": " << r.error;
    EXPECT_EQ(r.text, want.text) << r.custom_id;
    EXPECT_EQ(r.prompt_tokens, want.prompt_tokens) << r.custom_id;
    EXPECT_EQ(r.generated_tokens, want.generated_tokens) << r.custom_id;
  }
  std::printf("cancelled with %zu of 12 results finished (%lld K/V bytes held on the workers at the cancel; "
              "prompts of %lld tokens and up)\n",
              results.size(), static_cast<long long>(kv_at_cancel),
              static_cast<long long>(got.empty() ? 0 : got[0].prompt_tokens));
}

// ------------------------------------------------------------------ K/V over peer links

TEST_F(CoordinatorRpcTest, SpreadJobOverSocketLinksInAMixedClusterMatchesMesaRun) {
  constexpr int64_t kMaxTokens = 6;
  std::vector<std::string> docs;
  for (int i = 0; i < 6; ++i) docs.push_back(Doc(900 + i, 2600 + 200 * i));
  const std::map<std::string, Record> ref = Reference(docs, kMaxTokens);

  // Two workers with socket links and one without: pairs of the first two move K/V over
  // their link, pairs with the third over FetchKv (both ways).
  Cluster cluster(model(), ClusterOptions{.workers = 3,
                                          .placement = coord::Placement::kSpread,
                                          .kv_transports = {"socket", "socket", "grpc"}});
  ASSERT_TRUE(cluster.ok());
  auto stub = v1::JobService::NewStub(Channel(cluster.address()));
  std::vector<std::string> lines;
  std::vector<std::pair<std::string, std::string>> inputs;
  for (size_t i = 0; i < docs.size(); ++i) {
    lines.push_back(JobLine(absl::StrCat("d", i), docs[i]));
    inputs.emplace_back(absl::StrCat("d", i), docs[i]);
  }
  v1::Job job;
  ASSERT_TRUE(RawCreate(*stub, {OptionsMsg(Opts(kMaxTokens)), LinesMsg(lines)}, &job).ok());
  v1::Job now;
  ASSERT_TRUE(WaitFor([&] { return RawGet(*stub, job.id(), &now).ok() && Terminal(now.status()); }, 120))
      << now.status();
  EXPECT_EQ(now.status(), "completed");
  std::vector<std::string> results;
  ASSERT_TRUE(RawResults(*stub, job.id(), "mesa", &results).ok());
  ExpectMatchesReference(results, inputs, ref, "spread over socket links");

  int64_t peer = 0, fallback = 0, links = 0, lost = 0;
  for (int i = 0; i < 2; ++i) {
    auto* f = dynamic_cast<worker::PeerKvFetcher*>(&cluster.workers()[i]->kv_fetcher());
    ASSERT_NE(f, nullptr) << "worker " << i << " has no peer links";
    const worker::PeerKvFetcher::Counts c = f->counts();
    peer += c.peer_fetches, fallback += c.fallback_fetches, links += c.links_made, lost += c.links_lost;
  }
  EXPECT_EQ(dynamic_cast<worker::PeerKvFetcher*>(&cluster.workers()[2]->kv_fetcher()), nullptr);
  EXPECT_GT(peer, 0) << "no chunk moved over a socket link";
  EXPECT_LE(links, 2);  // one per pair and direction at most: reused across items
  EXPECT_EQ(lost, 0);
  // The linked workers report their links with their heartbeats (`mesa workers`).
  EXPECT_TRUE(WaitFor(
      [&] {
        v1::ListWorkersResponse resp;
        grpc::ClientContext ctx;
        Deadline(ctx);
        if (!stub->ListWorkers(&ctx, v1::ListWorkersRequest(), &resp).ok()) return false;
        int32_t reported = 0;
        for (const v1::Worker& w : resp.workers()) reported += w.peer_links();
        return reported >= 2;  // a link counts at both of its ends
      },
      15))
      << "the workers' heartbeats did not report their links";
  std::printf("chunks over socket links: %lld (links made: %lld); over FetchKv from the grpc-only worker: %lld\n",
              static_cast<long long>(peer), static_cast<long long>(links), static_cast<long long>(fallback));
}


TEST_F(CoordinatorRpcTest, ListWorkersShowsEachWorkersDeviceTransportAndTask) {
  Cluster cluster(model(), ClusterOptions{.workers = 2, .kv_transports = {"socket", "grpc"}});
  ASSERT_TRUE(cluster.ok());
  auto stub = v1::JobService::NewStub(Channel(cluster.address()));
  auto list = [&] {
    v1::ListWorkersResponse resp;
    grpc::ClientContext ctx;
    Deadline(ctx);
    grpc::Status s = stub->ListWorkers(&ctx, v1::ListWorkersRequest(), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  };
  v1::ListWorkersResponse idle = list();
  ASSERT_EQ(idle.workers_size(), 2);
  const int64_t now_s = absl::ToUnixSeconds(absl::Now());
  for (int i = 0; i < 2; ++i) {
    const v1::Worker& w = idle.workers(i);
    EXPECT_EQ(w.name(), absl::StrCat("w", i));
    EXPECT_EQ(w.id(), absl::StrCat("w", i + 1, "-w", i));
    EXPECT_EQ(w.address(), cluster.workers()[i]->address());
    EXPECT_EQ(w.device().rfind("cpu (", 0), 0u) << w.device();
    EXPECT_EQ(w.kv_transport(), i == 0 ? "socket" : "grpc");
    EXPECT_EQ(w.peer_links_max(), i == 0 ? 16 : 0);  // --kv-links' default; no links over grpc
    EXPECT_EQ(w.threads(), 1);
    EXPECT_EQ(w.state(), "idle");
    EXPECT_FALSE(w.has_task());
    EXPECT_EQ(w.kv_bytes_held(), 0);
    EXPECT_GE(w.heartbeat_age_ms(), 0);
    EXPECT_LT(w.heartbeat_age_ms(), 5000);
    EXPECT_NEAR(static_cast<double>(w.joined_at()), static_cast<double>(now_s), 60);
  }

  // While a job runs, the workers show its tasks.
  std::vector<std::string> lines;
  for (int i = 0; i < 4; ++i) lines.push_back(JobLine(absl::StrCat("d", i), Doc(700 + i, 30000)));
  v1::Job job;
  ASSERT_TRUE(RawCreate(*stub, {OptionsMsg(Opts(4)), LinesMsg(lines)}, &job).ok());
  v1::Worker busy;
  ASSERT_TRUE(WaitFor(
      [&] {
        const v1::ListWorkersResponse now = list();
        for (const v1::Worker& w : now.workers()) {
          if (w.state() == "busy") busy = w;
        }
        return busy.has_task();
      },
      60))
      << "no worker was seen busy";
  EXPECT_EQ(busy.task().job_id(), job.id());
  EXPECT_GE(busy.task().item(), 0);
  EXPECT_LT(busy.task().item(), 4);
  EXPECT_TRUE(busy.task().kind() == "chunk" || busy.task().kind() == "final") << busy.task().kind();
  EXPECT_EQ(busy.task().chunk() >= 0, busy.task().kind() == "chunk") << busy.task().chunk();
  EXPECT_GE(busy.task().attempt(), 1);
  EXPECT_GE(busy.task().running_ms(), 0);
  v1::Job now;
  ASSERT_TRUE(WaitFor([&] { return RawGet(*stub, job.id(), &now).ok() && Terminal(now.status()); }, 120));
  EXPECT_EQ(now.status(), "completed");

  // What the workers report with their heartbeats: nothing held once the job is done.
  ASSERT_TRUE(WaitFor(
      [&] {
        const v1::ListWorkersResponse l = list();
        for (const v1::Worker& w : l.workers()) {
          if (w.kv_bytes_reported() != 0 || w.kv_bytes_held() != 0) return false;
        }
        return true;
      },
      30));
  // A worker that stops (drains and deregisters) leaves the list.
  cluster.workers().pop_back();
  v1::ListWorkersResponse after = list();
  ASSERT_EQ(after.workers_size(), 1);
  EXPECT_EQ(after.workers(0).name(), "w0");
  EXPECT_EQ(after.workers(0).state(), "idle");
}


TEST_F(CoordinatorRpcTest, ACancelledFinalOverALongDocumentFreesItsWorkerBetweenChunks) {
  // A whole final over ~40k tokens (about eighty Mesa chunks: seconds of prefill on
  // one thread) whose call ends after 300 ms: the worker's watcher flags the task and the
  // prefill stops at its next chunk, so a small task right after is not kept waiting for
  // the rest of the document (one task at a time per worker).
  Cluster cluster(model(), ClusterOptions{.workers = 1});
  ASSERT_TRUE(cluster.ok());
  auto stub = v1::WorkerService::NewStub(Channel(cluster.workers()[0]->address()));
  const int32_t vocab = static_cast<int32_t>(model().config.n_vocab);
  auto final_request = [&](int64_t n, int32_t attempt) {
    v1::RunFinalRequest req;
    req.mutable_key()->set_job_id("cancel-probe");
    req.mutable_key()->set_chunk(-1);
    req.mutable_key()->set_attempt(attempt);
    for (int64_t i = 0; i < n; ++i) req.add_prompt(static_cast<int32_t>(1 + (i * 7919) % (vocab - 1)));
    req.set_max_new_tokens(1);
    return req;
  };
  // How long the long one takes when nobody cancels it (the yardstick).
  v1::RunFinalResponse resp;
  const auto full_start = Clock::now();
  {
    grpc::ClientContext ctx;
    Deadline(ctx, 120);
    grpc::Status s = stub->RunFinal(&ctx, final_request(40000, 1), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  const double full_s = Seconds(full_start);
  ASSERT_GT(full_s, 1.0) << "the long final is too short to tell a stop from its end";
  // Now cancelled by its deadline.
  const auto start = Clock::now();
  {
    grpc::ClientContext ctx;
    Deadline(ctx, 0.3);
    EXPECT_EQ(stub->RunFinal(&ctx, final_request(40000, 2), &resp).error_code(), StatusCode::DEADLINE_EXCEEDED);
  }
  {
    grpc::ClientContext ctx;
    Deadline(ctx, 120);
    grpc::Status s = stub->RunFinal(&ctx, final_request(100, 3), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  const double freed_s = Seconds(start);
  std::printf("uncancelled: %.2f s; cancelled at 0.3 s, the next task done after %.2f s\n", full_s, freed_s);
  EXPECT_LT(freed_s, 0.3 + full_s / 2) << "the cancelled final ran on";
}

}  // namespace
}  // namespace mesa
