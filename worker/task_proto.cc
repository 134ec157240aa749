// Task <-> proto conversions and request validation (see task_proto.h).
#include "worker/task_proto.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/grpc_kv.h"

namespace mesa::worker {
namespace {

constexpr float kMaxTemperature = 1000;  // finite: logits / temperature stay numbers

absl::Status CheckKey(const v1::KvKey& k, bool final) {
  if (k.job_id().empty()) return absl::InvalidArgumentError("key.job_id is empty");
  if (k.item() < 0) return absl::InvalidArgumentError("key.item < 0");
  if (k.attempt() < 0) return absl::InvalidArgumentError("key.attempt < 0");
  if (!final && k.chunk() < 0) return absl::InvalidArgumentError("key.chunk < 0");
  return absl::OkStatus();
}

absl::Status CheckPrompt(const google::protobuf::RepeatedField<int32_t>& prompt, int64_t max_new) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (max_new < 0) return absl::InvalidArgumentError("max_new_tokens < 0");
  return absl::OkStatus();
}

}  // namespace

void ToProto(const LongContextOptions& o, v1::AttentionOptions* p) {
  p->set_attention(AttentionMethodName(o.method));
  p->set_train_length(o.mesa.train_length);
  p->set_anchor(o.mesa.anchor);
  p->set_last_chunk(o.mesa.last_chunk);
  p->set_margin(o.mesa.margin);
  p->set_max_chunk(o.mesa.max_chunk);
  p->set_stair_n(o.mesa.stair_n);
  p->set_stair_e(o.mesa.stair_e);
  p->set_no_logn(!o.mesa.logn);
  p->set_se_group(o.se_group);
  p->set_se_window(o.se_window);
  p->set_rerope_window(o.rerope_window);
}

absl::StatusOr<LongContextOptions> FromProto(const v1::AttentionOptions& p) {
  LongContextOptions o;
  if (!p.attention().empty()) {
    MESA_ASSIGN_OR_RETURN(o.method, ParseAttentionMethod(p.attention()));
  }
  for (int64_t v : {p.train_length(), p.anchor(), p.last_chunk(), p.margin(), p.max_chunk(), p.stair_n(),
                    p.stair_e(), p.se_group(), p.se_window(), p.rerope_window()}) {
    if (v < 0) return absl::InvalidArgumentError("attention options must not be negative");
  }
  const MesaOptions d;
  o.mesa.train_length = p.train_length();
  o.mesa.anchor = p.anchor() > 0 ? p.anchor() : d.anchor;
  o.mesa.last_chunk = p.last_chunk() > 0 ? p.last_chunk() : d.last_chunk;
  o.mesa.margin = p.margin() > 0 ? p.margin() : d.margin;
  o.mesa.max_chunk = p.max_chunk();
  o.mesa.stair_n = p.stair_n();
  o.mesa.stair_e = p.stair_e() > 0 ? p.stair_e() : d.stair_e;
  o.mesa.logn = !p.no_logn();
  o.se_group = p.se_group();
  o.se_window = p.se_window();
  o.rerope_window = p.rerope_window();
  return o;
}

void ToProto(const ChunkTask& t, v1::RunChunkRequest* p) {
  ToProto(t.key, p->mutable_key());
  p->mutable_prompt()->Assign(t.prompt.begin(), t.prompt.end());
  p->set_max_new_tokens(t.max_new_tokens);
  ToProto(t.options, p->mutable_options());
  p->set_lease_ms(t.lease_ms);
  p->set_prompt_length(t.prompt_length);
}

absl::StatusOr<ChunkTask> FromProto(const v1::RunChunkRequest& p) {
  if (!p.has_key()) return absl::InvalidArgumentError("RunChunk without a key");
  MESA_RETURN_IF_ERROR(CheckKey(p.key(), false));
  MESA_RETURN_IF_ERROR(CheckPrompt(p.prompt(), p.max_new_tokens()));
  if (p.lease_ms() < 0) return absl::InvalidArgumentError("lease_ms < 0");
  if (p.prompt_length() < 0 || (p.prompt_length() > 0 && p.prompt_length() < p.prompt_size())) {
    return absl::InvalidArgumentError("prompt_length must be 0 or at least the tokens sent");
  }
  ChunkTask t;
  t.key = FromProto(p.key());
  t.prompt.assign(p.prompt().begin(), p.prompt().end());
  t.max_new_tokens = p.max_new_tokens();
  MESA_ASSIGN_OR_RETURN(t.options, FromProto(p.options()));
  t.lease_ms = p.lease_ms();
  t.prompt_length = p.prompt_length();
  return t;
}

void ToProto(const ChunkResult& r, v1::RunChunkResponse* p) {
  p->set_kv_bytes(r.kv_bytes);
  p->set_compute_s(r.compute_s);
  p->set_tokens(r.tokens);
}

ChunkResult FromProto(const v1::RunChunkResponse& p) {
  ChunkResult r;
  r.kv_bytes = p.kv_bytes();
  r.compute_s = p.compute_s();
  r.tokens = p.tokens();
  return r;
}

void ToProto(const FinalTask& t, v1::RunFinalRequest* p) {
  ToProto(t.key, p->mutable_key());
  p->mutable_prompt()->Assign(t.prompt.begin(), t.prompt.end());
  p->set_max_new_tokens(t.max_new_tokens);
  ToProto(t.options, p->mutable_options());
  for (const KvSourceRef& s : t.sources) {
    v1::KvSource* q = p->add_sources();
    q->set_chunk(s.chunk);
    q->set_worker_address(s.address);
    ToProto(s.key, q->mutable_key());
  }
  v1::Sampling* sm = p->mutable_sampling();
  sm->set_temperature(t.sampling.temperature);
  sm->set_top_k(t.sampling.top_k);
  sm->set_top_p(t.sampling.top_p);
  sm->set_seed(t.sampling.seed);
}

absl::StatusOr<FinalTask> FromProto(const v1::RunFinalRequest& p) {
  if (!p.has_key()) return absl::InvalidArgumentError("RunFinal without a key");
  MESA_RETURN_IF_ERROR(CheckKey(p.key(), true));
  MESA_RETURN_IF_ERROR(CheckPrompt(p.prompt(), p.max_new_tokens()));
  FinalTask t;
  t.key = FromProto(p.key());
  t.prompt.assign(p.prompt().begin(), p.prompt().end());
  t.max_new_tokens = p.max_new_tokens();
  MESA_ASSIGN_OR_RETURN(t.options, FromProto(p.options()));
  for (int i = 0; i < p.sources_size(); ++i) {
    const v1::KvSource& q = p.sources(i);
    if (q.chunk() != i) {
      return absl::InvalidArgumentError(absl::StrCat("source ", i, " names chunk ", q.chunk(), ": sources must be in chunk order"));
    }
    if (!q.has_key()) return absl::InvalidArgumentError(absl::StrCat("source ", i, " has no key"));
    MESA_RETURN_IF_ERROR(CheckKey(q.key(), false));
    KvSourceRef s;
    s.chunk = q.chunk();
    s.address = q.worker_address();
    s.key = FromProto(q.key());
    t.sources.push_back(std::move(s));
  }
  const v1::Sampling& sm = p.sampling();
  // Written so that NaN fails too.
  if (!(sm.temperature() >= 0 && sm.temperature() <= kMaxTemperature) || sm.top_k() < 0 ||
      !(sm.top_p() >= 0 && sm.top_p() <= 1)) {
    return absl::InvalidArgumentError("sampling: 0 <= temperature <= 1000, top_k >= 0 and 0 <= top_p <= 1");
  }
  t.sampling.temperature = sm.temperature();
  t.sampling.top_k = sm.top_k();
  t.sampling.top_p = sm.top_p() > 0 ? sm.top_p() : 1.0f;
  t.sampling.seed = sm.seed();
  return t;
}

void ToProto(const FinalResult& r, v1::RunFinalResponse* p) {
  p->mutable_tokens()->Assign(r.tokens.begin(), r.tokens.end());
  p->set_stop_reason(r.stop_reason);
  p->set_attention(r.attention);
  p->set_plan_json(r.plan.dump());
  p->set_prefill_s(r.prefill_s);
  p->set_decode_s(r.decode_s);
  p->set_kv_bytes_received(r.kv_bytes_received);
  p->set_kv_transfer_s(r.kv_transfer_s);
}

absl::StatusOr<FinalResult> FromProto(const v1::RunFinalResponse& p) {
  FinalResult r;
  r.tokens.assign(p.tokens().begin(), p.tokens().end());
  r.stop_reason = p.stop_reason();
  r.attention = p.attention();
  r.plan = nlohmann::json::parse(p.plan_json(), nullptr, false);
  if (r.plan.is_discarded()) return absl::DataLossError("the worker's plan_json is not JSON");
  r.prefill_s = p.prefill_s();
  r.decode_s = p.decode_s();
  r.kv_bytes_received = p.kv_bytes_received();
  r.kv_transfer_s = p.kv_transfer_s();
  return r;
}

void ToProto(const KvSourceRef& source, int64_t lease_ms, v1::LoadKvRequest* p) {
  v1::KvSource* q = p->mutable_source();
  q->set_chunk(source.chunk);
  q->set_worker_address(source.address);
  ToProto(source.key, q->mutable_key());
  p->set_lease_ms(lease_ms);
}

absl::StatusOr<LoadKvArgs> FromProto(const v1::LoadKvRequest& p) {
  if (!p.has_source()) return absl::InvalidArgumentError("LoadKv without a source");
  const v1::KvSource& q = p.source();
  if (!q.has_key()) return absl::InvalidArgumentError("LoadKv source has no key");
  MESA_RETURN_IF_ERROR(CheckKey(q.key(), false));
  if (q.chunk() != q.key().chunk()) {
    return absl::InvalidArgumentError(absl::StrCat("LoadKv source names chunk ", q.chunk(), " but its key chunk ",
                                                   q.key().chunk()));
  }
  if (q.worker_address().empty()) return absl::InvalidArgumentError("LoadKv source has no worker_address");
  if (p.lease_ms() < 0) return absl::InvalidArgumentError("lease_ms < 0");
  LoadKvArgs a;
  a.source.chunk = q.chunk();
  a.source.address = q.worker_address();
  a.source.key = FromProto(q.key());
  a.lease_ms = p.lease_ms();
  return a;
}

void ToProto(const KvLoadResult& r, v1::LoadKvResponse* p) {
  p->set_kv_bytes(r.kv_bytes);
  p->set_transfer_s(r.transfer_s);
}

KvLoadResult FromProto(const v1::LoadKvResponse& p) { return KvLoadResult{p.kv_bytes(), p.transfer_s()}; }

}  // namespace mesa::worker
