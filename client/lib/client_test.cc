// Tests of the Client over a scripted fake Connection and a fake clock: retries and
// backoff, what is never retried, Wait's watch / re-subscribe / polling / timeout, and
// atomic results files. Also the job object's JSON and CreateJob's batching.
#include "client/lib/client.h"

#include <unistd.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mesa::client {
namespace {

namespace fs = std::filesystem;

JobInfo Job(const std::string& status, int64_t completed = 0, int64_t total = 3) {
  JobInfo j;
  j.id = "job-1";
  j.status = status;
  j.request_counts = {total, completed, 0};
  return j;
}

// Each call takes the next scripted answer; running out fails the test.
class FakeConnection : public Connection {
 public:
  struct Stream {
    std::vector<JobInfo> events;            // WatchJob
    std::vector<std::vector<std::string>> batches;  // GetResults
    absl::Status end;
    absl::Duration advance_clock;  // how long the stream takes (fake time)
  };

  std::deque<absl::StatusOr<JobInfo>> create, get, cancel;
  std::deque<absl::StatusOr<std::vector<JobInfo>>> list;
  std::deque<Stream> watch, results;
  int create_calls = 0, get_calls = 0, cancel_calls = 0, list_calls = 0, watch_calls = 0, results_calls = 0;
  std::vector<std::string> created_lines;
  JobOptions created_options;
  std::vector<absl::Duration> watch_timeouts;
  absl::Time* clock = nullptr;

  absl::StatusOr<JobInfo> CreateJob(const JobOptions& options, absl::Span<const std::string> lines,
                                    absl::Duration) override {
    ++create_calls;
    created_options = options;
    created_lines.assign(lines.begin(), lines.end());
    return Next(create);
  }
  absl::StatusOr<JobInfo> GetJob(const std::string& job_id, absl::Duration) override {
    ++get_calls;
    EXPECT_EQ(job_id, "job-1");
    return Next(get);
  }
  absl::StatusOr<std::vector<JobInfo>> ListJobs(int32_t, absl::Duration) override {
    ++list_calls;
    return Next(list);
  }
  absl::StatusOr<JobInfo> CancelJob(const std::string&, absl::Duration) override {
    ++cancel_calls;
    return Next(cancel);
  }
  absl::Status WatchJob(const std::string& job_id, absl::Duration timeout,
                        const std::function<absl::Status(const JobInfo&)>& on_event) override {
    ++watch_calls;
    EXPECT_EQ(job_id, "job-1");
    watch_timeouts.push_back(timeout);
    Stream s = Next(watch);
    for (const JobInfo& j : s.events) {
      if (absl::Status st = on_event(j); !st.ok()) return st;
    }
    if (clock != nullptr) *clock += s.advance_clock;
    return s.end;
  }
  absl::Status GetResults(const std::string&, const std::string& format, absl::Duration,
                          const std::function<absl::Status(const std::vector<std::string>&)>& on_batch) override {
    ++results_calls;
    EXPECT_EQ(format, "openai");
    Stream s = Next(results);
    for (const auto& b : s.batches) {
      if (absl::Status st = on_batch(b); !st.ok()) return st;
    }
    return s.end;
  }

 private:
  template <typename T>
  static T Next(std::deque<T>& script) {
    if (script.empty()) {
      ADD_FAILURE() << "unscripted call";
      if constexpr (std::is_same_v<T, Stream>) {
        return Stream{.end = absl::InternalError("unscripted")};
      } else {
        return absl::InternalError("unscripted");
      }
    }
    T t = std::move(script.front());
    script.pop_front();
    return t;
  }
};

class ClientTest : public ::testing::Test {
 protected:
  ClientTest() {
    auto fake = std::make_unique<FakeConnection>();
    fake_ = fake.get();
    fake_->clock = &now_;
    ClientOptions options;
    options.now = [this] { return now_; };
    options.sleep = [this](absl::Duration d) {
      sleeps_.push_back(d);
      now_ += d;
    };
    client_ = std::make_unique<Client>(std::move(fake), options);
  }

  std::string TempDir() {
    const fs::path dir = fs::temp_directory_path() /
                         ("client_test_" + std::to_string(getpid()) + "_" +
                          ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir.string();
  }

  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
  std::vector<absl::Duration> sleeps_;
  FakeConnection* fake_;
  std::unique_ptr<Client> client_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---------------------------------------------------------------- retries

TEST_F(ClientTest, GetRetriesUnavailableThenSucceeds) {
  fake_->get = {absl::UnavailableError("down"), absl::UnavailableError("down"), Job("in_progress")};
  auto job = client_->Get("job-1");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->status, "in_progress");
  EXPECT_EQ(fake_->get_calls, 3);
  ASSERT_EQ(sleeps_.size(), 2u);
  EXPECT_GE(sleeps_[0], absl::Milliseconds(100));
  EXPECT_LT(sleeps_[0], absl::Milliseconds(150));
  EXPECT_GE(sleeps_[1], absl::Milliseconds(200));
  EXPECT_LT(sleeps_[1], absl::Milliseconds(300));
}

TEST_F(ClientTest, NoRetryOnInvalidArgumentOrNotFound) {
  fake_->get = {absl::InvalidArgumentError("bad id"), absl::NotFoundError("GetJob: no job 'job-1'")};
  auto bad = client_->Get("job-1");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  auto missing = client_->Get("job-1");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "GetJob: no job 'job-1'");  // the server's message, kept
  EXPECT_EQ(fake_->get_calls, 2);
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(ClientTest, GivesUpAfterMaxAttemptsWithBoundedBackoff) {
  for (int i = 0; i < 5; ++i) fake_->list.push_back(absl::UnavailableError("cannot reach the coordinator at x:1"));
  auto jobs = client_->List();
  EXPECT_EQ(jobs.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(jobs.status().message(), "cannot reach the coordinator at x:1");
  EXPECT_EQ(fake_->list_calls, 5);
  ASSERT_EQ(sleeps_.size(), 4u);
  for (size_t k = 0; k < sleeps_.size(); ++k) {
    const absl::Duration base = absl::Milliseconds(100) * (1 << k);
    EXPECT_GE(sleeps_[k], base) << k;
    EXPECT_LT(sleeps_[k], base * 1.5) << k;
  }
}

TEST_F(ClientTest, BackoffGrowsToTheCap) {
  for (int k = 0; k < 30; ++k) {
    const absl::Duration d = client_->Backoff(k);
    const absl::Duration base = std::min(absl::Seconds(5), absl::Milliseconds(100) * std::pow(2.0, k));
    EXPECT_GE(d, base) << k;
    EXPECT_LE(d, std::min(absl::Seconds(5), base * 1.5)) << k;
  }
  EXPECT_EQ(client_->Backoff(10), absl::Seconds(5));
}

TEST_F(ClientTest, ReadsRetryDeadlineExceededButCancelDoesNot) {
  fake_->get = {absl::DeadlineExceededError("slow"), Job("in_progress")};
  EXPECT_TRUE(client_->Get("job-1").ok());
  EXPECT_EQ(fake_->get_calls, 2);
  fake_->cancel = {absl::DeadlineExceededError("slow")};
  EXPECT_EQ(client_->Cancel("job-1").status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(fake_->cancel_calls, 1);
  fake_->cancel = {absl::UnavailableError("down"), Job("cancelling")};
  auto cancelled = client_->Cancel("job-1");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->status, "cancelling");
  EXPECT_EQ(fake_->cancel_calls, 3);
}

TEST_F(ClientTest, CreateJobWithoutRequestIdIsNotRetried) {
  fake_->create = {absl::UnavailableError("down"), Job("validating")};
  auto job = client_->SubmitLines({"{}"}, JobOptions{});
  EXPECT_EQ(job.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(fake_->create_calls, 1);
}

TEST_F(ClientTest, CreateJobWithRequestIdIsRetriedOnUnavailableOnly) {
  JobOptions options;
  options.request_id = "8c6f0d55-3e0b-4a43-9d0c-6a0c4b1e8f3a";
  fake_->create = {absl::UnavailableError("down"), Job("validating")};
  auto job = client_->SubmitLines({"{}"}, options);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(fake_->create_calls, 2);
  EXPECT_EQ(fake_->created_options.request_id, options.request_id);

  fake_->create = {absl::DeadlineExceededError("slow upload")};
  EXPECT_EQ(client_->SubmitLines({"{}"}, options).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(fake_->create_calls, 3);
}

// ---------------------------------------------------------------- submit

TEST_F(ClientTest, SubmitFileSendsEveryLineInOrder) {
  const std::string path = TempDir() + "/in.jsonl";
  std::ofstream(path) << "{\"document\": \"a\"}\r\n\n{\"document\": \"b\"}\n";
  fake_->create = {Job("validating")};
  JobOptions options;
  options.task = "qa";
  auto job = client_->SubmitFile(path, options);
  ASSERT_TRUE(job.ok()) << job.status();
  // Blank lines travel too, so that the coordinator numbers lines as the file does.
  EXPECT_EQ(fake_->created_lines, (std::vector<std::string>{"{\"document\": \"a\"}", "", "{\"document\": \"b\"}"}));
  EXPECT_EQ(fake_->created_options.task, "qa");
}

TEST_F(ClientTest, SubmitFileRejectsMissingAndEmptyFiles) {
  const std::string dir = TempDir();
  EXPECT_EQ(client_->SubmitFile(dir + "/nope.jsonl", {}).status().code(), absl::StatusCode::kNotFound);
  std::ofstream(dir + "/blank.jsonl") << "\n  \n";
  auto blank = client_->SubmitFile(dir + "/blank.jsonl", {});
  EXPECT_EQ(blank.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(blank.status().message().find("blank.jsonl"), std::string::npos);
  EXPECT_EQ(fake_->create_calls, 0);
}

// ---------------------------------------------------------------- wait

TEST_F(ClientTest, WaitFollowsTheWatchStream) {
  fake_->watch = {{.events = {Job("in_progress", 1), Job("in_progress", 2), Job("completed", 3)}}};
  std::vector<int64_t> seen;
  auto r = client_->Wait("job-1", absl::InfiniteDuration(),
                         [&](const JobInfo& j) { seen.push_back(j.request_counts.completed); });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->timed_out);
  EXPECT_EQ(r->job.status, "completed");
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(fake_->get_calls, 0);
}

TEST_F(ClientTest, WaitSubscribesAgainWhenTheStreamBreaks) {
  fake_->watch = {{.events = {Job("in_progress", 1)}, .end = absl::UnavailableError("reset")},
                  {.end = absl::InternalError("RST_STREAM")},
                  {.events = {Job("failed", 1)}}};
  auto r = client_->Wait("job-1", absl::Minutes(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->job.status, "failed");
  EXPECT_EQ(fake_->watch_calls, 3);
  EXPECT_EQ(fake_->get_calls, 0);
  ASSERT_EQ(sleeps_.size(), 2u);
  // The second break came after no event: its backoff is the longer one.
  EXPECT_GE(sleeps_[1], absl::Milliseconds(200));
  // Each watch gets what is left of the 10 minutes.
  EXPECT_EQ(fake_->watch_timeouts[0], absl::Minutes(10));
  EXPECT_EQ(fake_->watch_timeouts[1], absl::Minutes(10) - sleeps_[0]);
}

TEST_F(ClientTest, WaitFallsBackToPollingWhenWatchKeepsFailing) {
  for (int i = 0; i < 5; ++i) fake_->watch.push_back({.end = absl::UnavailableError("no streams")});
  fake_->get = {Job("in_progress", 2), Job("completed", 3)};
  int progress = 0;
  auto r = client_->Wait("job-1", absl::InfiniteDuration(), [&](const JobInfo&) { ++progress; });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->job.status, "completed");
  EXPECT_EQ(r->job.request_counts.completed, 3);
  EXPECT_EQ(fake_->watch_calls, 5);
  EXPECT_EQ(fake_->get_calls, 2);
  EXPECT_EQ(progress, 2);
  EXPECT_EQ(sleeps_.back(), absl::Seconds(2));  // the poll interval
}

TEST_F(ClientTest, WaitPollsAtOnceWithoutWatchJob) {
  fake_->watch = {{.end = absl::UnimplementedError("WatchJob")}};
  fake_->get = {Job("cancelled", 1)};
  auto r = client_->Wait("job-1", absl::Minutes(1));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->job.status, "cancelled");
  EXPECT_EQ(fake_->watch_calls, 1);
}

TEST_F(ClientTest, WaitReturnsErrorsThatWouldRepeat) {
  fake_->watch = {{.end = absl::NotFoundError("WatchJob: no job 'job-1'")}};
  auto r = client_->Wait("job-1", absl::Minutes(1));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(fake_->watch_calls, 1);
  EXPECT_EQ(fake_->get_calls, 0);
}

TEST_F(ClientTest, WaitTimesOutOnTheWatch) {
  // The stream runs until its deadline, as gRPC's would.
  fake_->watch = {{.events = {Job("in_progress", 1)},
                   .end = absl::DeadlineExceededError("Deadline Exceeded"),
                   .advance_clock = absl::Seconds(30)}};
  auto r = client_->Wait("job-1", absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->timed_out);
  EXPECT_EQ(r->job.status, "in_progress");
  EXPECT_EQ(r->job.request_counts.completed, 1);
  EXPECT_EQ(fake_->watch_timeouts, (std::vector<absl::Duration>{absl::Seconds(30)}));
}

TEST_F(ClientTest, WaitTimesOutWhilePolling) {
  fake_->watch = {{.end = absl::UnimplementedError("WatchJob")}};
  for (int i = 0; i < 4; ++i) fake_->get.push_back(Job("in_progress", 1));
  auto r = client_->Wait("job-1", absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->timed_out);
  // Polls at 0, 2, 4 and 5 s: the last sleep is cut to the deadline.
  EXPECT_EQ(fake_->get_calls, 4);
  EXPECT_EQ(sleeps_, (std::vector<absl::Duration>{absl::Seconds(2), absl::Seconds(2), absl::Seconds(1)}));
}

// ---------------------------------------------------------------- results

TEST_F(ClientTest, ResultsAreWrittenInOrderThenRenamed) {
  const std::string dir = TempDir();
  const std::string out = dir + "/results.jsonl";
  fake_->results = {{.batches = {{"{\"line\":1}", "{\"line\":2}"}, {"{\"line\":3}"}}}};
  auto n = client_->Results("job-1", "openai", out);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 3);
  EXPECT_EQ(ReadFile(out), "{\"line\":1}\n{\"line\":2}\n{\"line\":3}\n");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);  // no leftovers
}

TEST_F(ClientTest, ResultsStartOverWhenTheStreamBreaks) {
  const std::string out = TempDir() + "/results.jsonl";
  fake_->results = {{.batches = {{"a", "b"}}, .end = absl::UnavailableError("reset")},
                    {.batches = {{"a", "b"}, {"c"}}}};
  auto n = client_->Results("job-1", "openai", out);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 3);
  EXPECT_EQ(ReadFile(out), "a\nb\nc\n");
  EXPECT_EQ(fake_->results_calls, 2);
}

TEST_F(ClientTest, FailedResultsLeaveTheOutputUntouched) {
  const std::string dir = TempDir();
  const std::string out = dir + "/results.jsonl";
  std::ofstream(out) << "old\n";
  fake_->results = {{.batches = {{"a"}}, .end = absl::FailedPreconditionError("job is in_progress")}};
  auto n = client_->Results("job-1", "openai", out);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReadFile(out), "old\n");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST_F(ClientTest, ResultsNameAnUnwritablePath) {
  const std::string out = TempDir() + "/no/such/dir/results.jsonl";
  auto n = client_->Results("job-1", "openai", out);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(n.status().message().find("no/such/dir"), std::string::npos) << n.status();
  EXPECT_EQ(fake_->results_calls, 0);
}

// ---------------------------------------------------------------- JSON, batching

TEST(JobInfoTest, JsonHasTheJobObjectShape) {
  JobInfo j = Job("completed", 2, 3);
  j.request_counts.failed = 1;
  j.created_at = 100;
  j.in_progress_at = 101;
  j.completed_at = 110;
  j.model = "llama";
  j.task = "summarize";
  j.prompt_tokens = 5000;
  j.generated_tokens = 300;
  j.throughput_tokens_per_s = 589.5;
  j.placement = "whole";
  const auto o = nlohmann::json::parse(JobInfoToJson(j));
  EXPECT_EQ(o["id"], "job-1");
  EXPECT_EQ(o["object"], "batch");
  EXPECT_EQ(o["status"], "completed");
  EXPECT_EQ(o["request_counts"], (nlohmann::json{{"total", 3}, {"completed", 2}, {"failed", 1}}));
  EXPECT_EQ(o["created_at"], 100);
  EXPECT_EQ(o["completed_at"], 110);
  for (const char* key : {"finalizing_at", "failed_at", "cancelling_at", "cancelled_at", "error", "request_id"}) {
    ASSERT_TRUE(o.contains(key)) << key;
    EXPECT_TRUE(o[key].is_null()) << key;
  }
  EXPECT_EQ(o["prompt_tokens"], 5000);
  EXPECT_EQ(o["generated_tokens"], 300);
  EXPECT_DOUBLE_EQ(o["throughput_tokens_per_s"].get<double>(), 589.5);
  EXPECT_EQ(o["placement"], "whole");
  EXPECT_EQ(o.size(), 19u);

  const auto list = nlohmann::json::parse(JobListToJson({j, Job("in_progress")}));
  ASSERT_TRUE(list.is_array());
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[1]["status"], "in_progress");
  EXPECT_EQ(JobListToJson({}), "[]");
}

TEST(JobInfoTest, TerminalStatuses) {
  for (const char* s : {"completed", "failed", "cancelled"}) EXPECT_TRUE(IsTerminalStatus(s)) << s;
  for (const char* s : {"validating", "in_progress", "finalizing", "cancelling", ""}) {
    EXPECT_FALSE(IsTerminalStatus(s)) << s;
  }
}

TEST(SplitIntoBatchesTest, BatchesStayUnderTheLimitAndCoverAllLines) {
  std::vector<std::string> lines;
  for (int i = 0; i < 50; ++i) lines.push_back(std::string(100 + 37 * i, 'x'));
  lines.push_back(std::string(5000, 'y'));  // longer than a batch: alone
  lines.push_back("z");
  const size_t max_bytes = 2000;
  const auto batches = SplitIntoBatches(lines, max_bytes);
  size_t next = 0;
  for (const auto& [begin, end] : batches) {
    EXPECT_EQ(begin, next);
    ASSERT_LT(begin, end);
    size_t bytes = 0;
    for (size_t i = begin; i < end; ++i) bytes += lines[i].size();
    if (end - begin > 1) {
      EXPECT_LE(bytes, max_bytes);
    }
    next = end;
  }
  EXPECT_EQ(next, lines.size());
  EXPECT_GT(batches.size(), 10u);
  EXPECT_TRUE(SplitIntoBatches({}).empty());
}

}  // namespace
}  // namespace mesa::client
