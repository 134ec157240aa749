// CoordinatorCore: jobs -> items (validated, tokenized, planned) -> the scheduler ->
// tasks on workers -> results committed once per item. See coordinator_core.h.
#include "coordinator/coordinator_core.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/mesa_plan.h"
#include "jobs/batch_runner.h"
#include "ops/log.h"

namespace mesa::coord {
namespace {

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string NewJobId() {
  static std::mt19937_64 rng{std::random_device{}()};
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  char buf[40];
  std::snprintf(buf, sizeof buf, "job_%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

std::string StripNewline(std::string line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  return line;
}

// Writes `lines` to `path` through a temporary file created owner-only (0600) and
// renamed into place: results are the users' data, like the documents in the store.
absl::Status WriteOwnerOnly(const std::string& path, const std::vector<std::string>& lines) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return absl::PermissionDeniedError(absl::StrCat("cannot write '", tmp, "': ", std::strerror(errno)));
  bool ok = ::fchmod(fd, 0600) == 0;  // a leftover tmp file keeps its mode through O_CREAT
  for (const std::string& l : lines) {
    for (size_t done = 0; ok && done < l.size();) {
      const ssize_t n = ::write(fd, l.data() + done, l.size() - done);
      if (n < 0 && errno == EINTR) continue;
      ok = n > 0;
      if (ok) done += static_cast<size_t>(n);
    }
  }
  const int saved = errno;
  ok = (::close(fd) == 0) && ok;
  if (!ok) return absl::DataLossError(absl::StrCat("error writing '", tmp, "': ", std::strerror(saved)));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("cannot rename '", tmp, "' to '", path, "': ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// The "error" of an error record (jobs::ResultToLine), for the log.
std::string RecordError(const std::string& record) {
  const nlohmann::json j = nlohmann::json::parse(record, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_string()) return j["error"].get<std::string>();
  return record;
}

int64_t ChunkKvBytes(const ModelConfig& c, int64_t tokens) {
  return 2 * c.n_layer * c.n_head_kv * tokens * c.head_dim * static_cast<int64_t>(sizeof(float));
}

}  // namespace

struct CoordinatorCore::ItemRuntime {
  jobs::ParsedLine line;
  std::vector<int32_t> prompt;
  int64_t max_new = 0;
  int32_t failures = 0;
  TokenRange anchor;               // the plan's, when chunked
  std::vector<TokenRange> middle;
};

struct CoordinatorCore::JobRuntime {
  JobRecord record;
  std::map<int64_t, std::shared_ptr<ItemRuntime>> pending;  // by item index
  // K/V moved to final workers while chunks computed (MoveKv), for the log.
  int64_t moves = 0, moves_failed = 0, moved_bytes = 0;
  double move_s = 0;
};

struct CoordinatorCore::WorkerEntry {
  std::string id;
  std::string name;
  std::shared_ptr<WorkerClient> client;
  WorkerAbout about;
  WorkerReport report;  // guarded by the core's mu_
  int64_t joined_unix_s = 0;
};

absl::StatusOr<std::unique_ptr<CoordinatorCore>> CoordinatorCore::Create(const Model& model,
                                                                          CoordinatorOptions options) {
  if (!model.tokenizer) return absl::FailedPreconditionError("the coordinator's model has no tokenizer");
  if (options.store_dir.empty()) return absl::InvalidArgumentError("no store directory given");
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store, JobStore::Open(options.store_dir));
  std::unique_ptr<CoordinatorCore> core(new CoordinatorCore(model, std::move(options), std::move(store)));
  MESA_RETURN_IF_ERROR(core->ResumeJobs());
  core->AddGauges();
  core->driver_ = std::thread([c = core.get()] { c->DriverLoop(); });
  return core;
}

CoordinatorCore::CoordinatorCore(const Model& model, CoordinatorOptions options, std::unique_ptr<JobStore> store)
    : model_(model),
      options_(std::move(options)),
      store_(std::move(store)),
      fingerprint_(FingerprintModel(model)),
      metrics_(options_.metrics ? options_.metrics : ops::Metrics::Create()),
      instruments_(*metrics_) {
  if (!options_.clock) options_.clock = SteadyMs;
  auto requested = jobs::ParseChatTemplate(options_.chat_template);
  default_template_ = jobs::ResolveChatTemplate(requested.ok() ? *requested : jobs::ChatTemplate::kAuto,
                                                model_.chat_template);
  scheduler_ = std::make_unique<Scheduler>(options_.scheduler, Now());
}

CoordinatorCore::~CoordinatorCore() {
  gauges_.clear();  // waits for a scrape that is reading this core
  std::map<uint64_t, std::thread> threads;
  {
    std::unique_lock<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& [id, w] : workers_) {
      for (auto& [task, t] : task_threads_) w->client->Cancel(task);
    }
    wake_.notify_all();
    changed_.notify_all();
  }
  if (driver_.joinable()) driver_.join();
  {
    std::unique_lock<std::mutex> lock(mu_);
    threads.swap(task_threads_);
  }
  for (auto& [id, t] : threads) {
    if (t.joinable()) t.join();
  }
  {
    // No move starts once stopping_ is set; those in flight end within their timeout.
    std::unique_lock<std::mutex> lock(mu_);
    threads.clear();
    threads.swap(move_threads_);
  }
  for (auto& [id, t] : threads) {
    if (t.joinable()) t.join();
  }
}

int64_t CoordinatorCore::Now() const { return options_.clock(); }

void CoordinatorCore::AddGauges() {
  using Samples = std::vector<ops::Metrics::Sample>;
  gauges_.push_back(metrics_->AddGaugeCallback("mesa_jobs", "Jobs in the store, by state.", [this] {
    // A scrape never waits for the store: while a large job is being written it shows
    // the counts of the last scrape that could read them.
    auto counts = store_->CountJobsByStatus(/*wait=*/false);
    std::lock_guard<std::mutex> lock(job_counts_mu_);
    if (counts.ok()) {
      Samples fresh;
      for (const char* state : {kJobValidating, kJobInProgress, kJobFinalizing, kJobCompleted, kJobFailed,
                                kJobCancelling, kJobCancelled}) {
        double n = 0;
        for (const auto& [status, count] : *counts) {
          if (status == state) n = static_cast<double>(count);
        }
        fresh.push_back({{{"state", state}}, n});
      }
      job_counts_ = std::move(fresh);
    }
    return job_counts_;
  }));
  // The scheduler's view; each reads one snapshot of its stats under the core's lock.
  auto stat = [this](const char* name, const char* help, int64_t Scheduler::Stats::*field) {
    gauges_.push_back(metrics_->AddGaugeCallback(name, help, [this, field] {
      const Scheduler::Stats st = stats();
      return Samples{{{}, static_cast<double>(st.*field)}};
    }));
  };
  stat("mesa_workers", "Registered workers (draining ones included).", &Scheduler::Stats::workers);
  stat("mesa_workers_idle", "Registered workers with no task and not draining.", &Scheduler::Stats::workers_idle);
  stat("mesa_scheduler_queued_items", "Queue depth: items waiting for their first task.",
       &Scheduler::Stats::items_queued);
  stat("mesa_scheduler_running_items", "Items with tasks started and no result yet.",
       &Scheduler::Stats::items_running);
  stat("mesa_scheduler_tasks_in_flight", "Tasks dispatched whose outcome has not arrived.",
       &Scheduler::Stats::tasks_in_flight);
  stat("mesa_scheduler_kv_moves_in_flight", "K/V moves whose outcome has not arrived.",
       &Scheduler::Stats::moves_in_flight);
  stat("mesa_scheduler_kv_bytes_held",
       "Chunk K/V bytes held on all workers by the scheduler's accounting (a move in flight counts twice).",
       &Scheduler::Stats::kv_bytes_held);
}

std::string CoordinatorCore::model_name() const {
  return model_.config.name.empty() ? model_.source_path : model_.config.name;
}

int64_t CoordinatorCore::heartbeat_interval_ms() const {
  return std::max<int64_t>(100, options_.scheduler.heartbeat_timeout_ms / 5);
}

void CoordinatorCore::BumpLocked() {
  ++version_;
  changed_.notify_all();
}

int64_t CoordinatorCore::version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}

int64_t CoordinatorCore::WaitForChange(int64_t version, int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                    [&] { return version_ != version || stopping_; });
  return version_;
}

// ---------------------------------------------------------------- jobs

absl::StatusOr<std::vector<ItemSpec>> CoordinatorCore::PrepareItems(const JobRecord& job,
                                                                    std::vector<ItemRecord>& items,
                                                                    bool fresh) {
  // Options the job was created with.
  nlohmann::json o = nlohmann::json::parse(job.options_json, nullptr, false);
  if (o.is_discarded() || !o.is_object()) o = nlohmann::json::object();
  auto task = jobs::ParseTaskKind(o.value("task", std::string("summarize")));
  if (!task.ok()) return task.status();
  jobs::ChatTemplate tmpl = default_template_;
  if (auto t = o.value("template", std::string()); !t.empty()) {
    MESA_ASSIGN_OR_RETURN(jobs::ChatTemplate requested, jobs::ParseChatTemplate(t));
    tmpl = jobs::ResolveChatTemplate(requested, model_.chat_template);
  }
  const int64_t max_tokens = o.value("max_tokens", options_.default_max_tokens);
  std::optional<Placement> placement;  // the job's own, else the coordinator's
  if (Placement p; ParsePlacement(o.value("placement", std::string()), &p)) placement = p;
  jobs::InputLimits limits;
  limits.max_doc_bytes = o.value("max_doc_bytes", options_.max_doc_bytes);

  auto runtime = std::make_shared<JobRuntime>();
  runtime->record = job;
  std::vector<ItemSpec> specs;
  absl::flat_hash_map<std::string, int64_t> seen;  // custom_id -> first line (as InputReader)
  const bool mesa = options_.attention.method == AttentionMethod::kAuto ||
                    options_.attention.method == AttentionMethod::kMesa;
  for (ItemRecord& item : items) {
    auto rt = std::make_shared<ItemRuntime>();
    rt->line = jobs::ParseJobLine(item.input, item.line, *task, limits);
    if (!rt->line.custom_id.empty()) {
      auto [it, inserted] = seen.try_emplace(rt->line.custom_id, item.line);
      if (!inserted && rt->line.ok()) {
        rt->line.error = absl::InvalidArgumentError(absl::StrCat(
            "line ", item.line, ": duplicate custom_id '", rt->line.custom_id, "' (first on line ", it->second, ")"));
      }
    }
    if (fresh) item.custom_id = rt->line.custom_id;
    if (item.state != ItemState::kPending) continue;
    absl::Status error = rt->line.error;
    if (error.ok()) {
      const jobs::JobInput& in = rt->line.input;
      auto prompt = jobs::LinePrompt(*model_.tokenizer, tmpl, in);
      if (!prompt.ok()) {
        error = absl::Status(prompt.status().code(), absl::StrCat("line ", in.line, ": ", prompt.status().message()));
      } else {
        rt->prompt = *std::move(prompt);
        rt->max_new = in.max_tokens.value_or(max_tokens);
      }
    }
    ItemSpec spec;
    spec.job_id = job.id;
    spec.item = item.idx;
    spec.prompt_tokens = static_cast<int64_t>(rt->prompt.size());
    spec.max_new_tokens = rt->max_new;
    spec.failures = item.failures;
    spec.placement = placement;
    if (error.ok() && mesa) {
      // The planner of `mesa run` and of the workers (they re-plan and must agree).
      auto plan = PlanFor(model_, options_.attention, static_cast<int64_t>(rt->prompt.size()), rt->max_new);
      if (!plan.ok()) {
        error = absl::Status(plan.status().code(),
                             absl::StrCat("line ", item.line, ": ", plan.status().message()));
      } else if (plan->chunked) {
        spec.n_middle = static_cast<int32_t>(plan->middle.size());
        for (const TokenRange& r : plan->middle) {
          spec.chunk_kv_bytes.push_back(ChunkKvBytes(model_.config, r.size()));
          spec.chunk_tokens.push_back(plan->anchor.size() + r.size());
        }
        spec.final_tokens = plan->anchor.size() + plan->last.size();
        rt->anchor = plan->anchor;
        rt->middle = plan->middle;
        if (fresh) item.plan_json = PlanToJson(*plan).dump();
      }
    }
    if (!error.ok()) {
      // A bad line fails alone, with the record `mesa run` writes for it.
      jobs::JobResult r;
      r.custom_id = rt->line.custom_id;
      r.line = item.line;
      r.status = error;
      item.state = ItemState::kFailed;
      item.result = StripNewline(jobs::ResultToLine(r));
      continue;
    }
    rt->failures = item.failures;
    runtime->pending[item.idx] = rt;
    specs.push_back(std::move(spec));
  }
  std::lock_guard<std::mutex> lock(mu_);
  jobs_[job.id] = runtime;
  return specs;
}

absl::StatusOr<JobRecord> CoordinatorCore::CreateJob(const JobRequest& request,
                                                     const std::vector<std::string>& lines) {
  MESA_RETURN_IF_ERROR(CheckJobRequest(request));
  JobRecord job;
  job.id = NewJobId();
  job.request_id = request.request_id;
  job.model = model_name();
  job.task = request.task.empty() ? "summarize" : request.task;
  job.options_json = JobOptionsJson(request);
  job.created_at = static_cast<int64_t>(std::time(nullptr));
  MESA_ASSIGN_OR_RETURN(std::vector<ItemRecord> items, JobItems(job.id, lines, options_.max_job_lines));

  MESA_ASSIGN_OR_RETURN(std::vector<ItemSpec> specs, PrepareItems(job, items, /*fresh=*/true));
  // Items whose line failed validation are stored pending and settled right after.
  std::vector<ItemRecord> stored = items;
  for (ItemRecord& it : stored) {
    it.state = ItemState::kPending;
    it.result.clear();
  }
  auto created = store_->CreateJob(job, stored);
  if (!created.ok() || !created->created) {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.erase(job.id);
    if (!created.ok()) return created.status();
    ops::LogInfo("job.duplicate_request", {{"job", created->job.id}, {"request_id", job.request_id}});
    return created->job;  // the same request_id was seen before: that job
  }
  instruments_.jobs_submitted.Increment();
  instruments_.items_submitted.Increment(static_cast<double>(items.size()));
  ops::LogInfo("job.submitted", {{"job", job.id},
                                 {"request_id", job.request_id},
                                 {"items", items.size()},
                                 {"rejected", items.size() - specs.size()},
                                 {"task", job.task},
                                 {"placement", request.placement}});
  {
    size_t next_spec = 0;  // specs follow the accepted items in order
    for (const ItemRecord& it : items) {
      if (it.state == ItemState::kFailed) {
        ops::LogWarn("item.rejected", {{"job", job.id}, {"item", it.idx}, {"line", it.line},
                                       {"custom_id", it.custom_id}, {"request_id", job.request_id},
                                       {"error", RecordError(it.result)}});
        continue;
      }
      const ItemSpec* spec = next_spec < specs.size() ? &specs[next_spec++] : nullptr;
      ops::LogInfo("item.submitted", {{"job", job.id}, {"item", it.idx}, {"line", it.line},
                                      {"custom_id", it.custom_id}, {"request_id", job.request_id},
                                      {"prompt_tokens", spec ? spec->prompt_tokens : 0},
                                      {"chunks", spec ? spec->n_middle : 0}});
    }
  }
  for (const ItemRecord& it : items) {
    if (it.state == ItemState::kFailed) {
      MESA_ASSIGN_OR_RETURN(const bool first,
                            store_->CommitResult(job.id, it.idx, ItemState::kFailed, it.result, 0, 0));
      if (first) instruments_.items_failed.Increment();
    }
  }
  MESA_RETURN_IF_ERROR(store_->SetJobStatus(job.id, kJobInProgress));
  {
    std::unique_lock<std::mutex> lock(mu_);
    scheduler_->AddJob(job.id, specs, Now());
    FinishJobIfDoneLocked(job.id);
    ExecuteActionsLocked(lock);
    BumpLocked();
    wake_.notify_all();
  }
  return store_->GetJob(job.id);
}

absl::Status CoordinatorCore::ResumeJobs() {
  MESA_ASSIGN_OR_RETURN(std::vector<std::string> ids, store_->UnfinishedJobIds());
  for (const std::string& id : ids) {
    MESA_ASSIGN_OR_RETURN(JobRecord job, store_->GetJob(id));
    if (job.status == kJobCancelling) {
      MESA_RETURN_IF_ERROR(store_->SetJobStatus(id, kJobCancelled));
      continue;
    }
    MESA_ASSIGN_OR_RETURN(std::vector<ItemRecord> items, store_->Items(id));
    MESA_ASSIGN_OR_RETURN(std::vector<ItemSpec> specs, PrepareItems(job, items, /*fresh=*/false));
    for (const ItemRecord& it : items) {
      if (it.state == ItemState::kFailed && !it.result.empty()) {
        MESA_ASSIGN_OR_RETURN(const bool first, store_->CommitResult(id, it.idx, ItemState::kFailed, it.result, 0, 0));
        if (first) instruments_.items_failed.Increment();
      }
    }
    ops::LogInfo("job.resumed", {{"job", id}, {"request_id", job.request_id}, {"pending", specs.size()}});
    if (job.status == kJobValidating) MESA_RETURN_IF_ERROR(store_->SetJobStatus(id, kJobInProgress));
    std::unique_lock<std::mutex> lock(mu_);
    scheduler_->AddJob(id, specs, Now());
    FinishJobIfDoneLocked(id);
  }
  return absl::OkStatus();
}

absl::StatusOr<JobRecord> CoordinatorCore::GetJob(const std::string& id) {
  auto job = store_->GetJob(id);
  if (absl::IsNotFound(job.status())) {
    return absl::NotFoundError(absl::StrCat("job '", id, "' not found (`mesa list` shows the jobs)"));
  }
  return job;
}

absl::StatusOr<JobStore::JobStatusRecord> CoordinatorCore::GetJobStatus(const std::string& id) {
  auto status = store_->GetJobStatus(id);
  if (absl::IsNotFound(status.status())) {
    return absl::NotFoundError(absl::StrCat("job '", id, "' not found (`mesa list` shows the jobs)"));
  }
  return status;
}

absl::StatusOr<std::vector<ItemRecord>> CoordinatorCore::Items(const std::string& id) {
  MESA_RETURN_IF_ERROR(GetJob(id).status());
  return store_->Items(id);
}

absl::StatusOr<std::vector<ItemRecord>> CoordinatorCore::SettledItems(const std::string& id, int64_t from_idx) {
  MESA_RETURN_IF_ERROR(GetJobStatus(id).status());
  return store_->SettledItems(id, from_idx);
}

absl::StatusOr<std::vector<JobRecord>> CoordinatorCore::ListJobs(int limit) { return store_->ListJobs(limit); }

absl::StatusOr<JobRecord> CoordinatorCore::CancelJob(const std::string& id) {
  MESA_ASSIGN_OR_RETURN(JobRecord job, GetJob(id));
  if (IsTerminalJobStatus(job.status)) return job;  // best effort (AIP-151): nothing left to stop
  {
    // The job may have finished since the read above: FinishJobIfDoneLocked completes
    // jobs under mu_, so the check that decides and the write that cancels happen
    // under it too (else a completed job could be overwritten as cancelled).
    std::unique_lock<std::mutex> lock(mu_);
    MESA_ASSIGN_OR_RETURN(job, store_->GetJob(id));
    if (IsTerminalJobStatus(job.status)) return job;
    MESA_RETURN_IF_ERROR(store_->SetJobStatus(id, kJobCancelling));
    scheduler_->CancelJob(id, Now());
    ExecuteActionsLocked(lock);
    jobs_.erase(id);  // its pending prompts are no longer needed; late outcomes find nothing
    BumpLocked();
  }
  MESA_RETURN_IF_ERROR(store_->SetJobStatus(id, kJobCancelled));
  ops::LogInfo("job.cancelled", {{"job", id}, {"request_id", job.request_id}});
  {
    std::lock_guard<std::mutex> lock(mu_);
    BumpLocked();
  }
  return store_->GetJob(id);
}

absl::StatusOr<std::vector<std::string>> CoordinatorCore::Results(const std::string& id, const std::string& format) {
  if (!format.empty() && format != "mesa" && format != "openai") {
    return absl::InvalidArgumentError(absl::StrCat("unknown results format '", format, "' (choose mesa or openai)"));
  }
  MESA_ASSIGN_OR_RETURN(JobRecord job, GetJob(id));
  MESA_ASSIGN_OR_RETURN(std::vector<ItemRecord> items, store_->Items(id));
  std::vector<std::string> out;
  for (const ItemRecord& it : items) {
    if (it.state == ItemState::kPending || it.result.empty()) continue;
    if (format == "openai") {
      out.push_back(StripNewline(jobs::MesaLineToOpenAiLine(it.result, job.model, job.id)));
    } else {
      out.push_back(it.result);
    }
  }
  return out;
}

void CoordinatorCore::FinishJobIfDoneLocked(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || !it->second->pending.empty()) return;
  if (!scheduler_->JobFinished(job_id)) return;
  // Every item is settled: write the result file beside the store, then complete.
  const std::shared_ptr<JobRuntime> rt = it->second;
  jobs_.erase(it);
  (void)store_->SetJobStatus(job_id, kJobFinalizing);
  auto items = store_->Items(job_id);
  int64_t done = 0, failed = 0;
  if (items.ok()) {
    for (const ItemRecord& r : *items) {
      done += r.state == ItemState::kDone ? 1 : 0;
      failed += r.state == ItemState::kFailed ? 1 : 0;
    }
  }
  // K/V moved ahead to final workers while chunks computed: kv_moves chunks.
  ops::LogInfo("job.completed", {{"job", job_id},
                                 {"request_id", rt->record.request_id},
                                 {"items_done", done},
                                 {"items_failed", failed},
                                 {"kv_moves", rt->moves},
                                 {"kv_moved_bytes", rt->moved_bytes},
                                 {"kv_move_seconds", rt->move_s},
                                 {"kv_moves_failed", rt->moves_failed}});
  if (items.ok()) {
    const std::string dir = options_.store_dir + "/results";
    ::mkdir(dir.c_str(), 0700);
    ::chmod(dir.c_str(), 0700);  // also when an earlier run (or a person) made it otherwise
    std::vector<std::string> lines;
    for (const ItemRecord& r : *items) {
      if (!r.result.empty()) lines.push_back(r.result + "\n");
    }
    absl::Status s = WriteOwnerOnly(dir + "/" + job_id + ".jsonl", lines);
    if (!s.ok()) ops::LogError("job.results_write_failed", {{"job", job_id}, {"error", s}});
  }
  (void)store_->SetJobStatus(job_id, kJobCompleted);
  BumpLocked();
}

// ---------------------------------------------------------------- workers

absl::StatusOr<std::string> CoordinatorCore::RegisterWorker(const std::string& name, const std::string& fingerprint,
                                                            const std::string& model_description,
                                                            int64_t kv_budget_bytes,
                                                            std::unique_ptr<WorkerClient> client, WorkerAbout about) {
  if (kv_budget_bytes < 0) return absl::InvalidArgumentError("kv_memory_bytes must be >= 0");
  const ModelFingerprint theirs = ModelFingerprint::FromString(fingerprint);
  std::unique_lock<std::mutex> lock(mu_);
  if (!FingerprintsMatch(fingerprint_, theirs)) {
    absl::Status refused = absl::FailedPreconditionError(absl::StrCat(
        "worker '", name, "' holds a different model: ", model_description, " (fingerprint ", fingerprint,
        "); this coordinator serves ", DescribeModel(model_), " (fingerprint ", fingerprint_.ToString(), ")"));
    ops::LogWarn("worker.refused", {{"name", name}, {"error", refused}});
    return refused;
  }
  // A coordinator without matrices (vocab-only file) pins the first worker's weights, so
  // that workers with the same shapes but other weights (another quantization) are refused.
  if (fingerprint_.weights.empty()) fingerprint_.weights = theirs.weights;
  if (stopping_) return absl::UnavailableError("the coordinator is shutting down");
  auto entry = std::make_shared<WorkerEntry>();
  entry->id = absl::StrCat("w", next_worker_++, "-", name.empty() ? "worker" : name);
  entry->name = name;
  entry->client = std::move(client);
  entry->about = std::move(about);
  entry->joined_unix_s = absl::ToUnixSeconds(absl::Now());
  workers_[entry->id] = entry;
  WorkerCaps caps;
  caps.kv_budget_bytes = kv_budget_bytes;
  scheduler_->WorkerJoined(entry->id, caps, Now());
  ExecuteActionsLocked(lock);
  wake_.notify_all();
  return entry->id;
}

std::vector<CoordinatorCore::WorkerInfo> CoordinatorCore::ListWorkers() {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = Now();
  std::vector<WorkerInfo> out;
  for (Scheduler::WorkerView& v : scheduler_->Workers()) {
    auto it = workers_.find(v.worker);
    if (it == workers_.end()) continue;  // (the scheduler knows only registered workers)
    WorkerInfo w;
    w.id = it->second->id;
    w.name = it->second->name;
    w.about = it->second->about;
    w.report = it->second->report;
    w.joined_unix_s = it->second->joined_unix_s;
    w.heartbeat_age_ms = std::max<int64_t>(0, now - v.last_beat_ms);
    w.running_ms = v.task != 0 ? std::max<int64_t>(0, now - v.dispatched_ms) : 0;
    w.view = std::move(v);
    out.push_back(std::move(w));
  }
  return out;
}

bool CoordinatorCore::Heartbeat(const std::string& worker_id, bool draining, WorkerReport report) {
  std::unique_lock<std::mutex> lock(mu_);
  auto entry = workers_.find(worker_id);
  if (entry == workers_.end()) return false;
  if (!scheduler_->HasWorker(worker_id)) {
    // Declared dead (silent too long): it must register again, as a new worker.
    workers_.erase(entry);
    return false;
  }
  entry->second->report = report;
  scheduler_->WorkerHeartbeat(worker_id, Now());
  if (draining) scheduler_->WorkerDraining(worker_id, Now());
  ExecuteActionsLocked(lock);
  return true;
}

bool CoordinatorCore::DeregisterWorker(const std::string& worker_id) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!workers_.contains(worker_id)) return false;
  scheduler_->WorkerLeft(worker_id, Now());
  workers_.erase(worker_id);
  ExecuteActionsLocked(lock);
  wake_.notify_all();
  return true;
}

Scheduler::Stats CoordinatorCore::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return scheduler_->stats();
}

// ---------------------------------------------------------------- driving

void CoordinatorCore::DriverLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    const int64_t now = Now();
    const int64_t next = std::min<int64_t>(scheduler_->next_deadline_ms(), now + heartbeat_interval_ms());
    wake_.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(1, next - now)));
    if (stopping_) break;
    scheduler_->Tick(Now());
    // Workers the scheduler declared dead are gone for us too.
    ExecuteActionsLocked(lock);
    std::vector<std::thread> done;
    for (uint64_t id : finished_threads_) {
      auto it = task_threads_.find(id);
      if (it != task_threads_.end()) {
        done.push_back(std::move(it->second));
        task_threads_.erase(it);
      }
    }
    finished_threads_.clear();
    for (uint64_t id : finished_moves_) {
      auto it = move_threads_.find(id);
      if (it != move_threads_.end()) {
        done.push_back(std::move(it->second));
        move_threads_.erase(it);
      }
    }
    finished_moves_.clear();
    lock.unlock();
    for (std::thread& t : done) t.join();
    lock.lock();
  }
}

void CoordinatorCore::ExecuteActionsLocked(std::unique_lock<std::mutex>& lock) {
  for (Action& a : scheduler_->TakeActions()) {
    if (auto* d = std::get_if<Dispatch>(&a)) {
      if (stopping_) continue;
      const uint64_t id = d->task;
      task_threads_[id] = std::thread([this, d = std::move(*d)]() mutable { RunTask(std::move(d)); });
    } else if (auto* c = std::get_if<CancelTask>(&a)) {
      auto w = workers_.find(c->worker);
      if (w != workers_.end()) w->second->client->Cancel(c->task);
    } else if (auto* r = std::get_if<ReleaseKv>(&a)) {
      auto w = workers_.find(r->worker);
      if (w == workers_.end()) continue;
      // Off the lock: a dead worker's call waits for its deadline.
      SpawnLocked([client = w->second->client, r = *r] { (void)client->ReleaseKv(r.job_id, r.item, r.attempt); });
    } else if (auto* m = std::get_if<MoveKv>(&a)) {
      if (stopping_) continue;
      // A thread of its own, like a task's, but no task slot: the destination keeps
      // computing while it fetches. The outcome comes back as an event.
      const uint64_t id = next_move_++;
      move_threads_[id] = std::thread([this, m = *m, id]() mutable { RunMove(std::move(m), id); });
    } else if (auto* f = std::get_if<ItemFailed>(&a)) {
      auto j = jobs_.find(f->job_id);
      if (j == jobs_.end()) continue;
      auto item = j->second->pending.find(f->item);
      if (item == j->second->pending.end()) {
        // Already settled here (its result committed): the scheduler's word ends it too.
        FinishJobIfDoneLocked(f->job_id);
        continue;
      }
      jobs::JobResult r;
      r.custom_id = item->second->line.custom_id;
      r.line = item->second->line.line;
      r.status = absl::UnavailableError(absl::StrCat("line ", r.line, ": ", f->error));
      auto first =
          store_->CommitResult(f->job_id, f->item, ItemState::kFailed, StripNewline(jobs::ResultToLine(r)), 0, 0);
      if (first.ok() && *first) instruments_.items_failed.Increment();
      ops::LogWarn("item.failed", {{"job", f->job_id}, {"item", f->item}, {"custom_id", r.custom_id},
                                   {"request_id", j->second->record.request_id}, {"error", f->error}});
      j->second->pending.erase(item);
      BumpLocked();
      FinishJobIfDoneLocked(f->job_id);
    }
  }
  (void)lock;
}

void CoordinatorCore::SpawnLocked(std::function<void()> work) {
  if (stopping_) return;  // K/V left behind expires with its lease
  const uint64_t id = next_move_++;
  move_threads_[id] = std::thread([this, id, work = std::move(work)] {
    work();
    std::lock_guard<std::mutex> lock(mu_);
    finished_moves_.push_back(id);
  });
}

void CoordinatorCore::RunMove(MoveKv m, uint64_t id) {
  std::shared_ptr<WorkerClient> dest;
  std::string source;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto d = workers_.find(m.worker);
    auto s = workers_.find(m.from);
    if (d != workers_.end() && s != workers_.end()) {
      dest = d->second->client;
      source = s->second->client->kv_address();
    }
  }
  absl::StatusOr<int64_t> moved = absl::UnavailableError("a worker of the move left");
  const auto t0 = std::chrono::steady_clock::now();
  if (dest) {
    worker::KvSourceRef ref;
    ref.chunk = m.chunk;
    ref.address = source;
    ref.key = worker::KvKey{m.job_id, m.item, m.chunk, m.attempt};
    moved = dest->LoadKv(ref, options_.kv_lease_ms, options_.fetch_timeout_ms);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::unique_lock<std::mutex> lock(mu_);
  auto j = jobs_.find(m.job_id);
  if (moved.ok()) {
    if (j != jobs_.end()) {
      ++j->second->moves;
      j->second->moved_bytes += *moved;
      j->second->move_s += seconds;
    }
    instruments_.kv_moves_ok.Increment();
    instruments_.kv_moved_bytes.Increment(static_cast<double>(*moved));
    instruments_.kv_move_seconds.Observe(seconds);
    ops::LogDebug("kv.moved", {{"job", m.job_id}, {"item", m.item}, {"chunk", m.chunk}, {"attempt", m.attempt},
                               {"from", m.from}, {"worker", m.worker}, {"bytes", *moved}, {"seconds", seconds}});
    scheduler_->KvMoved(m.job_id, m.item, m.chunk, m.attempt, Now());
  } else {
    if (j != jobs_.end()) ++j->second->moves_failed;
    instruments_.kv_moves_failed.Increment();
    ops::LogDebug("kv.move_failed", {{"job", m.job_id}, {"item", m.item}, {"chunk", m.chunk}, {"attempt", m.attempt},
                                     {"from", m.from}, {"worker", m.worker}, {"error", moved.status()}});
    scheduler_->KvMoveFailed(m.job_id, m.item, m.chunk, m.attempt, moved.status(), Now());
  }
  ExecuteActionsLocked(lock);
  finished_moves_.push_back(id);
  wake_.notify_all();
}

void CoordinatorCore::RunTask(Dispatch d) {
  std::shared_ptr<WorkerClient> client;
  std::shared_ptr<ItemRuntime> item;
  worker::FinalTask final_task;
  worker::ChunkTask chunk_task;
  std::string request_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto w = workers_.find(d.worker);
    auto j = jobs_.find(d.job_id);
    if (w != workers_.end()) client = w->second->client;
    if (j != jobs_.end()) {
      request_id = j->second->record.request_id;
      auto it = j->second->pending.find(d.item);
      if (it != j->second->pending.end()) item = it->second;
    }
    if (client && item) {
      worker::KvKey key{d.job_id, d.item, d.chunk, d.attempt};
      if (d.kind == TaskKind::kChunk) {
        chunk_task.key = key;
        // Only the anchor's and this chunk's tokens travel (the plan needs the length only).
        const auto& p = item->prompt;
        if (d.chunk >= 0 && d.chunk < static_cast<int32_t>(item->middle.size())) {
          const TokenRange a = item->anchor, m = item->middle[d.chunk];
          chunk_task.prompt.assign(p.begin() + a.begin, p.begin() + a.end);
          chunk_task.prompt.insert(chunk_task.prompt.end(), p.begin() + m.begin, p.begin() + m.end);
          chunk_task.prompt_length = static_cast<int64_t>(p.size());
        } else {
          chunk_task.prompt = p;
        }
        chunk_task.max_new_tokens = item->max_new;
        chunk_task.options = options_.attention;
        chunk_task.lease_ms = options_.kv_lease_ms;
      } else {
        final_task.key = key;
        final_task.key.chunk = -1;
        final_task.prompt = item->prompt;
        final_task.max_new_tokens = item->max_new;
        final_task.options = options_.attention;
        final_task.fetch_timeout_ms = options_.fetch_timeout_ms;
        for (const SourceRef& s : d.sources) {
          worker::KvSourceRef ref;
          ref.chunk = s.chunk;
          ref.key = worker::KvKey{d.job_id, d.item, s.chunk, s.attempt};
          if (s.worker != d.worker) {
            auto holder = workers_.find(s.worker);
            ref.address = holder != workers_.end() ? holder->second->client->kv_address() : "unreachable:" + s.worker;
          }
          final_task.sources.push_back(std::move(ref));
        }
      }
    }
  }
  const int64_t timeout = std::max<int64_t>(1000, d.deadline_ms - Now() + 5000);
  const char* kind = d.kind == TaskKind::kChunk ? "chunk" : "final";
  const std::string custom_id = item ? item->line.custom_id : std::string();
  ops::LogDebug("task.dispatched", {{"job", d.job_id}, {"item", d.item}, {"custom_id", custom_id},
                                    {"task", d.task}, {"kind", kind}, {"chunk", d.chunk}, {"attempt", d.attempt},
                                    {"worker", d.worker}});
  const auto t0 = std::chrono::steady_clock::now();
  int64_t kv_fetched = 0;
  double kv_fetch_s = 0;
  bool first_commit = false;
  absl::Status status;
  std::string record;
  int64_t prompt_tokens = 0, generated = 0;
  TaskStats stats;  // measurements for the scheduler's cost model
  if (!client) {
    status = absl::UnavailableError("the worker left");
  } else if (!item) {
    status = absl::CancelledError("the item is no longer pending");
  } else if (d.kind == TaskKind::kChunk) {
    auto r = client->RunChunk(d.task, chunk_task, timeout);
    status = r.status();
    if (r.ok()) stats = TaskStats{r->tokens, r->compute_s, 0, 0, 0, 0};
  } else {
    auto r = client->RunFinal(d.task, final_task, timeout);
    status = r.status();
    if (r.ok()) {
      stats = TaskStats{0, r->prefill_s, static_cast<int64_t>(r->tokens.size()), r->decode_s,
                        r->kv_bytes_received, r->kv_transfer_s};
      kv_fetched = r->kv_bytes_received;
      kv_fetch_s = r->kv_transfer_s;
      jobs::GenerationOutput gen;
      gen.tokens = std::move(r->tokens);
      gen.stop_reason = std::move(r->stop_reason);
      gen.attention = std::move(r->attention);
      gen.plan = std::move(r->plan);
      gen.prefill_s = r->prefill_s;
      gen.decode_s = r->decode_s;
      jobs::JobResult result = jobs::MakeResult(*model_.tokenizer, item->line, item->prompt, std::move(gen));
      prompt_tokens = result.prompt_tokens;
      generated = result.generated_tokens;
      record = StripNewline(jobs::ResultToLine(result));
      // Committed before the scheduler hears of it: a crash after this never loses it.
      auto committed = store_->CommitResult(d.job_id, d.item, ItemState::kDone, record, prompt_tokens, generated);
      if (!committed.ok()) status = committed.status();
      first_commit = committed.ok() && *committed;
    }
  }
  const double task_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (client && item) {
    const bool chunk = d.kind == TaskKind::kChunk;
    if (status.ok()) {
      (chunk ? instruments_.chunk_tasks_ok : instruments_.final_tasks_ok).Increment();
      (chunk ? instruments_.chunk_task_seconds : instruments_.final_task_seconds).Observe(task_s);
      ops::LogDebug("task.done", {{"job", d.job_id}, {"item", d.item}, {"custom_id", custom_id}, {"task", d.task},
                                  {"kind", kind}, {"chunk", d.chunk}, {"attempt", d.attempt}, {"worker", d.worker},
                                  {"seconds", task_s}});
    } else {
      (chunk ? instruments_.chunk_tasks_failed : instruments_.final_tasks_failed).Increment();
      ops::LogWarn("task.failed", {{"job", d.job_id}, {"item", d.item}, {"custom_id", custom_id}, {"task", d.task},
                                   {"kind", kind}, {"chunk", d.chunk}, {"attempt", d.attempt}, {"worker", d.worker},
                                   {"seconds", task_s}, {"error", status}});
    }
    if (kv_fetched > 0) {
      instruments_.kv_fetched_bytes.Increment(static_cast<double>(kv_fetched));
      instruments_.kv_fetch_seconds.Observe(kv_fetch_s);
    }
    if (first_commit) {
      instruments_.items_done.Increment();
      instruments_.prompt_tokens.Increment(static_cast<double>(prompt_tokens));
      instruments_.generated_tokens.Increment(static_cast<double>(generated));
      ops::LogInfo("item.done", {{"job", d.job_id}, {"item", d.item}, {"custom_id", custom_id},
                                 {"request_id", request_id}, {"attempt", d.attempt}, {"worker", d.worker},
                                 {"prompt_tokens", prompt_tokens},
                                 {"generated_tokens", generated}, {"seconds", task_s}});
    }
  }
  // A chunk call that ended cancelled or past its deadline may still have left its K/V
  // on the worker (it checks for cancellation between steps; the scheduler releases only
  // what it saw succeed): free that dispatch's attempt, off the lock and this thread.
  const bool release_chunk = client && item && d.kind == TaskKind::kChunk &&
                             (absl::IsCancelled(status) || absl::IsDeadlineExceeded(status));
  // A failure that may mean a dead process: ask the workers concerned (off the lock),
  // so that a dead worker is known at once rather than after its heartbeats stop, and
  // the retry does not go back to it.
  std::vector<std::string> dead;
  if (client && (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) && !client->Reachable(1000)) {
    dead.push_back(d.worker);
  }
  if (absl::IsAborted(status)) {
    std::map<std::string, std::shared_ptr<WorkerClient>> holders;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const SourceRef& s : d.sources) {
        auto w = workers_.find(s.worker);
        if (s.worker != d.worker && w != workers_.end()) holders[s.worker] = w->second->client;
      }
    }
    for (auto& [id, c] : holders) {
      if (!c->Reachable(1000)) dead.push_back(id);
    }
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (release_chunk) {
    SpawnLocked([client, job = d.job_id, it = d.item, attempt = d.attempt] {
      (void)client->ReleaseKv(job, it, attempt);
    });
  }
  if (stopping_) {
    // The coordinator is shutting down and cancelled this task itself: not the item's
    // failure (a restart resumes it from the store with its failures unchanged).
    finished_threads_.push_back(d.task);
    return;
  }
  for (const std::string& w : dead) {
    if (!workers_.contains(w)) continue;
    ops::LogWarn("worker.dead", {{"worker", w}, {"reason", "no answer after a failed call"}});
    instruments_.workers_lost.Increment();
    scheduler_->WorkerLeft(w, Now());
    workers_.erase(w);
  }
  if (status.ok()) {
    const bool completed = scheduler_->TaskSucceeded(d.task, Now(), stats);
    if (d.kind == TaskKind::kFinal && first_commit && !completed) {
      // The result is in the store, but the scheduler had already written this task off
      // (a draining worker's deregistration overtook its last result, or it was declared
      // dead) and queued the item again: the commit settles it.
      if (scheduler_->ItemCommitted(d.job_id, d.item, Now())) {
        ops::LogInfo("item.late_result", {{"job", d.job_id}, {"item", d.item}, {"worker", d.worker},
                                          {"note", "committed after the scheduler wrote its task off"}});
      }
    }
    if (d.kind == TaskKind::kFinal) {
      auto j = jobs_.find(d.job_id);
      if (j != jobs_.end()) j->second->pending.erase(d.item);
      BumpLocked();
      FinishJobIfDoneLocked(d.job_id);
    }
  } else {
    scheduler_->TaskFailed(d.task, status, Now());
    // Failures survive a coordinator restart (the scheduler counts them: deadlines and
    // dead workers included).
    const int32_t failures = scheduler_->ItemFailures(d.job_id, d.item);
    if (item && failures > item->failures) {
      item->failures = failures;
      (void)store_->SetFailures(d.job_id, d.item, failures);
    }
  }
  ExecuteActionsLocked(lock);
  finished_threads_.push_back(d.task);
  wake_.notify_all();
}

}  // namespace mesa::coord
