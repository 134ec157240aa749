// What CreateJob is asked, and its checks before anything is stored: the job's options
// (task, template, limits, placement, request_id) and its input lines as items.
// Transport-free: CoordinatorCore::CreateJob runs these first, the JobService builds the
// request from the wire (coordinator/request_proto.h), and the RPC fuzzer
// (fuzz/rpc_fuzzer.cc) reaches them with hostile bytes without a server or a store.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/job_store.h"

namespace mesa::coord {

// What CreateJob is asked (the proto's JobOptions, as plain fields).
struct JobRequest {
  std::string task;          // "" = summarize
  int64_t max_tokens = 0;    // 0 = default
  std::string chat_template; // "" = the coordinator's
  std::string request_id;
  int64_t max_doc_bytes = 0; // 0 = default
  std::string placement;     // "" = the coordinator's
};

inline constexpr size_t kMaxRequestIdBytes = 256;

// INVALID_ARGUMENT for an unknown task, template or placement, a negative max_tokens or
// max_doc_bytes, or a request_id over kMaxRequestIdBytes.
absl::Status CheckJobRequest(const JobRequest& request);

// The job's options as stored with it (JobRecord::options_json): the task, and whatever
// else the request set.
std::string JobOptionsJson(const JobRequest& request);

// The items of a job's input lines (as `mesa run` reads a file): a trailing '\r'
// dropped, blank lines skipped, `line` the 1-based input line, `idx` the item's index.
// INVALID_ARGUMENT when no line is left, or more than max_job_lines are.
absl::StatusOr<std::vector<ItemRecord>> JobItems(const std::string& job_id, const std::vector<std::string>& lines,
                                                 int64_t max_job_lines);

}  // namespace mesa::coord
