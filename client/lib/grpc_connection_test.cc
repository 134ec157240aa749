// Tests of GrpcConnection against an in-process JobService: the CreateJob stream
// (options first, then lines in order in bounded messages), every Job field across the
// wire, status codes and messages, streams and their early end, a result message over
// gRPC's default 4 MiB limit, and an unreachable address named in the error.
#include "client/lib/grpc_connection.h"

#include <memory>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "mesa/v1/job_service.grpc.pb.h"

namespace mesa::client {
namespace {

class FakeJobService : public v1::JobService::Service {
 public:
  // What CreateJob received.
  v1::JobOptions options;
  std::vector<std::string> lines;
  std::vector<size_t> message_bytes;  // line bytes per lines message
  bool options_first = false;
  std::string big_result;

  grpc::Status CreateJob(grpc::ServerContext*, grpc::ServerReader<v1::CreateJobRequest>* reader,
                         v1::Job* response) override {
    v1::CreateJobRequest request;
    bool first = true;
    while (reader->Read(&request)) {
      if (request.has_options()) {
        options_first = first;
        options = request.options();
      } else {
        size_t bytes = 0;
        for (const std::string& line : request.lines().lines()) {
          lines.push_back(line);
          bytes += line.size();
        }
        message_bytes.push_back(bytes);
      }
      first = false;
    }
    response->set_id("job-1");
    response->set_status("validating");
    response->mutable_request_counts()->set_total(static_cast<int64_t>(lines.size()));
    response->set_request_id(options.request_id());
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext*, const v1::GetJobRequest* request, v1::Job* response) override {
    if (request->job_id() != "job-1") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no job '" + request->job_id() + "'");
    }
    FullJob(response);
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override {
    for (int i = 0; i < request->limit(); ++i) response->add_jobs()->set_id("job-" + std::to_string(i));
    return grpc::Status::OK;
  }

  grpc::Status ListWorkers(grpc::ServerContext*, const v1::ListWorkersRequest*,
                           v1::ListWorkersResponse* response) override {
    v1::Worker* idle = response->add_workers();
    idle->set_id("w1-a");
    idle->set_name("a");
    idle->set_address("10.0.0.1:7000");
    idle->set_device("cuda:0 (NVIDIA H200, 139 GiB)");
    idle->set_kv_transport("nccl");
    idle->set_threads(8);
    idle->set_state("idle");
    idle->set_kv_bytes_held(123);
    idle->set_kv_budget_bytes(456);
    idle->set_heartbeat_age_ms(789);
    idle->set_joined_at(1700000000);
    idle->set_kv_bytes_reported(321);
    idle->set_peer_links(3);
    idle->set_peer_links_max(16);
    v1::Worker* busy = response->add_workers();
    busy->set_id("w2-b");
    busy->set_state("busy");
    v1::WorkerTask* t = busy->mutable_task();
    t->set_job_id("job-1");
    t->set_item(5);
    t->set_kind("chunk");
    t->set_chunk(3);
    t->set_attempt(2);
    t->set_running_ms(1500);
    return grpc::Status::OK;
  }

  grpc::Status CancelJob(grpc::ServerContext*, const v1::CancelJobRequest* request, v1::Job* response) override {
    response->set_id(request->job_id());
    response->set_status("cancelling");
    return grpc::Status::OK;
  }

  grpc::Status WatchJob(grpc::ServerContext*, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    for (const char* status : {"in_progress", "in_progress", "completed"}) {
      v1::JobEvent event;
      event.mutable_job()->set_id(request->job_id());
      event.mutable_job()->set_status(status);
      if (!writer->Write(event)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status GetResults(grpc::ServerContext*, const v1::GetResultsRequest* request,
                          grpc::ServerWriter<v1::ResultBatch>* writer) override {
    if (request->format() == "bad") return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "unknown format");
    v1::ResultBatch batch;
    batch.add_lines("1:" + request->format());
    batch.add_lines("2");
    writer->Write(batch);
    batch.Clear();
    batch.add_lines(big_result.empty() ? "3" : big_result);
    writer->Write(batch);
    return grpc::Status::OK;
  }

  static void FullJob(v1::Job* j) {
    j->set_id("job-1");
    j->set_status("in_progress");
    j->mutable_request_counts()->set_total(10);
    j->mutable_request_counts()->set_completed(4);
    j->mutable_request_counts()->set_failed(1);
    j->set_created_at(1001);
    j->set_in_progress_at(1002);
    j->set_finalizing_at(1003);
    j->set_completed_at(1004);
    j->set_failed_at(1005);
    j->set_cancelling_at(1006);
    j->set_cancelled_at(1007);
    j->set_model("model.gguf");
    j->set_task("qa");
    j->set_prompt_tokens(12345);
    j->set_generated_tokens(678);
    j->set_throughput_tokens_per_s(99.5);
    j->set_error("boom");
    j->set_request_id("rid");
    j->set_placement("spread");
  }
};

class GrpcConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(64 << 20);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    auto connection = MakeGrpcConnection("127.0.0.1:" + std::to_string(port));
    ASSERT_TRUE(connection.ok()) << connection.status();
    connection_ = *std::move(connection);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  const absl::Duration timeout_ = absl::Seconds(20);
  FakeJobService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Connection> connection_;
};

TEST_F(GrpcConnectionTest, CreateJobStreamsOptionsThenBoundedBatches) {
  std::vector<std::string> lines;
  for (int i = 0; i < 5; ++i) lines.push_back(std::string(600 << 10, static_cast<char>('a' + i)));  // 600 KiB
  for (int i = 0; i < 100; ++i) lines.push_back("{\"custom_id\": \"" + std::to_string(i) + "\"}");
  lines.push_back(std::string(3 << 20, 'z'));  // longer than a batch: alone
  JobOptions options;
  options.task = "qa";
  options.max_tokens = 64;
  options.chat_template = "chatml";
  options.request_id = "rid-1";
  options.max_doc_bytes = 1 << 24;
  options.placement = "spread";
  auto job = connection_->CreateJob(options, lines, timeout_);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->id, "job-1");
  EXPECT_EQ(job->request_counts.total, static_cast<int64_t>(lines.size()));
  EXPECT_EQ(job->request_id, "rid-1");
  EXPECT_TRUE(service_.options_first);
  EXPECT_EQ(service_.options.task(), "qa");
  EXPECT_EQ(service_.options.max_tokens(), 64);
  EXPECT_EQ(service_.options.template_(), "chatml");
  EXPECT_EQ(service_.options.max_doc_bytes(), 1 << 24);
  EXPECT_EQ(service_.options.placement(), "spread");
  EXPECT_EQ(service_.lines, lines);
  ASSERT_GE(service_.message_bytes.size(), 5u);
  for (size_t i = 0; i + 1 < service_.message_bytes.size(); ++i) {
    EXPECT_LE(service_.message_bytes[i], kMaxLinesBytesPerMessage) << i;
  }
  EXPECT_EQ(service_.message_bytes.back(), size_t{3} << 20);
}

TEST_F(GrpcConnectionTest, GetJobCarriesEveryField) {
  auto job = connection_->GetJob("job-1", timeout_);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->id, "job-1");
  EXPECT_EQ(job->status, "in_progress");
  EXPECT_EQ(job->request_counts.total, 10);
  EXPECT_EQ(job->request_counts.completed, 4);
  EXPECT_EQ(job->request_counts.failed, 1);
  EXPECT_EQ(job->created_at, 1001);
  EXPECT_EQ(job->in_progress_at, 1002);
  EXPECT_EQ(job->finalizing_at, 1003);
  EXPECT_EQ(job->completed_at, 1004);
  EXPECT_EQ(job->failed_at, 1005);
  EXPECT_EQ(job->cancelling_at, 1006);
  EXPECT_EQ(job->cancelled_at, 1007);
  EXPECT_EQ(job->model, "model.gguf");
  EXPECT_EQ(job->task, "qa");
  EXPECT_EQ(job->prompt_tokens, 12345);
  EXPECT_EQ(job->generated_tokens, 678);
  EXPECT_DOUBLE_EQ(job->throughput_tokens_per_s, 99.5);
  EXPECT_EQ(job->error, "boom");
  EXPECT_EQ(job->request_id, "rid");
  EXPECT_EQ(job->placement, "spread");
}

TEST_F(GrpcConnectionTest, ErrorsKeepTheCodeAndTheServersMessage) {
  auto job = connection_->GetJob("job-9", timeout_);
  EXPECT_EQ(job.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(job.status().message().find("no job 'job-9'"), std::string::npos) << job.status();
  absl::Status s = connection_->GetResults("job-1", "bad", timeout_, [](const auto&) { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("unknown format"), std::string::npos) << s;
}

TEST_F(GrpcConnectionTest, ListAndCancel) {
  auto jobs = connection_->ListJobs(3, timeout_);
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 3u);
  EXPECT_EQ((*jobs)[2].id, "job-2");
  auto cancelled = connection_->CancelJob("job-1", timeout_);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->status, "cancelling");
}

TEST_F(GrpcConnectionTest, ListWorkersKeepsEveryField) {
  auto workers = connection_->ListWorkers(timeout_);
  ASSERT_TRUE(workers.ok()) << workers.status();
  ASSERT_EQ(workers->size(), 2u);
  const WorkerInfo& a = (*workers)[0];
  EXPECT_EQ(a.id, "w1-a");
  EXPECT_EQ(a.name, "a");
  EXPECT_EQ(a.address, "10.0.0.1:7000");
  EXPECT_EQ(a.device, "cuda:0 (NVIDIA H200, 139 GiB)");
  EXPECT_EQ(a.kv_transport, "nccl");
  EXPECT_EQ(a.threads, 8);
  EXPECT_EQ(a.state, "idle");
  EXPECT_EQ(a.kv_bytes_held, 123);
  EXPECT_EQ(a.kv_budget_bytes, 456);
  EXPECT_EQ(a.heartbeat_age_ms, 789);
  EXPECT_EQ(a.joined_at, 1700000000);
  EXPECT_EQ(a.kv_bytes_reported, 321);
  EXPECT_EQ(a.peer_links, 3);
  EXPECT_EQ(a.peer_links_max, 16);
  EXPECT_FALSE(a.busy);
  const WorkerInfo& b = (*workers)[1];
  ASSERT_TRUE(b.busy);
  EXPECT_EQ(b.task.job_id, "job-1");
  EXPECT_EQ(b.task.item, 5);
  EXPECT_EQ(b.task.kind, "chunk");
  EXPECT_EQ(b.task.chunk, 3);
  EXPECT_EQ(b.task.attempt, 2);
  EXPECT_FALSE(b.task.whole);
  EXPECT_EQ(b.task.running_ms, 1500);
  const std::string json = WorkerListToJson(*workers);
  EXPECT_NE(json.find("\"device\":\"cuda:0 (NVIDIA H200, 139 GiB)\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"task\":null"), std::string::npos) << json;  // a's
  EXPECT_NE(json.find("\"kind\":\"chunk\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"address\":null"), std::string::npos) << json;  // b said none
}

TEST_F(GrpcConnectionTest, WatchJobDeliversEventsAndStopsWhenTold) {
  std::vector<std::string> statuses;
  absl::Status s = connection_->WatchJob("job-1", timeout_, [&](const JobInfo& j) {
    statuses.push_back(j.status);
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(statuses, (std::vector<std::string>{"in_progress", "in_progress", "completed"}));

  int events = 0;
  s = connection_->WatchJob("job-1", timeout_, [&](const JobInfo&) {
    ++events;
    return absl::AbortedError("enough");
  });
  EXPECT_EQ(s, absl::AbortedError("enough"));
  EXPECT_EQ(events, 1);
}

TEST_F(GrpcConnectionTest, ResultsOverTheDefaultMessageLimit) {
  service_.big_result = std::string(8 << 20, 'r');  // gRPC's default receive limit is 4 MiB
  std::vector<std::string> got;
  absl::Status s = connection_->GetResults("job-1", "openai", timeout_, [&](const std::vector<std::string>& b) {
    got.insert(got.end(), b.begin(), b.end());
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], "1:openai");
  EXPECT_EQ(got[2].size(), size_t{8} << 20);
}

TEST(GrpcConnectionAddressTest, UnreachableCoordinatorIsNamed) {
  // Port 1 on loopback: nothing listens, the connection is refused at once.
  auto connection = MakeGrpcConnection("127.0.0.1:1");
  ASSERT_TRUE(connection.ok());
  auto job = (*connection)->GetJob("job-1", absl::Seconds(10));
  EXPECT_EQ(job.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(job.status().message().find("127.0.0.1:1"), std::string::npos) << job.status();
  EXPECT_EQ(MakeGrpcConnection("").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mesa::client
