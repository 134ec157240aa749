// mesa::client::Client: the C++ API of a Mesa coordinator for users' programs and the
// `mesa submit|status|wait|results|cancel|list` commands. Submits JSONL documents as a
// job, follows it, and fetches its results; retries what is safe to retry. Plain C++
// types only; the wire lives behind Connection.
//
//   auto connection = mesa::client::MakeGrpcConnection("coordinator:50051");
//   mesa::client::Client client(std::move(*connection));
//   auto job = client.SubmitFile("docs.jsonl", {.task = "summarize"});
//   auto done = client.Wait(job->id, absl::Hours(1));
//   client.Results(job->id, "mesa", "results.jsonl");
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/lib/connection.h"
#include "client/lib/job_info.h"

namespace mesa::client {

// Retries of idempotent calls (Get, List, Cancel, Results, the re-subscription of Wait's
// watch, and Submit when a request_id makes it idempotent) on UNAVAILABLE, and on
// DEADLINE_EXCEEDED for reads. Before retry k (k = 0, 1, ...) the Client sleeps
// min(max_backoff, initial_backoff * multiplier^k * (1 + jitter * u)), u uniform in [0, 1).
struct RetryPolicy {
  int max_attempts = 5;  // calls in all, the first included
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  double multiplier = 2;
  double jitter = 0.5;
};

struct ClientOptions {
  RetryPolicy retry;
  absl::Duration call_timeout = absl::Seconds(30);     // each unary call
  absl::Duration upload_timeout = absl::Minutes(30);   // each CreateJob stream
  absl::Duration results_timeout = absl::Hours(1);     // each GetResults stream
  absl::Duration poll_interval = absl::Seconds(2);     // Wait, when it cannot watch
  // Time and sleeping, replaceable in tests. Defaults: absl::Now, absl::SleepFor.
  std::function<absl::Time()> now;
  std::function<void(absl::Duration)> sleep;
};

// How Wait ended: the job reached a terminal status, or the timeout came first (then
// `job` is the last state seen; its status may be empty when none was).
struct WaitResult {
  JobInfo job;
  bool timed_out = false;
};

// Thread-safe when its Connection is (the gRPC one is).
class Client {
 public:
  explicit Client(std::unique_ptr<Connection> connection, ClientOptions options = {});

  // Submits the lines of a JSONL file (every line, in order; "\r\n" endings allowed).
  absl::StatusOr<JobInfo> SubmitFile(const std::string& input_path, const JobOptions& options);
  // Submits JSONL lines (without newlines).
  absl::StatusOr<JobInfo> SubmitLines(const std::vector<std::string>& lines, const JobOptions& options);

  absl::StatusOr<JobInfo> Get(const std::string& job_id);
  // Newest first; limit 0 = all.
  absl::StatusOr<std::vector<JobInfo>> List(int32_t limit = 0);
  // Best effort (the job may finish first); returns the job after the request.
  absl::StatusOr<JobInfo> Cancel(const std::string& job_id);
  // The workers registered with the coordinator now, by id.
  absl::StatusOr<std::vector<WorkerInfo>> Workers();

  // Follows the job until it is completed, failed or cancelled, or `timeout` passes
  // (absl::InfiniteDuration() = no limit). `on_progress` (optional) sees each new state.
  // Watches the job's event stream; when the stream breaks it subscribes again (with
  // backoff), and after RetryPolicy::max_attempts broken streams in a row (or at once
  // when the server has no WatchJob) polls Get every poll_interval instead. Errors: the
  // job does not exist, or the coordinator stays unreachable.
  absl::StatusOr<WaitResult> Wait(const std::string& job_id, absl::Duration timeout,
                                  const std::function<void(const JobInfo&)>& on_progress = nullptr);

  // Writes the job's results (format: mesa | openai) to `output_path`, one JSONL line per
  // input line in input order: first to "<output_path>.partial.<pid>", renamed when complete,
  // so `output_path` is never half-written. Returns the number of lines written.
  absl::StatusOr<int64_t> Results(const std::string& job_id, const std::string& format,
                                  const std::string& output_path);

  // The delay before retry `retry` (0-based) under this client's policy.
  absl::Duration Backoff(int retry);

 private:
  enum class Kind { kRead, kIdempotentWrite };
  // Runs `call` up to max_attempts times while it fails with a retryable code for `kind`.
  absl::Status Retry(Kind kind, const std::function<absl::Status()>& call);
  absl::StatusOr<WaitResult> Poll(const std::string& job_id, absl::Time deadline, WaitResult last,
                                  const std::function<void(const JobInfo&)>& on_progress);
  absl::Time Now() const;
  void Sleep(absl::Duration d) const;

  std::unique_ptr<Connection> connection_;
  ClientOptions options_;
  absl::Mutex random_mu_;
  absl::BitGen random_ ABSL_GUARDED_BY(random_mu_);
};

}  // namespace mesa::client
