// JSON form of the job object (see job_info.h).
#include "client/lib/job_info.h"

#include "nlohmann/json.hpp"

namespace mesa::client {
namespace {

// Keys in the documented order.
using json = nlohmann::ordered_json;

json Timestamp(int64_t t) { return t == 0 ? json(nullptr) : json(t); }
json OptionalString(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

json ToJson(const JobInfo& job) {
  return json{
      {"id", job.id},
      {"object", "batch"},
      {"status", job.status},
      {"request_counts",
       {{"total", job.request_counts.total},
        {"completed", job.request_counts.completed},
        {"failed", job.request_counts.failed}}},
      {"created_at", Timestamp(job.created_at)},
      {"in_progress_at", Timestamp(job.in_progress_at)},
      {"finalizing_at", Timestamp(job.finalizing_at)},
      {"completed_at", Timestamp(job.completed_at)},
      {"failed_at", Timestamp(job.failed_at)},
      {"cancelling_at", Timestamp(job.cancelling_at)},
      {"cancelled_at", Timestamp(job.cancelled_at)},
      {"model", job.model},
      {"task", job.task},
      {"prompt_tokens", job.prompt_tokens},
      {"generated_tokens", job.generated_tokens},
      {"throughput_tokens_per_s", job.throughput_tokens_per_s},
      {"error", OptionalString(job.error)},
      {"request_id", OptionalString(job.request_id)},
      {"placement", OptionalString(job.placement)},
  };
}

}  // namespace

bool IsTerminalStatus(std::string_view status) {
  return status == "completed" || status == "failed" || status == "cancelled" || status == "expired";
}

std::string JobInfoToJson(const JobInfo& job) { return ToJson(job).dump(); }

std::string JobListToJson(const std::vector<JobInfo>& jobs) {
  json array = json::array();
  for (const JobInfo& job : jobs) array.push_back(ToJson(job));
  return array.dump();
}

std::string WorkerListToJson(const std::vector<WorkerInfo>& workers) {
  json array = json::array();
  for (const WorkerInfo& w : workers) {
    json task = nullptr;
    if (w.busy) {
      task = json{{"job_id", w.task.job_id}, {"item", w.task.item},         {"kind", w.task.kind},
                  {"chunk", w.task.chunk},   {"attempt", w.task.attempt},   {"whole", w.task.whole},
                  {"running_ms", w.task.running_ms}};
    }
    array.push_back(json{{"id", w.id},
                         {"name", w.name},
                         {"address", OptionalString(w.address)},
                         {"device", OptionalString(w.device)},
                         {"kv_transport", OptionalString(w.kv_transport)},
                         {"threads", w.threads},
                         {"state", w.state},
                         {"kv_bytes_held", w.kv_bytes_held},
                         {"kv_budget_bytes", w.kv_budget_bytes},
                         {"kv_bytes_reported", w.kv_bytes_reported},
                         {"peer_links", w.peer_links},
                         {"peer_links_max", w.peer_links_max},
                         {"heartbeat_age_ms", w.heartbeat_age_ms},
                         {"joined_at", Timestamp(w.joined_at)},
                         {"task", task}});
  }
  return array.dump();
}

}  // namespace mesa::client
