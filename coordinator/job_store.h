// The coordinator's durable state in SQLite (WAL, busy_timeout, results committed with
// synchronous=FULL): jobs, their items (the raw input line, its plan, failures counted,
// the result record), so that a restarted coordinator resumes every unfinished job and
// never recomputes a finished item. One connection behind a mutex (thread-safe).
// Schema (versioned by PRAGMA user_version): the comment atop job_store.cc; the
// practices it follows: docs/RUNTIME.md.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

struct sqlite3;

namespace mesa::coord {

// OpenAI batch statuses.
inline constexpr const char* kJobValidating = "validating";
inline constexpr const char* kJobInProgress = "in_progress";
inline constexpr const char* kJobFinalizing = "finalizing";
inline constexpr const char* kJobCompleted = "completed";
inline constexpr const char* kJobFailed = "failed";
inline constexpr const char* kJobCancelling = "cancelling";
inline constexpr const char* kJobCancelled = "cancelled";
bool IsTerminalJobStatus(const std::string& status);

struct JobRecord {
  std::string id;
  std::string request_id;       // "" = none
  std::string status = kJobValidating;
  std::string model;
  std::string task;             // the job's default task
  std::string options_json = "{}";  // everything else the job was created with
  int64_t created_at = 0, in_progress_at = 0, finalizing_at = 0, completed_at = 0;
  int64_t failed_at = 0, cancelling_at = 0, cancelled_at = 0;  // unix seconds, 0 = not yet
  std::string error;
  // Derived from the items on every read:
  int64_t total = 0, completed = 0, failed = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
};

enum class ItemState { kPending = 0, kDone = 1, kFailed = 2 };

struct ItemRecord {
  std::string job_id;
  int64_t idx = 0;              // 0-based, input order
  int64_t line = 0;             // 1-based input line number
  std::string custom_id;        // "" when the line has none
  std::string input;            // the raw input line
  ItemState state = ItemState::kPending;
  int32_t failures = 0;
  std::string plan_json;        // "" until planned
  std::string result;           // the result record (one JSON line, no newline)
  int64_t prompt_tokens = 0, generated_tokens = 0;
};

class JobStore {
 public:
  // Opens or creates DIR/mesa.db (DIR is created, mode 0700).
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& dir);
  ~JobStore();

  // Creates the job and its items in one transaction. When `job.request_id` is set and
  // a job with it exists, nothing is written and that job is returned with
  // created = false. Fields are stored as given, except that created_at = 0 means now
  // and every item is stored under job.id (ItemRecord::job_id is ignored).
  // ALREADY_EXISTS when job.id is taken; INVALID_ARGUMENT for an unknown status.
  struct Created { JobRecord job; bool created = false; };
  absl::StatusOr<Created> CreateJob(const JobRecord& job, const std::vector<ItemRecord>& items);

  // Derived counts: completed = items in kDone, failed = items in kFailed.
  absl::StatusOr<JobRecord> GetJob(const std::string& id);        // NOT_FOUND
  // The job's status and error alone (NOT_FOUND): constant time, where GetJob's counts
  // read every item of the job.
  struct JobStatusRecord {
    std::string status;
    std::string error;
  };
  absl::StatusOr<JobStatusRecord> GetJobStatus(const std::string& id);
  absl::StatusOr<std::vector<JobRecord>> ListJobs(int limit);     // newest first; 0 = all
  absl::StatusOr<std::vector<std::string>> UnfinishedJobIds();  // status not terminal, oldest first
  // Number of jobs in each status (statuses without jobs absent), for the metrics.
  // `wait` false: UNAVAILABLE at once when another call holds the store (a large job
  // being written), instead of waiting for it.
  absl::StatusOr<std::vector<std::pair<std::string, int64_t>>> CountJobsByStatus(bool wait = true);
  absl::StatusOr<std::vector<ItemRecord>> Items(const std::string& job_id);  // idx order; NOT_FOUND
  // The items from `from_idx` on that are settled (done or failed), idx order, without
  // their input and plan (empty): what a follower of a job's results reads on every
  // change (from its first item not yet seen, so that a long job costs it the items in
  // flight per change, not all settled ones).
  absl::StatusOr<std::vector<ItemRecord>> SettledItems(const std::string& job_id, int64_t from_idx = 0);
  absl::StatusOr<ItemRecord> Item(const std::string& job_id, int64_t idx);

  // Sets the status and stamps the matching *_at field (now, unix seconds) if unset;
  // `error` replaces the stored one only when non-empty. INVALID_ARGUMENT for a status
  // not listed above, NOT_FOUND for an unknown job (Set* below: an unknown item).
  absl::Status SetJobStatus(const std::string& id, const std::string& status,
                            const std::string& error = "");
  absl::Status SetPlan(const std::string& job_id, int64_t idx, const std::string& plan_json);
  absl::Status SetFailures(const std::string& job_id, int64_t idx, int32_t failures);
  // Commits an item's result once (kDone or kFailed) with synchronous=FULL; returns
  // false, changing nothing, when the item already has one. NOT_FOUND for an unknown item.
  absl::StatusOr<bool> CommitResult(const std::string& job_id, int64_t idx, ItemState state,
                                    const std::string& result, int64_t prompt_tokens,
                                    int64_t generated_tokens);

  // Holds the store as a long write would (tests of callers that must not wait on it).
  std::unique_lock<std::mutex> LockForTest() { return std::unique_lock<std::mutex>(mu_); }

 private:
  explicit JobStore(sqlite3* db);
  std::mutex mu_;
  sqlite3* db_;
};

}  // namespace mesa::coord
