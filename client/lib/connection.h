// Connection: one call per JobService RPC, in plain C++ types. It is the seam between
// the Client (retries, waiting, files) and the wire: MakeGrpcConnection
// (grpc_connection.h) implements it over gRPC, tests implement it with scripted fakes.
// Errors carry the gRPC code as the absl code (the numbering is the same) and the
// server's message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/lib/job_info.h"

namespace mesa::client {

// CreateJob sends the input lines in messages of at most this many bytes of lines (a
// single longer line goes in a message of its own).
inline constexpr size_t kMaxLinesBytesPerMessage = 1 << 20;

// Every call takes `timeout`: the deadline of the whole call, streams included
// (absl::InfiniteDuration() = none). Stream callbacks run on the calling thread; one
// returning an error cancels the call, and the call returns that error.
class Connection {
 public:
  virtual ~Connection() = default;

  // Streams `options`, then `lines` (JSONL lines without newlines, in input order) in
  // batches of at most kMaxLinesBytesPerMessage; returns the created (or, for a repeated
  // request_id, the first) job.
  virtual absl::StatusOr<JobInfo> CreateJob(const JobOptions& options, absl::Span<const std::string> lines,
                                            absl::Duration timeout) = 0;
  virtual absl::StatusOr<JobInfo> GetJob(const std::string& job_id, absl::Duration timeout) = 0;
  // Newest first; limit 0 = all.
  virtual absl::StatusOr<std::vector<JobInfo>> ListJobs(int32_t limit, absl::Duration timeout) = 0;
  // Best effort; returns the job as it is after the request (usually cancelling).
  virtual absl::StatusOr<JobInfo> CancelJob(const std::string& job_id, absl::Duration timeout) = 0;
  // Calls `on_event` with the job whenever its counts or status change; returns when the
  // stream ends (OK after a terminal status).
  virtual absl::Status WatchJob(const std::string& job_id, absl::Duration timeout,
                                const std::function<absl::Status(const JobInfo&)>& on_event) = 0;
  // Calls `on_batch` with each batch of result lines (JSONL without newlines, in input
  // order). format: mesa | openai ("" = mesa).
  virtual absl::Status GetResults(const std::string& job_id, const std::string& format, absl::Duration timeout,
                                  const std::function<absl::Status(const std::vector<std::string>&)>& on_batch) = 0;
  // The workers registered now, by id. The default: UNIMPLEMENTED (a connection written
  // before the call existed).
  virtual absl::StatusOr<std::vector<WorkerInfo>> ListWorkers(absl::Duration timeout);
};

// The [begin, end) index ranges of `lines` that CreateJob sends together: consecutive,
// covering all lines, each at most `max_bytes` of line bytes unless it holds one line.
std::vector<std::pair<size_t, size_t>> SplitIntoBatches(absl::Span<const std::string> lines,
                                                        size_t max_bytes = kMaxLinesBytesPerMessage);

}  // namespace mesa::client
