// Plain C++ types of the Mesa job API (no protobuf): the options of a new job and the
// job object (OpenAI batch shape: status names, request counts, unix-second timestamps),
// and its JSON form as `mesa status --json` and `mesa list --json` print it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mesa::client {

// Options of a new job. Empty strings and zeros leave the choice to the coordinator.
struct JobOptions {
  std::string task;           // summarize | qa | prompt (lines may name their own); "" = summarize
  int64_t max_tokens = 0;     // per line unless the line says; 0 = the coordinator's default
  std::string chat_template;  // auto | llama2 | llama3 | chatml | mistral | raw; "" = auto
  // Optional (a UUID): a repeat with the same id returns the first job. Setting it also
  // lets the Client retry a submission that failed in transit.
  std::string request_id;
  int64_t max_doc_bytes = 0;  // 0 = the coordinator's default
  std::string placement;      // auto | whole | spread; "" = the coordinator's choice
};

struct RequestCounts {
  int64_t total = 0;
  int64_t completed = 0;
  int64_t failed = 0;
};

// A job as the coordinator reports it. Timestamps are unix seconds; 0 = not (yet).
struct JobInfo {
  std::string id;
  // validating | in_progress | finalizing | completed | failed | cancelling | cancelled
  std::string status;
  RequestCounts request_counts;
  int64_t created_at = 0;
  int64_t in_progress_at = 0;
  int64_t finalizing_at = 0;
  int64_t completed_at = 0;
  int64_t failed_at = 0;
  int64_t cancelling_at = 0;
  int64_t cancelled_at = 0;
  std::string model;
  std::string task;
  int64_t prompt_tokens = 0;  // of the finished items
  int64_t generated_tokens = 0;
  double throughput_tokens_per_s = 0;
  std::string error;  // why the job failed, when it did
  std::string request_id;
  std::string placement;
};

// completed, failed, cancelled (and expired): the job will not change any more.
bool IsTerminalStatus(std::string_view status);

// The job object, one line of JSON: {"id", "object": "batch", "status", "request_counts":
// {"total", "completed", "failed"}, "created_at", "in_progress_at", "finalizing_at",
// "completed_at", "failed_at", "cancelling_at", "cancelled_at", "model", "task",
// "prompt_tokens", "generated_tokens", "throughput_tokens_per_s", "error", "request_id",
// "placement"}. Timestamps of 0 and empty error, request_id and placement are null.
std::string JobInfoToJson(const JobInfo& job);
// A JSON array of job objects, one line.
std::string JobListToJson(const std::vector<JobInfo>& jobs);

// A worker registered with the coordinator, as `mesa workers` shows it.
struct WorkerInfo {
  std::string id;
  std::string name;
  std::string address;       // where it serves ("" in-process)
  std::string device;        // what it computes on, as it said ("" = not said)
  std::string kv_transport;  // grpc | socket | nccl ("" = not said)
  int32_t threads = 0;       // 0 = not said
  std::string state;         // idle | busy | draining
  int64_t kv_bytes_held = 0;
  int64_t kv_budget_bytes = 0;  // 0 = no limit
  int64_t heartbeat_age_ms = 0;
  int64_t joined_at = 0;        // unix seconds
  int64_t kv_bytes_reported = 0;  // chunk K/V it holds by its own count (last heartbeat)
  int32_t peer_links = 0;         // socket|nccl: peer links it keeps (last heartbeat)
  int32_t peer_links_max = 0;     // its --kv-links; 0 = no bound or no peer links
  // Its task in flight, when busy.
  struct Task {
    std::string job_id;
    int64_t item = 0;
    std::string kind;  // chunk | final
    int32_t chunk = -1;
    int32_t attempt = 0;
    bool whole = false;
    int64_t running_ms = 0;
  };
  bool busy = false;  // `task` is set
  Task task;
};
// A JSON array of workers, one line: {"id", "name", "address", "device", "kv_transport",
// "threads", "state", "kv_bytes_held", "kv_budget_bytes", "kv_bytes_reported",
// "peer_links", "peer_links_max", "heartbeat_age_ms", "joined_at", "task": null |
// {"job_id", "item", "kind", "chunk", "attempt", "whole", "running_ms"}}.
std::string WorkerListToJson(const std::vector<WorkerInfo>& workers);

}  // namespace mesa::client
