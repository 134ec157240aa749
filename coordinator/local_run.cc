// RunBatchLocal: `mesa run` over CoordinatorCore + in-process workers (see local_run.h).
#include "coordinator/local_run.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "coordinator/coordinator_core.h"
#include "coordinator/in_process_worker.h"
#include "worker/in_process_kv.h"

namespace mesa::coord {

void TempDir::Create(const std::string& prefix) {
  std::string t = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (mkdtemp(t.data())) path = t;
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path.empty()) std::filesystem::remove_all(path, ec);
}

namespace {

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};

// Rewrites the output with its records in input-line order (stable; a record without a
// line number keeps its place at the end).
absl::Status SortRecordsByLine(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::vector<std::pair<int64_t, std::string>> records;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    int64_t n = INT64_MAX;
    if (j.is_object() && j.contains("line") && j["line"].is_number_integer()) n = j["line"].get<int64_t>();
    records.emplace_back(n, line + "\n");
  }
  std::stable_sort(records.begin(), records.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> lines;
  for (auto& r : records) lines.push_back(std::move(r.second));
  return jobs::RewriteFile(path, lines);
}

}  // namespace

absl::Status FollowJob(CoordinatorCore& core, const std::string& job_id, std::set<int64_t>& seen,
                       jobs::BatchSummary& summary, const RecordFn& on_record,
                       const std::function<bool()>& should_stop, int64_t poll_ms) {
  int64_t version = core.version();
  // The item count never changes; the per-change checks below read the status alone (a
  // whole JobRecord counts every item: a job's follow would cost its items squared).
  MESA_ASSIGN_OR_RETURN(const JobRecord job, core.GetJob(job_id));
  int64_t first_unseen = 0;  // every item before it is in `seen`
  for (;;) {
    // Settled items only, without their documents, and only from the first one not seen
    // yet: this runs again on every change.
    while (seen.contains(first_unseen)) ++first_unseen;
    MESA_ASSIGN_OR_RETURN(std::vector<ItemRecord> settled, core.SettledItems(job_id, first_unseen));
    for (const ItemRecord& item : settled) {
      if (item.result.empty() || seen.contains(item.idx)) continue;
      seen.insert(item.idx);
      ++summary.processed;
      auto parsed = jobs::ResultFromJson(nlohmann::json::parse(item.result, nullptr, false));
      jobs::JobResult r = parsed.ok() ? *std::move(parsed) : jobs::JobResult{};
      if (!parsed.ok()) r.status = parsed.status();
      if (r.status.ok()) {
        ++summary.ok;
        summary.prompt_tokens += item.prompt_tokens;
        summary.generated_tokens += item.generated_tokens;
      } else {
        ++summary.errors;
      }
      MESA_RETURN_IF_ERROR(on_record(item, r));
    }
    MESA_ASSIGN_OR_RETURN(const JobStore::JobStatusRecord now, core.GetJobStatus(job_id));
    if (IsTerminalJobStatus(now.status)) {
      if (now.status != kJobCompleted) {
        return absl::InternalError(absl::StrCat("job ", job_id, " ended ", now.status,
                                                now.error.empty() ? "" : absl::StrCat(": ", now.error)));
      }
      if (static_cast<int64_t>(seen.size()) < job.total) continue;  // the last records
      return absl::OkStatus();
    }
    if (should_stop && should_stop()) return absl::AbortedError(absl::StrCat("job ", job_id, " is unfinished"));
    version = core.WaitForChange(version, poll_ms);
  }
}

absl::StatusOr<jobs::BatchSummary> RunBatchLocal(const std::string& input_path, const std::string& output_path,
                                                 const Model& model, const LocalRunOptions& options,
                                                 jobs::BatchObserver* observer) {
  if (options.workers < 1) return absl::InvalidArgumentError("--workers must be at least 1");
  MESA_ASSIGN_OR_RETURN(jobs::ExistingOutput existing, jobs::ReadExistingOutput(output_path, options.retry_errors));

  // The input's lines, with those already settled by the output blanked: blank lines are
  // no items, so every item keeps its line number.
  std::vector<std::string> lines;
  jobs::BatchSummary summary;
  int64_t todo = 0;
  {
    std::ifstream in(input_path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read input '", input_path, "'"));
    MESA_ASSIGN_OR_RETURN(auto reader, jobs::InputReader::Open(input_path, options.task, options.limits));
    std::string text;
    int64_t line_no = 0;
    std::set<int64_t> done_lines;
    while (auto line = reader.Next()) {
      if (jobs::AlreadyDone(*line, existing, options.retry_errors)) {
        ++summary.skipped;
        done_lines.insert(line->line);
      } else {
        ++todo;
      }
    }
    MESA_RETURN_IF_ERROR(reader.status());
    while (std::getline(in, text)) {
      ++line_no;
      lines.push_back(done_lines.contains(line_no) ? std::string() : std::move(text));
    }
  }
  MESA_RETURN_IF_ERROR(jobs::RewriteFile(output_path, existing.kept_lines));
  std::unique_ptr<std::FILE, FileCloser> out(std::fopen(output_path.c_str(), "ab"));
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot append to '", output_path, "'"));
  if (observer) observer->OnStart(todo, summary.skipped, existing);
  if (todo == 0) return summary;

  // Declared before the coordinator core, so that the core (which owns the clients of
  // these workers and may still run tasks on them) is destroyed first.
  worker::InProcessKvFetcher fetcher;
  std::vector<std::unique_ptr<worker::WorkerCore>> cores;
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int total_threads = options.threads > 0 ? options.threads : hw;
  for (int i = 0; i < options.workers; ++i) {
    const int threads = std::max(1, total_threads / options.workers + (i < total_threads % options.workers ? 1 : 0));
    MESA_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, MakeBackend(options.device, threads, options.kv_type));
    cores.push_back(std::make_unique<worker::WorkerCore>(model, std::move(backend), worker::WorkerCoreOptions{},
                                                         &fetcher));
  }
  TempDir store;
  store.Create("mesa-run");
  if (store.path.empty()) return absl::InternalError("cannot create a temporary job store");
  CoordinatorOptions co;
  co.store_dir = store.path;
  co.scheduler.placement = options.placement;
  co.scheduler.max_attempts = options.max_attempts;
  co.scheduler.heartbeat_timeout_ms = int64_t{1} << 40;  // in-process workers cannot go silent
  co.attention = options.attention;
  co.default_max_tokens = options.max_tokens;
  co.max_doc_bytes = options.limits.max_doc_bytes;
  co.chat_template = options.chat_template;
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<CoordinatorCore> core, CoordinatorCore::Create(model, co));

  const std::string fp = core->fingerprint().ToString();
  for (int i = 0; i < options.workers; ++i) {
    const std::string name = absl::StrCat("local", i);
    MESA_RETURN_IF_ERROR(core->RegisterWorker(name, fp, "in-process", 0,
                                              std::make_unique<InProcessWorkerClient>(name, *cores[i], fetcher))
                             .status());
  }

  JobRequest request;
  request.task = jobs::TaskKindName(options.task);
  request.max_tokens = options.max_tokens;
  request.chat_template = options.chat_template;
  request.max_doc_bytes = options.limits.max_doc_bytes;
  MESA_ASSIGN_OR_RETURN(JobRecord job, core->CreateJob(request, lines));

  // Append each record as its item settles, in the order they settle.
  std::set<int64_t> written;
  MESA_RETURN_IF_ERROR(FollowJob(*core, job.id, written, summary,
                                 [&](const ItemRecord& item, const jobs::JobResult& r) -> absl::Status {
                                   const std::string record = item.result + "\n";
                                   if (std::fwrite(record.data(), 1, record.size(), out.get()) != record.size() ||
                                       std::fflush(out.get()) != 0) {
                                     return absl::DataLossError(absl::StrCat("error writing '", output_path, "'"));
                                   }
                                   fsync(fileno(out.get()));  // a finished document survives a crash of the machine too
                                   if (observer) observer->OnRecord(r, summary.processed, todo);
                                   return absl::OkStatus();
                                 }));
  if (std::fclose(out.release()) != 0) return absl::DataLossError(absl::StrCat("error closing '", output_path, "'"));
  // Records were appended as items finished (a crash keeps every finished one); the
  // finished file lists them in input order, as the single-loop runner did.
  MESA_RETURN_IF_ERROR(SortRecordsByLine(output_path));
  return summary;
}

}  // namespace mesa::coord
