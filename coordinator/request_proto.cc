// The coordinator's requests off the wire (see request_proto.h).
#include "coordinator/request_proto.h"

#include "absl/strings/str_cat.h"

namespace mesa::coord {

JobRequest FromProto(const v1::JobOptions& o) {
  JobRequest req;
  req.task = o.task();
  req.max_tokens = o.max_tokens();
  req.chat_template = o.template_();
  req.request_id = o.request_id();
  req.max_doc_bytes = o.max_doc_bytes();
  req.placement = o.placement();
  return req;
}

absl::Status CreateJobStream::Add(v1::CreateJobRequest& msg) {
  if (!started_) {
    if (msg.part_case() != v1::CreateJobRequest::kOptions) return Finish();
    request_ = FromProto(msg.options());
    started_ = true;
    return absl::OkStatus();
  }
  if (msg.part_case() != v1::CreateJobRequest::kLines) {
    return absl::InvalidArgumentError("CreateJob: options may come only once, first");
  }
  for (std::string& line : *msg.mutable_lines()->mutable_lines()) {
    bytes_ += static_cast<int64_t>(line.size());
    if (bytes_ > max_job_bytes_) {
      return absl::ResourceExhaustedError(absl::StrCat("the job's lines exceed ", max_job_bytes_, " bytes"));
    }
    lines_.push_back(std::move(line));
  }
  return absl::OkStatus();
}

absl::Status CreateJobStream::Finish() const {
  if (!started_) return absl::InvalidArgumentError("CreateJob must start with a message holding the job's options");
  return absl::OkStatus();
}

absl::Status CheckRequest(const v1::RegisterRequest& req) {
  if (req.address().empty()) return absl::InvalidArgumentError("Register without an address");
  if (req.model_fingerprint().empty()) return absl::InvalidArgumentError("Register without a model fingerprint");
  constexpr size_t kMaxLabel = 256;  // name, device, transport: labels for people, not payloads
  for (const auto& [field, value] : {std::pair<const char*, const std::string*>{"name", &req.name()},
                                     {"device", &req.device()},
                                     {"kv_transport", &req.kv_transport()}}) {
    if (value->size() > kMaxLabel) {
      return absl::InvalidArgumentError(
          absl::StrCat("Register: ", field, " is ", value->size(), " bytes (at most ", kMaxLabel, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckRequest(const v1::HeartbeatRequest& req) {
  if (req.worker_id().empty()) return absl::InvalidArgumentError("worker_id is empty");
  return absl::OkStatus();
}

absl::Status CheckRequest(const v1::DeregisterRequest& req) {
  if (req.worker_id().empty()) return absl::InvalidArgumentError("worker_id is empty");
  return absl::OkStatus();
}

}  // namespace mesa::coord
