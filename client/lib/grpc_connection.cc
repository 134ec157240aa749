// GrpcConnection: the Connection over the generated JobService stub (see
// grpc_connection.h). Conversions between the proto messages and the plain types live
// here and nowhere else.
#include "client/lib/grpc_connection.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "mesa/v1/job_service.grpc.pb.h"

namespace mesa::client {
namespace {

JobInfo FromProto(const v1::Job& p) {
  JobInfo j;
  j.id = p.id();
  j.status = p.status();
  j.request_counts = {p.request_counts().total(), p.request_counts().completed(), p.request_counts().failed()};
  j.created_at = p.created_at();
  j.in_progress_at = p.in_progress_at();
  j.finalizing_at = p.finalizing_at();
  j.completed_at = p.completed_at();
  j.failed_at = p.failed_at();
  j.cancelling_at = p.cancelling_at();
  j.cancelled_at = p.cancelled_at();
  j.model = p.model();
  j.task = p.task();
  j.prompt_tokens = p.prompt_tokens();
  j.generated_tokens = p.generated_tokens();
  j.throughput_tokens_per_s = p.throughput_tokens_per_s();
  j.error = p.error();
  j.request_id = p.request_id();
  j.placement = p.placement();
  return j;
}

void ToProto(const JobOptions& o, v1::JobOptions* p) {
  p->set_task(o.task);
  p->set_max_tokens(o.max_tokens);
  p->set_template_(o.chat_template);
  p->set_request_id(o.request_id);
  p->set_max_doc_bytes(o.max_doc_bytes);
  p->set_placement(o.placement);
}

class GrpcConnection : public Connection {
 public:
  GrpcConnection(std::string address, std::shared_ptr<grpc::Channel> channel, std::string bearer_token)
      : address_(std::move(address)),
        stub_(v1::JobService::NewStub(std::move(channel))),
        authorization_(bearer_token.empty() ? "" : "Bearer " + bearer_token) {}

  absl::StatusOr<JobInfo> CreateJob(const JobOptions& options, absl::Span<const std::string> lines,
                                    absl::Duration timeout) override {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    v1::Job response;
    std::unique_ptr<grpc::ClientWriter<v1::CreateJobRequest>> writer = stub_->CreateJob(&ctx, &response);
    v1::CreateJobRequest request;
    ToProto(options, request.mutable_options());
    // A failed Write means the stream broke; Finish says why.
    bool open = writer->Write(request);
    for (const auto& [begin, end] : SplitIntoBatches(lines)) {
      if (!open) break;
      request.Clear();
      v1::InputLines* batch = request.mutable_lines();
      for (size_t i = begin; i < end; ++i) batch->add_lines(lines[i]);
      open = writer->Write(request);
    }
    if (open) writer->WritesDone();
    grpc::Status status = writer->Finish();
    if (!status.ok()) return ToAbsl(status, "CreateJob");
    return FromProto(response);
  }

  absl::StatusOr<JobInfo> GetJob(const std::string& job_id, absl::Duration timeout) override {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    v1::Job response;
    grpc::Status status = stub_->GetJob(&ctx, request, &response);
    if (!status.ok()) return ToAbsl(status, "GetJob");
    return FromProto(response);
  }

  absl::StatusOr<std::vector<JobInfo>> ListJobs(int32_t limit, absl::Duration timeout) override {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    v1::ListJobsRequest request;
    request.set_limit(limit);
    v1::ListJobsResponse response;
    grpc::Status status = stub_->ListJobs(&ctx, request, &response);
    if (!status.ok()) return ToAbsl(status, "ListJobs");
    std::vector<JobInfo> jobs;
    jobs.reserve(response.jobs_size());
    for (const v1::Job& job : response.jobs()) jobs.push_back(FromProto(job));
    return jobs;
  }

  absl::StatusOr<std::vector<WorkerInfo>> ListWorkers(absl::Duration timeout) override {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    v1::ListWorkersResponse response;
    grpc::Status status = stub_->ListWorkers(&ctx, v1::ListWorkersRequest(), &response);
    if (!status.ok()) return ToAbsl(status, "ListWorkers");
    std::vector<WorkerInfo> workers;
    for (const v1::Worker& w : response.workers()) {
      WorkerInfo out;
      out.id = w.id();
      out.name = w.name();
      out.address = w.address();
      out.device = w.device();
      out.kv_transport = w.kv_transport();
      out.threads = w.threads();
      out.state = w.state();
      out.kv_bytes_held = w.kv_bytes_held();
      out.kv_budget_bytes = w.kv_budget_bytes();
      out.heartbeat_age_ms = w.heartbeat_age_ms();
      out.joined_at = w.joined_at();
      out.kv_bytes_reported = w.kv_bytes_reported();
      out.peer_links = w.peer_links();
      out.peer_links_max = w.peer_links_max();
      out.busy = w.has_task();
      if (out.busy) {
        out.task = WorkerInfo::Task{w.task().job_id(), w.task().item(),    w.task().kind(),      w.task().chunk(),
                                    w.task().attempt(), w.task().whole(), w.task().running_ms()};
      }
      workers.push_back(std::move(out));
    }
    return workers;
  }

  absl::StatusOr<JobInfo> CancelJob(const std::string& job_id, absl::Duration timeout) override {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    v1::CancelJobRequest request;
    request.set_job_id(job_id);
    v1::Job response;
    grpc::Status status = stub_->CancelJob(&ctx, request, &response);
    if (!status.ok()) return ToAbsl(status, "CancelJob");
    return FromProto(response);
  }

  absl::Status WatchJob(const std::string& job_id, absl::Duration timeout,
                        const std::function<absl::Status(const JobInfo&)>& on_event) override {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    v1::WatchJobRequest request;
    request.set_job_id(job_id);
    std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader = stub_->WatchJob(&ctx, request);
    v1::JobEvent event;
    while (reader->Read(&event)) {
      if (absl::Status s = on_event(FromProto(event.job())); !s.ok()) return Abandon(ctx, *reader, std::move(s));
    }
    grpc::Status status = reader->Finish();
    return status.ok() ? absl::OkStatus() : ToAbsl(status, "WatchJob");
  }

  absl::Status GetResults(const std::string& job_id, const std::string& format, absl::Duration timeout,
                          const std::function<absl::Status(const std::vector<std::string>&)>& on_batch) override {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    v1::GetResultsRequest request;
    request.set_job_id(job_id);
    request.set_format(format);
    std::unique_ptr<grpc::ClientReader<v1::ResultBatch>> reader = stub_->GetResults(&ctx, request);
    v1::ResultBatch batch;
    std::vector<std::string> lines;
    while (reader->Read(&batch)) {
      lines.assign(std::make_move_iterator(batch.mutable_lines()->begin()),
                   std::make_move_iterator(batch.mutable_lines()->end()));
      if (absl::Status s = on_batch(lines); !s.ok()) return Abandon(ctx, *reader, std::move(s));
    }
    grpc::Status status = reader->Finish();
    return status.ok() ? absl::OkStatus() : ToAbsl(status, "GetResults");
  }

 private:
  // Every call's deadline and token (as call metadata, which works over TLS and
  // loopback plain text alike; gRPC's call credentials refuse insecure channels).
  void SetDeadline(grpc::ClientContext& ctx, absl::Duration timeout) const {
    if (timeout != absl::InfiniteDuration()) ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    if (!authorization_.empty()) ctx.AddMetadata("authorization", authorization_);
  }

  // Ends a stream the caller stopped reading: cancel, then Finish to release the call.
  template <typename Reader>
  static absl::Status Abandon(grpc::ClientContext& ctx, Reader& reader, absl::Status why) {
    ctx.TryCancel();
    reader.Finish().IgnoreError();
    return why;
  }

  // gRPC and absl number the canonical codes alike. The server's message is kept; an
  // unreachable or silent coordinator is named by address.
  absl::Status ToAbsl(const grpc::Status& s, const char* rpc) const {
    const auto code = static_cast<absl::StatusCode>(s.error_code());
    if (code == absl::StatusCode::kUnavailable) {
      return absl::Status(code, absl::StrCat("cannot reach the coordinator at ", address_, " (", rpc,
                                             "): ", s.error_message()));
    }
    if (code == absl::StatusCode::kDeadlineExceeded) {
      return absl::Status(code, absl::StrCat("no answer from the coordinator at ", address_, " in time (", rpc,
                                             "): ", s.error_message()));
    }
    return absl::Status(code, absl::StrCat(rpc, ": ", s.error_message()));
  }

  std::string address_;
  std::unique_ptr<v1::JobService::Stub> stub_;
  std::string authorization_;  // "Bearer <token>" or ""; never in a message
};

// Whether a gRPC target stays on this machine: a token sent there in plain text is seen
// by no network.
bool IsLoopbackTarget(const std::string& target) {
  std::string t = target;
  if (t.rfind("unix:", 0) == 0 || t.rfind("unix-abstract:", 0) == 0) return true;
  for (const char* scheme : {"dns:///", "ipv4:", "ipv6:"}) {
    if (t.rfind(scheme, 0) == 0) t = t.substr(std::string(scheme).size());
  }
  std::string host = t;
  if (!host.empty() && host.front() == '[') {
    host = host.substr(1, host.find(']') == std::string::npos ? std::string::npos : host.find(']') - 1);
  } else if (const size_t colon = host.rfind(':'); colon != std::string::npos && host.find(':') == colon) {
    host = host.substr(0, colon);
  }
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Connection>> MakeGrpcConnection(const std::string& address,
                                                               const ConnectionOptions& options) {
  if (address.empty()) return absl::InvalidArgumentError("no coordinator address");
  if (options.max_receive_message_bytes <= 0 || options.max_send_message_bytes <= 0) {
    return absl::InvalidArgumentError("message size limits must be positive");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  args.SetMaxSendMessageSize(options.max_send_message_bytes);
  if (options.keepalive_time_ms > 0) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, options.keepalive_time_ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, options.keepalive_timeout_ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    // Keep pinging through a long quiet WatchJob stream.
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  for (char c : options.bearer_token) {
    if (c <= ' ' || c > '~') {
      return absl::InvalidArgumentError("the bearer token holds a character that is not visible ASCII");
    }
  }
  if (!options.bearer_token.empty() && !options.credentials && !options.allow_plaintext_token &&
      !IsLoopbackTarget(address)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to send a bearer token in plain text to ", address,
        ": use TLS (mesa: --tls-ca, or $MESA_TLS_CA), or a loopback address"));
  }
  if (options.credentials && !options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      options.credentials ? options.credentials : grpc::InsecureChannelCredentials();
  return std::make_unique<GrpcConnection>(address, grpc::CreateCustomChannel(address, credentials, args),
                                          options.bearer_token);
}

}  // namespace mesa::client
