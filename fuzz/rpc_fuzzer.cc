// libFuzzer target over the distributed runtime's request messages: hostile bytes are
// parsed as the mesa.v1 requests a coordinator or a worker receives and pushed through
// the same checks and conversions the services run before the cores act, without a
// server:
//   the JobService's CreateJob stream (coordinator/request_proto.h), the core's checks of
//   the job's options and lines (coordinator/job_request.h), each line's validation
//   (jobs::ParseJobLine, as CoordinatorCore::PrepareItems) and its plan (PlanFor), and
//   the error record a bad line gets;
//   the worker's RunChunk/RunFinal/LoadKv requests (worker/task_proto.h FromProto) and
//   WorkerCore's task checks against the plan (worker/task_check.h), with a round trip
//   through ToProto; the FetchKv stream a worker receives (raw messages into the
//   KvAssembler, internal::AcceptKvMessage); the responses a coordinator reads from a
//   worker; and the worker registry's requests.
// Input: the first byte picks the target, the rest is a sequence of length-delimited
// messages (varint length, bytes), as protobuf's delimited format, or (single-message
// targets) one message. Crashes, sanitizer reports, leaks and hangs are bugs.
//
// Seeds: MESA_RPC_FUZZ_WRITE_SEEDS=DIR rpc_fuzzer writes valid inputs of every target to
// DIR and exits (fuzz/corpus/rpc/ holds them; scripts/run_fuzzers.sh starts from there).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "coordinator/job_request.h"
#include "coordinator/request_proto.h"
#include "engine/long_context.h"
#include "engine/model.h"
#include "engine/model_fingerprint.h"
#include "google/protobuf/io/coded_stream.h"
#include "grpc/grpc.h"
#include "grpcpp/grpcpp.h"
#include "jobs/job_format.h"
#include "mesa/v1/job_service.pb.h"
#include "mesa/v1/worker_service.pb.h"
#include "worker/grpc_kv.h"
#include "worker/kv_pool.h"
#include "worker/kv_wire.h"
#include "worker/task_check.h"
#include "worker/task_proto.h"

namespace mesa {
namespace {

enum Target : uint8_t {
  kCreateJob = 0,   // delimited CreateJobRequest messages
  kRunChunk,        // one RunChunkRequest
  kRunFinal,        // one RunFinalRequest (the first byte after the target: has a fetcher)
  kLoadKv,          // one LoadKvRequest
  kFetchKv,         // delimited: a FetchKvRequest, then the raw KvMessage stream
  kReleaseKv,       // one ReleaseKvRequest
  kRegistry,        // delimited: Register, Heartbeat, Deregister requests
  kResponses,       // delimited: RunChunk, RunFinal, LoadKv responses
  kTargets
};

constexpr int64_t kMaxKvBytes = 1 << 20;  // the fuzzer's K/V receive budget

// A model as far as planning needs one: stories260K's shapes (trained context 512), no
// weights, no tokenizer.
const Model& PlanModel() {
  static const Model* model = [] {
    auto* m = new Model();
    m->config.n_vocab = 512;
    m->config.n_embd = 64;
    m->config.n_layer = 5;
    m->config.n_head = 8;
    m->config.n_head_kv = 4;
    m->config.head_dim = 8;
    m->config.n_ff = 172;
    m->config.context_length = 512;
    return m;
  }();
  return *model;
}

// Splits `data` into length-delimited messages (stops at the first malformed length).
std::vector<std::string> Frames(const uint8_t* data, size_t size, size_t max_frames = 64) {
  std::vector<std::string> out;
  google::protobuf::io::CodedInputStream in(data, static_cast<int>(size));
  uint32_t len = 0;
  while (out.size() < max_frames && in.ReadVarint32(&len)) {
    std::string frame;
    if (!in.ReadString(&frame, static_cast<int>(len))) break;
    out.push_back(std::move(frame));
  }
  return out;
}

void FuzzCreateJob(const uint8_t* data, size_t size) {
  coord::CreateJobStream stream(/*max_job_bytes=*/1 << 20);
  absl::Status s;
  for (const std::string& frame : Frames(data, size)) {
    v1::CreateJobRequest msg;
    if (!msg.ParseFromString(frame)) return;  // gRPC refuses it before the service
    s = stream.Add(msg);
    if (!s.ok()) return;
  }
  if (!stream.Finish().ok()) return;
  const coord::JobRequest& req = stream.request();
  if (!coord::CheckJobRequest(req).ok()) return;
  (void)coord::JobOptionsJson(req);
  auto items = coord::JobItems("job_fuzz", stream.lines(), /*max_job_lines=*/256);
  if (!items.ok()) return;
  // Each line as CoordinatorCore::PrepareItems takes it: parsed with the job's task and
  // limits, then planned (a byte count stands in for the prompt's tokens).
  auto task = jobs::ParseTaskKind(req.task.empty() ? "summarize" : req.task);
  if (!task.ok()) __builtin_trap();  // CheckJobRequest accepted it
  jobs::InputLimits limits;
  limits.max_doc_bytes = req.max_doc_bytes > 0 ? req.max_doc_bytes : 16 << 20;
  absl::flat_hash_set<std::string> seen;
  for (const coord::ItemRecord& item : *items) {
    jobs::ParsedLine line = jobs::ParseJobLine(item.input, item.line, *task, limits);
    if (!line.custom_id.empty() && !seen.insert(line.custom_id).second && line.ok()) {
      line.error = absl::InvalidArgumentError("duplicate custom_id");
    }
    if (line.ok()) {
      const jobs::JobInput& in = line.input;
      int64_t bytes = static_cast<int64_t>(in.document.size() + in.question.size() + in.prompt.size());
      for (const jobs::ChatMessage& m : in.messages) bytes += static_cast<int64_t>(m.content.size());
      const int64_t max_new = in.max_tokens.value_or(req.max_tokens > 0 ? req.max_tokens : 256);
      auto plan = PlanFor(PlanModel(), LongContextOptions{}, bytes + 1, max_new);
      if (plan.ok()) (void)PlanToJson(*plan).dump();
      continue;
    }
    jobs::JobResult r;  // the record a bad line gets, and its OpenAI export
    r.custom_id = line.custom_id;
    r.line = item.line;
    r.status = line.error;
    const std::string record = jobs::ResultToLine(r);
    (void)jobs::MesaLineToOpenAiLine(record, "model", "batch_fuzz");
  }
}

void FuzzRunChunk(const uint8_t* data, size_t size) {
  v1::RunChunkRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  auto task = worker::FromProto(req);
  if (!task.ok()) return;
  // What the worker sends back out (and the coordinator builds) parses to the same task.
  v1::RunChunkRequest again;
  worker::ToProto(*task, &again);
  auto task2 = worker::FromProto(again);
  if (!task2.ok() || task2->prompt != task->prompt || task2->prompt_length != task->prompt_length ||
      task2->max_new_tokens != task->max_new_tokens || task2->options.method != task->options.method) {
    __builtin_trap();
  }
  auto plan = worker::CheckChunkTask(PlanModel(), *task);
  if (plan.ok()) {
    // The slices RunChunk takes must lie within what was sent.
    const TokenRange r = plan->middle.at(task->key.chunk);
    const int64_t sent = static_cast<int64_t>(task->prompt.size());
    const int64_t need = task->prompt_length > 0 ? plan->anchor.size() + r.size() : r.end;
    if (need > sent || plan->anchor.end > sent) __builtin_trap();
  }
}

void FuzzRunFinal(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const bool has_fetcher = data[0] & 1;
  v1::RunFinalRequest req;
  if (!req.ParseFromArray(data + 1, static_cast<int>(size - 1))) return;
  auto task = worker::FromProto(req);
  if (!task.ok()) return;
  v1::RunFinalRequest again;
  worker::ToProto(*task, &again);
  auto task2 = worker::FromProto(again);
  if (!task2.ok() || task2->sources.size() != task->sources.size() || task2->prompt != task->prompt) {
    __builtin_trap();
  }
  auto plan = worker::CheckFinalTask(PlanModel(), *task, has_fetcher);
  if (plan.ok() && *plan && !task->sources.empty()) {
    // A spread final slices the prompt by its plan.
    if ((*plan)->last.end != static_cast<int64_t>(task->prompt.size())) __builtin_trap();
  }
}

void FuzzLoadKv(const uint8_t* data, size_t size) {
  v1::LoadKvRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  auto args = worker::FromProto(req);
  if (!args.ok()) return;
  v1::LoadKvRequest again;
  worker::ToProto(args->source, args->lease_ms, &again);
  if (!worker::FromProto(again).ok()) __builtin_trap();
  (void)worker::KvKeyString(args->source.key);
}

void FuzzFetchKv(const uint8_t* data, size_t size) {
  const std::vector<std::string> frames = Frames(data, size);
  if (frames.empty()) return;
  v1::FetchKvRequest req;
  if (!req.ParseFromString(frames[0])) return;
  (void)worker::KvKeyString(worker::FromProto(req.key()));
  // The receiving side of the stream, with and without a pool of receive memory.
  worker::KvBufferPool pool(kMaxKvBytes);
  worker::KvBufferPool* use_pool = frames[0].size() % 2 ? &pool : nullptr;
  std::optional<worker::KvAssembler> kv;
  bool lane_manifest[worker::kMaxKvLanes] = {};
  for (size_t i = 1; i < frames.size(); ++i) {
    // One message in up to three slices, as gRPC may hand it over.
    const std::string& f = frames[i];
    std::vector<grpc::Slice> slices;
    const size_t cut1 = f.size() / 3, cut2 = f.size() - f.size() / 4;
    if (cut1 > 0) slices.emplace_back(f.data(), cut1);
    if (cut2 > cut1) slices.emplace_back(f.data() + cut1, cut2 - cut1);
    if (f.size() > cut2) slices.emplace_back(f.data() + cut2, f.size() - cut2);
    grpc::ByteBuffer buffer(slices.data(), slices.size());
    // Once a manifest announced lanes, the frames take turns on them (lane 0 included),
    // as several streams' messages would arrive.
    const int lanes = kv ? kv->manifest().lanes : 1;
    const int lane = static_cast<int>(i % static_cast<size_t>(lanes));
    const absl::Status st = lane == 0 ? worker::internal::AcceptKvMessage(buffer, kMaxKvBytes, use_pool, kv)
                                      : worker::internal::AcceptKvLaneMessage(buffer, lane, *kv, lane_manifest[lane]);
    if (!st.ok()) return;
  }
  if (kv) {
    auto done = kv->Finish();
    if (done.ok() && static_cast<int64_t>(done->bytes()) != kv->manifest().total_bytes) __builtin_trap();
  }
}

void FuzzReleaseKv(const uint8_t* data, size_t size) {
  v1::ReleaseKvRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  (void)req.job_id().empty();
}

void FuzzRegistry(const uint8_t* data, size_t size) {
  const std::vector<std::string> frames = Frames(data, size, 3);
  if (frames.size() >= 1) {
    v1::RegisterRequest req;
    if (req.ParseFromString(frames[0]) && coord::CheckRequest(req).ok()) {
      // What the core compares with its own model's.
      const ModelFingerprint theirs = ModelFingerprint::FromString(req.model_fingerprint());
      const ModelFingerprint ours = ModelFingerprint::FromString("s1234-w5678");
      (void)FingerprintsMatch(ours, theirs);
      (void)theirs.ToString();
    }
  }
  if (frames.size() >= 2) {
    v1::HeartbeatRequest req;
    if (req.ParseFromString(frames[1])) (void)coord::CheckRequest(req);
  }
  if (frames.size() >= 3) {
    v1::DeregisterRequest req;
    if (req.ParseFromString(frames[2])) (void)coord::CheckRequest(req);
  }
}

void FuzzResponses(const uint8_t* data, size_t size) {
  const std::vector<std::string> frames = Frames(data, size, 3);
  if (frames.size() >= 1) {
    v1::RunChunkResponse resp;
    if (resp.ParseFromString(frames[0])) (void)worker::FromProto(resp);
  }
  if (frames.size() >= 2) {
    v1::RunFinalResponse resp;
    if (resp.ParseFromString(frames[1])) {
      auto r = worker::FromProto(resp);
      if (r.ok()) (void)r->plan.dump();
    }
  }
  if (frames.size() >= 3) {
    v1::LoadKvResponse resp;
    if (resp.ParseFromString(frames[2])) (void)worker::FromProto(resp);
  }
}

// ---- Seeds ----

std::string Delimited(const std::vector<std::string>& messages) {
  std::string out;
  for (const std::string& m : messages) {
    std::string len;
    {
      google::protobuf::io::StringOutputStream s(&len);
      google::protobuf::io::CodedOutputStream c(&s);
      c.WriteVarint32(static_cast<uint32_t>(m.size()));
    }
    out += len + m;
  }
  return out;
}

void WriteSeed(const std::string& dir, const std::string& name, Target target, const std::string& body) {
  std::ofstream f(dir + "/" + name, std::ios::binary);
  f.put(static_cast<char>(target));
  f << body;
}

void WriteSeeds(const std::string& dir) {
  // CreateJob: options, then lines of both shapes, a bad line and a blank one.
  v1::CreateJobRequest opts;
  opts.mutable_options()->set_task("summarize");
  opts.mutable_options()->set_max_tokens(16);
  opts.mutable_options()->set_placement("spread");
  opts.mutable_options()->set_request_id("req-1");
  v1::CreateJobRequest lines;
  lines.mutable_lines()->add_lines(R"({"custom_id": "a", "document": "Once upon a time there was a cat."})");
  lines.mutable_lines()->add_lines(
      R"({"custom_id": "b", "task": "qa", "document": "Tom had a red ball.", "question": "What color?", "max_tokens": 8})");
  lines.mutable_lines()->add_lines(
      R"({"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}})");
  lines.mutable_lines()->add_lines("not json\r");
  lines.mutable_lines()->add_lines("   ");
  v1::CreateJobRequest long_line;
  long_line.mutable_lines()->add_lines(
      R"({"custom_id": "long", "document": ")" + std::string(3000, 'a') + R"(", "max_tokens": 9223372036854775807})");
  WriteSeed(dir, "create_job", kCreateJob,
            Delimited({opts.SerializeAsString(), lines.SerializeAsString(), long_line.SerializeAsString()}));

  // RunChunk: a chunked prompt (600 tokens + 16 > 512), chunk 0, whole prompt or slices.
  worker::ChunkTask chunk;
  chunk.key = {"job_1", 0, 0, 1};
  chunk.prompt.assign(600, 7);
  chunk.max_new_tokens = 16;
  chunk.lease_ms = 1000;
  v1::RunChunkRequest rc;
  worker::ToProto(chunk, &rc);
  WriteSeed(dir, "run_chunk_whole", kRunChunk, rc.SerializeAsString());
  auto plan = PlanFor(PlanModel(), chunk.options, 600, 16);
  if (plan.ok() && plan->chunked) {
    chunk.prompt_length = 600;
    chunk.prompt.assign(plan->anchor.size() + plan->middle[0].size(), 7);
    v1::RunChunkRequest rs;
    worker::ToProto(chunk, &rs);
    WriteSeed(dir, "run_chunk_slices", kRunChunk, rs.SerializeAsString());
  }

  // RunFinal: whole, and spread over the plan's middle chunks.
  worker::FinalTask fin;
  fin.key = {"job_1", 0, -1, 1};
  fin.prompt.assign(600, 9);
  fin.max_new_tokens = 16;
  fin.sampling.temperature = 0.7f;
  fin.sampling.top_k = 40;
  fin.sampling.top_p = 0.9f;
  v1::RunFinalRequest rf;
  worker::ToProto(fin, &rf);
  WriteSeed(dir, "run_final_whole", kRunFinal, std::string(1, '\1') + rf.SerializeAsString());
  if (plan.ok()) {
    for (size_t i = 0; i < plan->middle.size(); ++i) {
      worker::KvSourceRef s;
      s.chunk = static_cast<int32_t>(i);
      s.address = i % 2 ? "127.0.0.1:50052" : "";
      s.key = {"job_1", 0, static_cast<int32_t>(i), 1};
      fin.sources.push_back(s);
    }
    v1::RunFinalRequest rf2;
    worker::ToProto(fin, &rf2);
    WriteSeed(dir, "run_final_spread", kRunFinal, std::string(1, '\1') + rf2.SerializeAsString());
  }

  // LoadKv.
  worker::KvSourceRef src;
  src.chunk = 2;
  src.address = "127.0.0.1:50052";
  src.key = {"job_1", 3, 2, 0};
  v1::LoadKvRequest lk;
  worker::ToProto(src, 5000, &lk);
  WriteSeed(dir, "load_kv", kLoadKv, lk.SerializeAsString());

  // FetchKv: the request, then a real stream of a small chunk (manifest + 3 pieces).
  ChunkKv kv;
  kv.n_layer = 2;
  kv.n_head_kv = 2;
  kv.head_dim = 4;
  kv.range = {100, 103};
  kv.k.resize(2 * 2 * 3 * 4);
  kv.v.resize(kv.k.size());
  for (size_t i = 0; i < kv.k.size(); ++i) {
    kv.k[i] = 0.5f * static_cast<float>(i);
    kv.v[i] = -0.25f * static_cast<float>(i);
  }
  v1::FetchKvRequest fr;
  worker::ToProto(src.key, fr.mutable_key());
  std::vector<std::string> stream = {fr.SerializeAsString()};
  v1::KvMessage manifest;
  worker::ToProto(worker::MakeManifest(kv), manifest.mutable_manifest());
  stream.push_back(manifest.SerializeAsString());
  for (const worker::KvPiece& p : worker::SplitPieces(kv, 64)) {
    v1::KvMessage m;
    m.mutable_data()->set_offset(p.offset);
    m.mutable_data()->set_data(reinterpret_cast<const char*>(p.bytes.data()), p.bytes.size());
    stream.push_back(m.SerializeAsString());
  }
  WriteSeed(dir, "fetch_kv", kFetchKv, Delimited(stream));

  v1::ReleaseKvRequest rel;
  rel.set_job_id("job_1");
  rel.set_item(-1);
  rel.set_attempt(-1);
  WriteSeed(dir, "release_kv", kReleaseKv, rel.SerializeAsString());

  v1::RegisterRequest reg;
  reg.set_name("w1");
  reg.set_address("127.0.0.1:50052");
  reg.set_model_fingerprint("s1234-w5678");
  reg.set_model_description("stories260K");
  reg.set_kv_memory_bytes(1 << 30);
  reg.set_threads(2);
  v1::HeartbeatRequest hb;
  hb.set_worker_id("w1-w1");
  hb.set_kv_bytes_in_use(4096);
  v1::DeregisterRequest dr;
  dr.set_worker_id("w1-w1");
  WriteSeed(dir, "registry", kRegistry,
            Delimited({reg.SerializeAsString(), hb.SerializeAsString(), dr.SerializeAsString()}));

  v1::RunChunkResponse crs;
  crs.set_kv_bytes(4096);
  crs.set_tokens(300);
  v1::RunFinalResponse frs;
  frs.add_tokens(5);
  frs.set_stop_reason("length");
  frs.set_plan_json(R"({"attention": "mesa", "train_length": 512})");
  v1::LoadKvResponse lrs;
  lrs.set_kv_bytes(4096);
  WriteSeed(dir, "responses", kResponses,
            Delimited({crs.SerializeAsString(), frs.SerializeAsString(), lrs.SerializeAsString()}));
}

}  // namespace
}  // namespace mesa

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  grpc_init();  // grpc::ByteBuffer and grpc::Slice need the library
  if (const char* dir = std::getenv("MESA_RPC_FUZZ_WRITE_SEEDS")) {
    mesa::WriteSeeds(dir);
    std::printf("rpc_fuzzer: seeds written to %s\n", dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t target = data[0] % mesa::kTargets;
  ++data;
  --size;
  switch (target) {
    case mesa::kCreateJob: mesa::FuzzCreateJob(data, size); break;
    case mesa::kRunChunk: mesa::FuzzRunChunk(data, size); break;
    case mesa::kRunFinal: mesa::FuzzRunFinal(data, size); break;
    case mesa::kLoadKv: mesa::FuzzLoadKv(data, size); break;
    case mesa::kFetchKv: mesa::FuzzFetchKv(data, size); break;
    case mesa::kReleaseKv: mesa::FuzzReleaseKv(data, size); break;
    case mesa::kRegistry: mesa::FuzzRegistry(data, size); break;
    case mesa::kResponses: mesa::FuzzResponses(data, size); break;
    default: break;
  }
  return 0;
}
