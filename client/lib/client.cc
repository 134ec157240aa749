// Client: submission, waiting, results and retries over a Connection (see client.h).
#include "client/lib/client.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace mesa::client {
namespace {

bool Retryable(absl::StatusCode code, bool read) {
  return code == absl::StatusCode::kUnavailable || (read && code == absl::StatusCode::kDeadlineExceeded);
}

// Codes after which a watch stream is worth opening again (or replacing by polling);
// anything else (no such job, bad request, no permission) would fail again.
bool StreamBroke(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kResourceExhausted:
      return true;
    default:
      return false;
  }
}

absl::Status WriteError(const std::string& path) {
  return absl::InternalError(absl::StrCat("cannot write '", path, "': ", std::strerror(errno)));
}

}  // namespace

Client::Client(std::unique_ptr<Connection> connection, ClientOptions options)
    : connection_(std::move(connection)), options_(std::move(options)) {}

absl::Time Client::Now() const { return options_.now ? options_.now() : absl::Now(); }

void Client::Sleep(absl::Duration d) const {
  if (d <= absl::ZeroDuration()) return;
  if (options_.sleep) {
    options_.sleep(d);
  } else {
    absl::SleepFor(d);
  }
}

absl::Duration Client::Backoff(int retry) {
  const RetryPolicy& p = options_.retry;
  double u;
  {
    absl::MutexLock lock(&random_mu_);
    u = absl::Uniform(random_, 0.0, 1.0);
  }
  const double seconds = absl::ToDoubleSeconds(p.initial_backoff) * std::pow(p.multiplier, retry) * (1 + p.jitter * u);
  return std::min(p.max_backoff, absl::Seconds(seconds));
}

absl::Status Client::Retry(Kind kind, const std::function<absl::Status()>& call) {
  for (int attempt = 0;; ++attempt) {
    absl::Status status = call();
    if (status.ok() || !Retryable(status.code(), kind == Kind::kRead) ||
        attempt + 1 >= options_.retry.max_attempts) {
      return status;
    }
    Sleep(Backoff(attempt));
  }
}

absl::StatusOr<JobInfo> Client::SubmitFile(const std::string& input_path, const JobOptions& options) {
  std::ifstream in(input_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read input '", input_path, "'"));
  std::vector<std::string> lines;
  bool any = false;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    any = any || !absl::StripAsciiWhitespace(line).empty();
    lines.push_back(std::move(line));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading '", input_path, "'"));
  if (!any) return absl::InvalidArgumentError(absl::StrCat("'", input_path, "' has no input lines"));
  return SubmitLines(lines, options);
}

absl::StatusOr<JobInfo> Client::SubmitLines(const std::vector<std::string>& lines, const JobOptions& options) {
  // Without a request_id a repeat could create a second job: one attempt only.
  if (options.request_id.empty()) return connection_->CreateJob(options, lines, options_.upload_timeout);
  absl::StatusOr<JobInfo> job;
  Retry(Kind::kIdempotentWrite, [&] {
          job = connection_->CreateJob(options, lines, options_.upload_timeout);
          return job.status();
        }).IgnoreError();
  return job;
}

absl::StatusOr<JobInfo> Client::Get(const std::string& job_id) {
  absl::StatusOr<JobInfo> job;
  Retry(Kind::kRead, [&] {
    job = connection_->GetJob(job_id, options_.call_timeout);
    return job.status();
  }).IgnoreError();
  return job;
}

absl::StatusOr<std::vector<JobInfo>> Client::List(int32_t limit) {
  absl::StatusOr<std::vector<JobInfo>> jobs;
  Retry(Kind::kRead, [&] {
    jobs = connection_->ListJobs(limit, options_.call_timeout);
    return jobs.status();
  }).IgnoreError();
  return jobs;
}

absl::StatusOr<std::vector<WorkerInfo>> Client::Workers() {
  absl::StatusOr<std::vector<WorkerInfo>> workers;
  Retry(Kind::kRead, [&] {
    workers = connection_->ListWorkers(options_.call_timeout);
    return workers.status();
  }).IgnoreError();
  return workers;
}

absl::StatusOr<JobInfo> Client::Cancel(const std::string& job_id) {
  absl::StatusOr<JobInfo> job;
  Retry(Kind::kIdempotentWrite, [&] {
    job = connection_->CancelJob(job_id, options_.call_timeout);
    return job.status();
  }).IgnoreError();
  return job;
}

absl::StatusOr<WaitResult> Client::Wait(const std::string& job_id, absl::Duration timeout,
                                        const std::function<void(const JobInfo&)>& on_progress) {
  const absl::Time deadline = timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : Now() + timeout;
  WaitResult last;
  last.job.id = job_id;
  int broken = 0;  // broken streams in a row
  while (true) {
    const absl::Duration remaining = deadline - Now();
    if (remaining <= absl::ZeroDuration()) {
      last.timed_out = true;
      return last;
    }
    bool got_event = false;
    absl::Status status = connection_->WatchJob(job_id, remaining, [&](const JobInfo& job) {
      got_event = true;
      last.job = job;
      if (on_progress) on_progress(job);
      return absl::OkStatus();
    });
    if (IsTerminalStatus(last.job.status)) return last;
    if (Now() >= deadline) {
      last.timed_out = true;
      return last;
    }
    if (status.code() == absl::StatusCode::kUnimplemented) return Poll(job_id, deadline, std::move(last), on_progress);
    if (!status.ok() && !StreamBroke(status.code())) return status;
    // The stream ended early (an error, or OK without a terminal status): subscribe again.
    broken = got_event ? 1 : broken + 1;
    if (broken >= options_.retry.max_attempts) return Poll(job_id, deadline, std::move(last), on_progress);
    Sleep(std::min(Backoff(broken - 1), deadline - Now()));
  }
}

absl::StatusOr<WaitResult> Client::Poll(const std::string& job_id, absl::Time deadline, WaitResult last,
                                        const std::function<void(const JobInfo&)>& on_progress) {
  while (true) {
    absl::StatusOr<JobInfo> job = Get(job_id);
    if (!job.ok()) {
      // A coordinator that restarts is unreachable for a while: keep waiting for it (its
      // store resumes the job), until the deadline. Any other error ends the wait.
      if (!absl::IsUnavailable(job.status()) || Now() >= deadline) return job.status();
      Sleep(std::min(options_.poll_interval, deadline - Now()));
      continue;
    }
    last.job = *std::move(job);
    if (on_progress) on_progress(last.job);
    if (IsTerminalStatus(last.job.status)) return last;
    const absl::Duration remaining = deadline - Now();
    if (remaining <= absl::ZeroDuration()) {
      last.timed_out = true;
      return last;
    }
    Sleep(std::min(options_.poll_interval, remaining));
  }
}

absl::StatusOr<int64_t> Client::Results(const std::string& job_id, const std::string& format,
                                        const std::string& output_path) {
  const std::string partial = absl::StrCat(output_path, ".partial.", getpid());
  int64_t written = 0;
  absl::Status status = Retry(Kind::kRead, [&]() -> absl::Status {
    // Each attempt starts the file over: the stream cannot resume.
    std::FILE* f = std::fopen(partial.c_str(), "wb");
    if (f == nullptr) return WriteError(partial);
    written = 0;
    absl::Status s = connection_->GetResults(
        job_id, format, options_.results_timeout, [&](const std::vector<std::string>& lines) -> absl::Status {
          for (const std::string& line : lines) {
            if (std::fwrite(line.data(), 1, line.size(), f) != line.size() || std::fputc('\n', f) == EOF) {
              return WriteError(partial);
            }
          }
          written += static_cast<int64_t>(lines.size());
          return absl::OkStatus();
        });
    if (s.ok() && (std::fflush(f) != 0 || fsync(fileno(f)) != 0)) s = WriteError(partial);
    if (std::fclose(f) != 0 && s.ok()) s = WriteError(partial);
    return s;
  });
  if (status.ok() && std::rename(partial.c_str(), output_path.c_str()) != 0) {
    status = absl::InternalError(
        absl::StrCat("cannot rename '", partial, "' to '", output_path, "': ", std::strerror(errno)));
  }
  if (!status.ok()) {
    std::remove(partial.c_str());
    return status;
  }
  return written;
}

}  // namespace mesa::client
