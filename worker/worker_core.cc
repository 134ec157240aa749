// WorkerCore (worker/worker_core.h): chunk tasks (anchor + one middle chunk on this
// core's pool, the middle's K/V kept under a byte budget with a lease) and final tasks
// (the whole prompt here through GenerateLong, or anchor here + every middle chunk
// gathered in plan order from this core or a KvFetcher, then the last chunk and decode
// with the same sampling loop), so that outputs equal jobs::LongContextGenerator's
// token for token. The plan is engine PlanFor, the one LongContextRunner uses.
#include "worker/worker_core.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/generate.h"
#include "kernels/cpu/cpu_backend.h"
#include "worker/kv_prefetch.h"
#include "worker/kv_wire.h"
#include "worker/task_check.h"

namespace mesa::worker {

struct WorkerCore::Entry {
  std::shared_ptr<const ChunkKv> kv;
  uint32_t crc32c = 0;    // KvCrc32c(*kv): FetchKv sends it without reading the bytes again
  ChunkResult result;     // what RunChunk reported when it computed the entry
  int64_t lease_ms = 0;
  int64_t expires_ms = 0;  // the entry is freed by ExpireLeases once the clock reaches it
};

namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool Cancelled(const CancelFlag* cancel) { return cancel && cancel->load(); }

absl::Status CancelledStatus(const KvKey& key) {
  return absl::CancelledError(absl::StrCat("task ", KvKeyString(key), " cancelled"));
}

// Bytes of one chunk's K/V in the model's shape: keys and values, f32.
int64_t ChunkBytes(const ModelConfig& c, int64_t tokens) {
  return 2 * c.n_layer * c.n_head_kv * tokens * c.head_dim * static_cast<int64_t>(sizeof(float));
}

// DATA_LOSS unless `kv` is exactly the plan's middle chunk `r` in this model's shape.
absl::Status CheckChunk(const ChunkKv& kv, const ModelConfig& c, TokenRange r, int32_t chunk) {
  const size_t elems = static_cast<size_t>(c.n_layer * c.n_head_kv * r.size() * c.head_dim);
  if (kv.range.begin != r.begin || kv.range.end != r.end || kv.n_layer != c.n_layer ||
      kv.n_head_kv != c.n_head_kv || kv.head_dim != c.head_dim || kv.k.size() != elems ||
      kv.v.size() != elems) {
    return absl::DataLossError(absl::StrCat(
        "K/V of middle chunk ", chunk, " is [", kv.range.begin, ", ", kv.range.end, ") with ",
        kv.n_layer, " layers x ", kv.n_head_kv, " kv heads x ", kv.head_dim, " dims (", kv.k.size(),
        "+", kv.v.size(), " floats); the plan needs [", r.begin, ", ", r.end, ") with ", c.n_layer,
        " x ", c.n_head_kv, " x ", c.head_dim, " (", elems, " floats each)"));
  }
  return absl::OkStatus();
}

}  // namespace

WorkerCore::WorkerCore(const Model& model, int threads, WorkerCoreOptions options,
                       KvFetcher* fetcher, Clock clock)
    : WorkerCore(model, std::make_unique<CpuBackend>(threads), options, fetcher, std::move(clock)) {}

WorkerCore::WorkerCore(const Model& model, std::unique_ptr<Backend> backend, WorkerCoreOptions options,
                       KvFetcher* fetcher, Clock clock)
    : model_(model),
      options_(options),
      metrics_(options_.metrics ? options_.metrics : ops::Metrics::Create()),
      instruments_(*metrics_),
      fetcher_(fetcher),
      clock_(clock ? std::move(clock) : Clock(SteadyMs)),
      backend_(std::move(backend)) {
  using Samples = std::vector<ops::Metrics::Sample>;
  gauges_.push_back(metrics_->AddGaugeCallback(
      "mesa_worker_kv_bytes_in_use", "Chunk K/V bytes this worker holds (computed here or loaded).",
      [this] { return Samples{{{}, static_cast<double>(kv_bytes_in_use())}}; }));
  gauges_.push_back(metrics_->AddGaugeCallback("mesa_worker_kv_entries", "Chunk K/V entries this worker holds.",
                                               [this] { return Samples{{{}, static_cast<double>(kv_entries())}}; }));
  gauges_.push_back(metrics_->AddGaugeCallback(
      "mesa_worker_kv_prefetch_bytes",
      "Chunk K/V a final task fetched ahead or is fetching and has not laid into its cache yet (--kv-prefetch; "
      "memory beyond --kv-memory).",
      [this] { return Samples{{{}, static_cast<double>(prefetch_bytes_.load())}}; }));
  gauges_.push_back(metrics_->AddGaugeCallback(
      "mesa_worker_kv_budget_bytes", "This worker's K/V budget (--kv-memory; 0 = no limit).",
      [this] { return Samples{{{}, static_cast<double>(options_.kv_memory_bytes)}}; }));
}

WorkerCore::~WorkerCore() { gauges_.clear(); }

absl::StatusOr<ChunkResult> WorkerCore::RunChunk(const ChunkTask& task, const CancelFlag* cancel) {
  const auto t0 = std::chrono::steady_clock::now();
  auto r = RunChunkLocked(task, cancel);
  if (r.ok()) {
    instruments_.chunk_tasks_ok.Increment();
    instruments_.chunk_task_seconds.Observe(SecondsSince(t0));
    instruments_.chunk_prefill_tokens.Increment(static_cast<double>(r->tokens));
  } else {
    instruments_.chunk_tasks_failed.Increment();
  }
  return r;
}

absl::StatusOr<FinalResult> WorkerCore::RunFinal(const FinalTask& task, const CancelFlag* cancel) {
  const auto t0 = std::chrono::steady_clock::now();
  auto r = RunFinalLocked(task, cancel);
  if (r.ok()) {
    instruments_.final_tasks_ok.Increment();
    instruments_.final_task_seconds.Observe(SecondsSince(t0));
    instruments_.final_prefill_tokens.Increment(static_cast<double>(r->prefill_tokens));
    instruments_.generated_tokens.Increment(static_cast<double>(r->tokens.size()));
  } else {
    instruments_.final_tasks_failed.Increment();
  }
  return r;
}

absl::StatusOr<ChunkResult> WorkerCore::RunChunkLocked(const ChunkTask& task, const CancelFlag* cancel) {
  auto held = [&]() -> std::optional<ChunkResult> {
    std::lock_guard<std::mutex> l(kv_mu_);
    auto it = kv_.find(task.key);
    if (it == kv_.end()) return std::nullopt;
    return it->second->result;
  };
  // A repeat answers at once, even while another task holds the engine.
  if (auto r = held()) return *r;
  std::lock_guard<std::mutex> task_lock(task_mu_);
  if (auto r = held()) return *r;  // the same key finished while we waited

  MESA_ASSIGN_OR_RETURN(const MesaPlan plan, CheckChunkTask(model_, task));
  const TokenRange r = plan.middle[task.key.chunk];
  // The anchor's and the chunk's tokens: slices of the whole prompt, or all that was sent
  // (CheckChunkTask checked the count).
  const absl::Span<const int32_t> sent(task.prompt);
  absl::Span<const int32_t> anchor_tokens, chunk_tokens;
  if (task.prompt_length > 0) {
    anchor_tokens = sent.subspan(0, plan.anchor.size());
    chunk_tokens = sent.subspan(plan.anchor.size());
  } else {
    anchor_tokens = sent.subspan(plan.anchor.begin, plan.anchor.size());
    chunk_tokens = sent.subspan(r.begin, r.size());
  }
  const int64_t bytes = ChunkBytes(model_.config, r.size());
  {
    std::lock_guard<std::mutex> l(kv_mu_);
    if (options_.kv_memory_bytes > 0 && kv_bytes_ + bytes > options_.kv_memory_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "chunk task ", KvKeyString(task.key), ": its K/V needs ", bytes, " bytes; ", kv_bytes_,
          " of the budget ", options_.kv_memory_bytes, " are in use"));
    }
  }

  if (Cancelled(cancel)) return CancelledStatus(task.key);
  const auto t0 = std::chrono::steady_clock::now();
  MesaPhases phases(model_, *backend_, plan);
  MESA_ASSIGN_OR_RETURN(const ChunkKv anchor, phases.RunAnchor(anchor_tokens, nullptr));
  if (Cancelled(cancel)) return CancelledStatus(task.key);
  MESA_ASSIGN_OR_RETURN(ChunkKv kv, phases.RunMiddle(anchor, chunk_tokens, r, nullptr));
  if (Cancelled(cancel)) return CancelledStatus(task.key);
  if (static_cast<int64_t>(kv.bytes()) != bytes) {
    return absl::InternalError(absl::StrCat("chunk K/V has ", kv.bytes(), " bytes, expected ", bytes));
  }

  auto entry = std::make_shared<Entry>();
  entry->kv = KvBufferPool::Share(options_.kv_pool, std::move(kv));
  entry->crc32c = KvCrc32c(*entry->kv);
  entry->result.kv_bytes = bytes;
  entry->result.tokens = anchor.tokens() + r.size();
  entry->result.compute_s = SecondsSince(t0);
  entry->lease_ms = task.lease_ms > 0 ? task.lease_ms : options_.default_lease_ms;
  std::lock_guard<std::mutex> l(kv_mu_);
  entry->expires_ms = clock_() + entry->lease_ms;
  // The same key again (a retried task, or K/V loaded under it meanwhile) replaces the
  // entry: the bytes of the one it replaces stop counting.
  if (auto it = kv_.find(task.key); it != kv_.end()) kv_bytes_ -= it->second->result.kv_bytes;
  kv_bytes_ += bytes;
  kv_[task.key] = entry;
  return entry->result;
}

absl::StatusOr<FinalResult> WorkerCore::RunFinalLocked(const FinalTask& task, const CancelFlag* cancel) {
  std::lock_guard<std::mutex> task_lock(task_mu_);
  if (Cancelled(cancel)) return CancelledStatus(task.key);
  MESA_ASSIGN_OR_RETURN(const std::optional<MesaPlan> plan, CheckFinalTask(model_, task, fetcher_ != nullptr));
  const int64_t n = static_cast<int64_t>(task.prompt.size());

  GenerateOptions gen;
  gen.max_new_tokens = task.max_new_tokens;
  gen.sampling = task.sampling;
  gen.stop_at_eos = true;
  // Checked after each chosen token, i.e. between decode steps.
  gen.on_token = [cancel](int32_t) { return !Cancelled(cancel); };
  FinalResult out;
  auto finish = [&](GenerateResult g) -> absl::StatusOr<FinalResult> {
    if (Cancelled(cancel)) return CancelledStatus(task.key);
    out.tokens = std::move(g.tokens);
    out.stop_reason = std::move(g.stop_reason);
    out.prefill_s = g.prefill_seconds;
    out.decode_s = g.decode_seconds;
    return std::move(out);
  };

  if (!plan || !plan->chunked || task.sources.empty()) {
    // Everything here: exactly jobs::LongContextGenerator.
    LongContextRunner runner(model_, *backend_, task.options);
    runner.SetStopCheck([cancel] { return Cancelled(cancel); });  // between Mesa's chunks
    out.prefill_tokens = n;
    absl::StatusOr<LongGenerateResult> generated = GenerateLong(runner, task.prompt, gen);
    if (!generated.ok()) return Cancelled(cancel) ? CancelledStatus(task.key) : generated.status();
    LongGenerateResult& r = *generated;
    out.attention = AttentionMethodName(r.prefill.method);
    out.plan = r.prefill.ToJson();
    return finish(std::move(r.generation));
  }

  // Spread: the anchor here, each middle chunk from where the coordinator says.
  const MesaPlan& p = *plan;
  const absl::Span<const int32_t> prompt(task.prompt);
  auto tokens = [&](TokenRange r) { return prompt.subspan(r.begin, r.size()); };
  MesaPhases phases(model_, *backend_, p);
  std::optional<MesaState> state;
  out.prefill_tokens = p.anchor.size() + p.last.size();

  auto prefill = [&](std::vector<float>* logits) -> absl::Status {
    // The remote chunks start moving now, while the anchor computes (kv_prefetch.h).
    std::vector<PrefetchRequest> remote;
    std::vector<size_t> remote_source;  // remote[j] is task.sources[remote_source[j]]
    for (size_t i = 0; i < p.middle.size(); ++i) {
      const KvSourceRef& s = task.sources[i];
      if (s.address.empty()) continue;
      remote.push_back({s.address, s.key, ChunkBytes(model_.config, p.middle[i].size())});
      remote_source.push_back(i);
    }
    std::optional<KvPrefetcher> prefetch;
    if (!remote.empty()) {
      prefetch.emplace(*fetcher_, std::move(remote),
                       PrefetchOptions{options_.final_fetch_parallel, options_.final_prefetch_bytes,
                                       task.fetch_timeout_ms, PrefetchOptions{}.max_batch, &prefetch_bytes_});
    }
    MESA_ASSIGN_OR_RETURN(const ChunkKv anchor, phases.RunAnchor(tokens(p.anchor), nullptr));
    MESA_ASSIGN_OR_RETURN(MesaState started, phases.StartFinal(anchor, InitialCacheTokens(p.n, p.max_new_tokens)));
    state.emplace(std::move(started));
    for (size_t i = 0; i < p.middle.size(); ++i) {
      if (Cancelled(cancel)) return CancelledStatus(task.key);
      const KvSourceRef& s = task.sources[i];
      std::shared_ptr<const ChunkKv> kv;
      if (s.address.empty()) {
        auto held = GetKv(s.key);
        if (!held.ok()) {
          return absl::NotFoundError(absl::StrCat("chunk K/V missing: chunk ", i, " (",
                                                  KvKeyString(s.key), ") is not held here"));
        }
        kv = *std::move(held);
      } else {
        Prefetched got = prefetch->Next();
        out.kv_transfer_s += got.fetch_s;
        if (!got.kv.ok()) {
          // The failed fetch may be a later chunk's: name that one. ABORTED tells the
          // coordinator that a source, not this worker, failed (it then checks the holder
          // and recomputes the chunk); cancellation stays CANCELLED.
          const size_t failed = remote_source[std::min(got.index, remote_source.size() - 1)];
          const KvSourceRef& f = task.sources[failed];
          const absl::StatusCode code = absl::IsCancelled(got.kv.status()) ? absl::StatusCode::kCancelled
                                                                            : absl::StatusCode::kAborted;
          return absl::Status(code, absl::StrCat("chunk K/V missing: chunk ", failed, " (", KvKeyString(f.key),
                                                 ") from ", f.address, ": ",
                                                 absl::StatusCodeToString(got.kv.status().code()), ": ",
                                                 got.kv.status().message()));
        }
        kv = *std::move(got.kv);
        out.kv_bytes_received += static_cast<int64_t>(kv->bytes());
        instruments_.kv_fetched_bytes_final.Increment(static_cast<double>(kv->bytes()));
        instruments_.kv_fetch_seconds_final.Observe(got.fetch_s);
      }
      MESA_RETURN_IF_ERROR(CheckChunk(*kv, model_.config, p.middle[i], static_cast<int32_t>(i)));
      MESA_RETURN_IF_ERROR(phases.AddMiddle(*state, *kv));
      kv.reset();  // laid into the final cache: drop our reference at once
      if (s.address.empty()) {
        // Held here: consumed (the final cache has it now; never two copies).
        std::lock_guard<std::mutex> l(kv_mu_);
        auto it = kv_.find(s.key);
        if (it != kv_.end()) {
          kv_bytes_ -= it->second->result.kv_bytes;
          kv_.erase(it);
        }
      }
    }
    if (Cancelled(cancel)) return CancelledStatus(task.key);
    return phases.FinishFinal(*state, tokens(p.last), LogitsMode::kLast, logits);
  };
  auto step = [&](int32_t token, std::vector<float>* logits) {
    return phases.Decode(*state, token, logits);
  };
  MESA_ASSIGN_OR_RETURN(GenerateResult g,
                        GenerateWith(prefill, step, model_.tokenizer.get(), n, gen));
  PrefillInfo info;
  info.method = AttentionMethod::kMesa;
  info.plan = p;
  info.train_length = p.train_length;
  out.attention = AttentionMethodName(info.method);
  out.plan = info.ToJson();
  return finish(std::move(g));
}

absl::StatusOr<KvLoadResult> WorkerCore::LoadKv(const KvSourceRef& source, int64_t lease_ms,
                                                const CancelFlag* cancel, int64_t fetch_timeout_ms) {
  const KvKey& key = source.key;
  // RESOURCE_EXHAUSTED unless `bytes` more fit the budget (0: unless any room is left).
  auto room = [&](int64_t bytes) -> absl::Status {  // kv_mu_ held
    const int64_t budget = options_.kv_memory_bytes;
    if (budget > 0 && (bytes > 0 ? kv_bytes_ + bytes > budget : kv_bytes_ >= budget)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "load of ", KvKeyString(key), ": ", bytes > 0 ? absl::StrCat("its K/V needs ", bytes, " bytes; ") : "",
          kv_bytes_, " of the budget ", budget, " are in use"));
    }
    return absl::OkStatus();
  };
  {
    std::lock_guard<std::mutex> l(kv_mu_);
    if (auto it = kv_.find(key); it != kv_.end()) return KvLoadResult{it->second->result.kv_bytes, 0};
    MESA_RETURN_IF_ERROR(room(0));
  }
  if (source.address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("load of ", KvKeyString(key), " without a source address"));
  }
  if (!fetcher_) {
    return absl::FailedPreconditionError(absl::StrCat("load of ", KvKeyString(key), " from ", source.address,
                                                      ": this worker has no K/V fetcher"));
  }
  if (Cancelled(cancel)) return CancelledStatus(key);
  const auto t0 = std::chrono::steady_clock::now();
  std::optional<uint32_t> checked_crc;  // the CRC32C the fetch checked the bytes against
  auto fetched = fetcher_->FetchWithCrc(source.address, key, std::max<int64_t>(1, fetch_timeout_ms), &checked_crc);
  const double transfer_s = SecondsSince(t0);
  if (!fetched.ok()) {
    return absl::Status(fetched.status().code(), absl::StrCat("load of ", KvKeyString(key), " from ",
                                                              source.address, ": ", fetched.status().message()));
  }
  std::shared_ptr<const ChunkKv> kv = *std::move(fetched);
  if (!kv) return absl::DataLossError(absl::StrCat("load of ", KvKeyString(key), ": the fetcher returned no K/V"));
  instruments_.kv_fetched_bytes_load.Increment(static_cast<double>(kv->bytes()));
  instruments_.kv_fetch_seconds_load.Observe(transfer_s);
  const ModelConfig& c = model_.config;
  const size_t elems = static_cast<size_t>(c.n_layer * c.n_head_kv * kv->range.size() * c.head_dim);
  if (kv->n_layer != c.n_layer || kv->n_head_kv != c.n_head_kv || kv->head_dim != c.head_dim ||
      kv->range.size() <= 0 || kv->k.size() != elems || kv->v.size() != elems) {
    return absl::DataLossError(absl::StrCat("load of ", KvKeyString(key), ": K/V of ", kv->n_layer, " layers x ",
                                            kv->n_head_kv, " kv heads x ", kv->head_dim,
                                            " dims is not in this model's shape"));
  }
  if (Cancelled(cancel)) return CancelledStatus(key);
  auto entry = std::make_shared<Entry>();
  entry->kv = kv;
  entry->crc32c = checked_crc ? *checked_crc : KvCrc32c(*kv);  // not a second pass when the fetch checked it
  entry->result.kv_bytes = static_cast<int64_t>(kv->bytes());
  entry->result.tokens = kv->tokens();
  entry->lease_ms = lease_ms > 0 ? lease_ms : options_.default_lease_ms;
  std::lock_guard<std::mutex> l(kv_mu_);
  if (auto it = kv_.find(key); it != kv_.end()) return KvLoadResult{it->second->result.kv_bytes, transfer_s};
  MESA_RETURN_IF_ERROR(room(entry->result.kv_bytes));
  entry->expires_ms = clock_() + entry->lease_ms;
  kv_bytes_ += entry->result.kv_bytes;
  kv_[key] = entry;
  return KvLoadResult{entry->result.kv_bytes, transfer_s};
}

absl::StatusOr<std::shared_ptr<const ChunkKv>> WorkerCore::GetKv(const KvKey& key, uint32_t* crc32c) {
  std::lock_guard<std::mutex> l(kv_mu_);
  auto it = kv_.find(key);
  if (it == kv_.end()) {
    return absl::NotFoundError(absl::StrCat("no K/V held for ", KvKeyString(key)));
  }
  it->second->expires_ms = clock_() + it->second->lease_ms;
  if (crc32c != nullptr) *crc32c = it->second->crc32c;
  return it->second->kv;
}

WorkerCore::Released WorkerCore::ReleaseKv(const std::string& job_id, int64_t item,
                                           int32_t attempt) {
  Released r;
  std::lock_guard<std::mutex> l(kv_mu_);
  absl::erase_if(kv_, [&](const auto& e) {
    const KvKey& k = e.first;
    if (k.job_id != job_id || (item != -1 && k.item != item) ||
        (attempt != -1 && k.attempt != attempt)) {
      return false;
    }
    r.bytes += e.second->result.kv_bytes;
    ++r.entries;
    return true;
  });
  kv_bytes_ -= r.bytes;
  return r;
}

WorkerCore::Released WorkerCore::ReleaseAll() {
  std::lock_guard<std::mutex> l(kv_mu_);
  Released r{kv_bytes_, static_cast<int64_t>(kv_.size())};
  kv_.clear();
  kv_bytes_ = 0;
  return r;
}

WorkerCore::Released WorkerCore::ExpireLeases() {
  Released r;
  std::lock_guard<std::mutex> l(kv_mu_);
  const int64_t now = clock_();
  absl::erase_if(kv_, [&](const auto& e) {
    if (now < e.second->expires_ms) return false;
    r.bytes += e.second->result.kv_bytes;
    ++r.entries;
    return true;
  });
  kv_bytes_ -= r.bytes;
  return r;
}

int64_t WorkerCore::kv_bytes_in_use() const {
  std::lock_guard<std::mutex> l(kv_mu_);
  return kv_bytes_;
}

int64_t WorkerCore::kv_entries() const {
  std::lock_guard<std::mutex> l(kv_mu_);
  return static_cast<int64_t>(kv_.size());
}

}  // namespace mesa::worker
