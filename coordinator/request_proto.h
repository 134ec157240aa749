// The coordinator's requests off the wire, checked before the core sees them: CreateJob's
// client stream (one message with the job's options first, then any number with lines,
// within the job's byte limit) and the worker registry's requests. Used by the services
// (coordinator/coordinator_service.cc) and by the RPC fuzzer (fuzz/rpc_fuzzer.cc) on
// hostile messages without a server.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/job_request.h"
#include "mesa/v1/job_service.pb.h"
#include "mesa/v1/worker_service.pb.h"

namespace mesa::coord {

JobRequest FromProto(const v1::JobOptions& options);

class CreateJobStream {
 public:
  explicit CreateJobStream(int64_t max_job_bytes) : max_job_bytes_(max_job_bytes) {}
  // The next message; its lines are moved out. INVALID_ARGUMENT when the first message
  // does not hold the options, or a later one does; RESOURCE_EXHAUSTED once the lines'
  // bytes exceed max_job_bytes. After an error the stream is done with.
  absl::Status Add(v1::CreateJobRequest& message);
  // After the last message: INVALID_ARGUMENT when there was none.
  absl::Status Finish() const;
  const JobRequest& request() const { return request_; }
  const std::vector<std::string>& lines() const { return lines_; }

 private:
  int64_t max_job_bytes_;
  bool started_ = false;
  JobRequest request_;
  std::vector<std::string> lines_;
  int64_t bytes_ = 0;
};

// INVALID_ARGUMENT for a Register without an address or a model fingerprint, and for a
// Heartbeat or Deregister without a worker_id.
absl::Status CheckRequest(const v1::RegisterRequest& request);
absl::Status CheckRequest(const v1::HeartbeatRequest& request);
absl::Status CheckRequest(const v1::DeregisterRequest& request);

}  // namespace mesa::coord
