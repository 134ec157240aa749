// The coordinator, transport-free: jobs in (lines validated, prompts tokenized and
// planned, everything persisted in the JobStore), the Scheduler deciding, workers
// reached through WorkerClient, results committed once per item. The gRPC services
// (coordinator/coordinator_service.h) and `mesa run --workers K` are thin adapters.
//
// Threads: public methods are thread-safe. One driver thread owns the scheduler's
// timers and executes its actions; each dispatched task runs on a thread of its own
// (at most one per worker) and reports back as an event; so does each K/V move (MoveKv:
// a chunk copied to its item's final worker while other chunks compute), which is no
// task and occupies no worker.
// Restart: Create() on a store with unfinished jobs re-queues their pending items
// (failures counted so far are kept); finished items are never recomputed.
// Operations: events go to ops/log.h (job, item, task, worker lines; docs/RUNTIME.md),
// metrics to options.metrics; nothing here serves them.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/job_request.h"
#include "coordinator/job_store.h"
#include "coordinator/scheduler.h"
#include "coordinator/worker_client.h"
#include "engine/long_context.h"
#include "engine/model.h"
#include "engine/model_fingerprint.h"
#include "jobs/job_format.h"
#include "jobs/templates.h"

namespace mesa::coord {

struct CoordinatorOptions {
  std::string store_dir;
  SchedulerOptions scheduler;
  LongContextOptions attention;        // for every task
  int64_t default_max_tokens = 256;
  int64_t max_doc_bytes = 16 << 20;
  std::string chat_template = "auto";  // the default for jobs that don't name one
  int64_t kv_lease_ms = 10 * 60 * 1000;
  int64_t fetch_timeout_ms = 120000;   // a final worker's wait for one chunk's K/V
  int64_t max_job_lines = 1000000;
  // Injectable clock (milliseconds, monotonic) for the scheduler's timers.
  std::function<int64_t()> clock;
  // Where the coordinator's metrics go (coordinator/coordinator_metrics.h); null: a
  // registry of its own. Two cores must not share one (their names would collide).
  std::shared_ptr<ops::Metrics> metrics;
};

// How a worker describes itself at registration (ListWorkers; all optional).
struct WorkerAbout {
  std::string address, device, kv_transport;
  int32_t threads = 0;
  int32_t kv_links = 0;  // its --kv-links
};
// What a worker reports with each heartbeat (ListWorkers shows the last).
struct WorkerReport {
  int64_t kv_bytes_in_use = 0;
  int32_t peer_links = 0;
};

class CoordinatorCore {
 public:
  // `model` needs its tokenizer and config only (the matrices are never read).
  static absl::StatusOr<std::unique_ptr<CoordinatorCore>> Create(const Model& model, CoordinatorOptions options);
  ~CoordinatorCore();  // stops the driver, cancels in-flight tasks, joins threads

  // Jobs. INVALID_ARGUMENT for bad options or no lines; NOT_FOUND for unknown jobs.
  absl::StatusOr<JobRecord> CreateJob(const JobRequest& request, const std::vector<std::string>& lines);
  absl::StatusOr<JobRecord> GetJob(const std::string& id);
  // Status and error only, in constant time (JobStore::GetJobStatus); NOT_FOUND as GetJob.
  absl::StatusOr<JobStore::JobStatusRecord> GetJobStatus(const std::string& id);
  absl::StatusOr<std::vector<JobRecord>> ListJobs(int limit);
  absl::StatusOr<JobRecord> CancelJob(const std::string& id);
  // Result records of the settled items in input order: "mesa" (as `mesa run`) or
  // "openai" (OpenAI batch output lines).
  absl::StatusOr<std::vector<std::string>> Results(const std::string& id, const std::string& format);
  // The job's items in input order (state, result record, token counts).
  absl::StatusOr<std::vector<ItemRecord>> Items(const std::string& id);
  absl::StatusOr<std::vector<ItemRecord>> SettledItems(const std::string& id,
                                                       int64_t from_idx = 0);  // JobStore::SettledItems
  // Blocks until the job changed after `version` (or timeout); returns the new version.
  int64_t WaitForChange(int64_t version, int64_t timeout_ms);
  int64_t version() const;

  // Workers. Register refuses (FAILED_PRECONDITION) a worker whose model differs.
  // `about`: how it describes itself, for ListWorkers (all optional).
  absl::StatusOr<std::string> RegisterWorker(const std::string& name, const std::string& fingerprint,
                                             const std::string& model_description, int64_t kv_budget_bytes,
                                             std::unique_ptr<WorkerClient> client, WorkerAbout about = {});
  // The registered workers, by id, with what the scheduler knows of each now.
  struct WorkerInfo {
    std::string id, name;
    WorkerAbout about;
    WorkerReport report;          // its last heartbeat's
    Scheduler::WorkerView view;
    int64_t heartbeat_age_ms = 0;
    int64_t running_ms = 0;       // of view's task, when it has one
    int64_t joined_unix_s = 0;
  };
  std::vector<WorkerInfo> ListWorkers();
  // false: unknown worker (it must register again).
  bool Heartbeat(const std::string& worker_id, bool draining, WorkerReport report = {});
  // false: unknown worker (already gone).
  bool DeregisterWorker(const std::string& worker_id);
  int64_t heartbeat_interval_ms() const;

  Scheduler::Stats stats();
  ModelFingerprint fingerprint() const {
    std::lock_guard<std::mutex> lock(mu_);
    return fingerprint_;
  }
  std::string model_name() const;

 private:
  CoordinatorCore(const Model& model, CoordinatorOptions options, std::unique_ptr<JobStore> store);
  struct ItemRuntime;
  struct JobRuntime;
  struct WorkerEntry;
  absl::Status ResumeJobs();
  absl::StatusOr<std::vector<ItemSpec>> PrepareItems(const JobRecord& job, std::vector<ItemRecord>& items,
                                                     bool fresh);
  void DriverLoop();
  void ExecuteActionsLocked(std::unique_lock<std::mutex>& lock);
  void RunTask(Dispatch d);
  void RunMove(MoveKv m, uint64_t id);
  void AddGauges();
  // Runs `work` on a thread of its own, joined by the driver or the destructor (K/V
  // releases); nothing starts once the coordinator is stopping.
  void SpawnLocked(std::function<void()> work);
  void OnItemSettledLocked(const std::string& job_id);
  void FinishJobIfDoneLocked(const std::string& job_id);
  void BumpLocked();
  int64_t Now() const;

  const Model& model_;
  CoordinatorOptions options_;
  std::unique_ptr<JobStore> store_;
  ModelFingerprint fingerprint_;
  std::shared_ptr<ops::Metrics> metrics_;
  CoordinatorMetrics instruments_;
  std::vector<ops::Metrics::CallbackHandle> gauges_;  // removed first in the destructor
  std::mutex job_counts_mu_;
  std::vector<ops::Metrics::Sample> job_counts_;  // the mesa_jobs gauge's last read (guarded by job_counts_mu_)
  jobs::ChatTemplate default_template_ = jobs::ChatTemplate::kRaw;

  mutable std::mutex mu_;
  std::condition_variable wake_;     // driver: new events or timers
  std::condition_variable changed_; // watchers: job progress
  int64_t version_ = 0;
  bool stopping_ = false;
  std::unique_ptr<Scheduler> scheduler_;
  std::map<std::string, std::shared_ptr<JobRuntime>> jobs_;
  std::map<std::string, std::shared_ptr<WorkerEntry>> workers_;
  int64_t next_worker_ = 1;
  std::map<uint64_t, std::thread> task_threads_;
  std::vector<uint64_t> finished_threads_;
  std::map<uint64_t, std::thread> move_threads_;  // K/V moves and releases in flight, by a local id
  std::vector<uint64_t> finished_moves_;
  uint64_t next_move_ = 1;
  std::thread driver_;
};

}  // namespace mesa::coord
