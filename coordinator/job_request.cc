// CreateJob's checks before anything is stored (see job_request.h).
#include "coordinator/job_request.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "coordinator/scheduler.h"
#include "jobs/job_format.h"
#include "jobs/templates.h"
#include "nlohmann/json.hpp"

namespace mesa::coord {

absl::Status CheckJobRequest(const JobRequest& request) {
  const std::string task = request.task.empty() ? "summarize" : request.task;
  MESA_RETURN_IF_ERROR(jobs::ParseTaskKind(task).status());
  if (!request.chat_template.empty()) MESA_RETURN_IF_ERROR(jobs::ParseChatTemplate(request.chat_template).status());
  if (request.max_tokens < 0) return absl::InvalidArgumentError("max_tokens must be >= 0");
  if (request.max_doc_bytes < 0) return absl::InvalidArgumentError("max_doc_bytes must be >= 0");
  Placement placement;
  if (!request.placement.empty() && !ParsePlacement(request.placement, &placement)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown placement '", request.placement, "' (choose auto, whole or spread)"));
  }
  if (request.request_id.size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("request_id longer than ", kMaxRequestIdBytes, " bytes"));
  }
  return absl::OkStatus();
}

std::string JobOptionsJson(const JobRequest& request) {
  nlohmann::json o = {{"task", request.task.empty() ? "summarize" : request.task}};
  if (request.max_tokens > 0) o["max_tokens"] = request.max_tokens;
  if (!request.chat_template.empty()) o["template"] = request.chat_template;
  if (request.max_doc_bytes > 0) o["max_doc_bytes"] = request.max_doc_bytes;
  if (!request.placement.empty()) o["placement"] = request.placement;
  return o.dump();
}

absl::StatusOr<std::vector<ItemRecord>> JobItems(const std::string& job_id, const std::vector<std::string>& lines,
                                                 int64_t max_job_lines) {
  std::vector<ItemRecord> items;
  int64_t line_no = 0;
  for (const std::string& raw : lines) {
    ++line_no;
    std::string text = raw;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (absl::StripAsciiWhitespace(text).empty()) continue;  // as `mesa run`: blank lines are no items
    ItemRecord item;
    item.job_id = job_id;
    item.idx = static_cast<int64_t>(items.size());
    item.line = line_no;
    item.input = std::move(text);
    items.push_back(std::move(item));
  }
  if (items.empty()) return absl::InvalidArgumentError("the job has no input lines");
  if (static_cast<int64_t>(items.size()) > max_job_lines) {
    return absl::InvalidArgumentError(
        absl::StrCat("the job has ", items.size(), " lines; at most ", max_job_lines, " are accepted"));
  }
  return items;
}

}  // namespace mesa::coord
