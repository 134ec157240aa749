// `mesa run --workers K`: a batch file through the coordinator core with K in-process
// workers (one shared Model, K WorkerCores, K/V moved without a copy), so that one
// machine and a cluster share one scheduling code path. Keeps `mesa run`'s contract:
// resume from an existing output (finished lines are skipped, errors retried unless
// told otherwise), one record per input line appended and fsynced as each finishes,
// the same records as the single-loop runner. The job store lives in a temporary
// directory removed at the end (the output file is what resumes).
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/scheduler.h"
#include "engine/long_context.h"
#include "engine/model.h"
#include "jobs/batch_runner.h"

namespace mesa::coord {

struct LocalRunOptions {
  int workers = 1;
  int threads = 0;                 // all workers together (0: hardware threads)
  std::string device = "cpu";      // --device: each worker gets its own backend on it
  std::string kv_type = "auto";    // --kv-type
  Placement placement = Placement::kAuto;
  jobs::TaskKind task = jobs::TaskKind::kSummarize;
  std::string chat_template = "auto";
  int64_t max_tokens = 256;
  jobs::InputLimits limits;
  bool retry_errors = true;
  LongContextOptions attention;
  int max_attempts = 3;
};

class CoordinatorCore;
struct ItemRecord;

// A temporary directory (a throwaway job store), removed with its contents on
// destruction. `path` stays empty when Create could not make it.
struct TempDir {
  std::string path;
  void Create(const std::string& prefix);  // under the system's temp directory: PREFIX-XXXXXX
  TempDir() = default;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();
};

// Follows job `job_id` on `core` until it completes: each item that settles (and is not
// in `seen`) is added to `seen`, counted in `summary` (processed, ok or errors, tokens)
// and handed to `on_record` with its stored record parsed; an error from `on_record`
// ends the follow with it. A job that ends other than completed is INTERNAL naming its
// status; `should_stop` (polled every `poll_ms`) returning true is ABORTED.
using RecordFn = std::function<absl::Status(const ItemRecord& item, const jobs::JobResult& record)>;
absl::Status FollowJob(CoordinatorCore& core, const std::string& job_id, std::set<int64_t>& seen,
                       jobs::BatchSummary& summary, const RecordFn& on_record,
                       const std::function<bool()>& should_stop = nullptr, int64_t poll_ms = 1000);

absl::StatusOr<jobs::BatchSummary> RunBatchLocal(const std::string& input_path, const std::string& output_path,
                                                 const Model& model, const LocalRunOptions& options,
                                                 jobs::BatchObserver* observer = nullptr);

}  // namespace mesa::coord
