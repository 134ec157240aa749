// The coordinator's scheduling: a deterministic state machine with no threads, sockets
// or clocks of its own. Events go in (a job added or cancelled, a worker joined, beat,
// drained or left, a task succeeded or failed, time passed); actions come out (run a
// task on a worker, cancel a task, release K/V, an item failed for good). The
// coordinator core feeds it from gRPC and executes its actions; tests feed it with a
// fake clock and random schedules of faults (coordinator/scheduler_sim_test.cc).
//
// Items: an item is one document. An unchunked item, or one placed `whole`, is one
// final task that computes everything on one worker. A `spread` item is one chunk task
// per middle chunk (any workers, in parallel), then one final task on the worker that
// holds the most of its K/V bytes, which gathers the others' chunks.
// Each worker runs one task at a time. Every dispatch gets a fresh per-item `attempt`
// number, so K/V keys (job, item, chunk, attempt) never repeat: an item's first attempt
// in a Scheduler is max(failures * 1000, last_attempt) + 1 (ItemSpec), then +1 for each
// dispatch; a store that keeps the highest attempt it saw makes them unique across
// coordinator restarts too.
// Failures: a failed task (error, deadline, its worker died) counts one failure for its
// item; at max_attempts failures the item fails for good (ItemFailed). A chunk task
// refused with RESOURCE_EXHAUSTED is placed elsewhere without counting. Chunks held by
// a worker that died are recomputed (not counted). A task whose deadline expired is
// retried elsewhere, but its worker stays busy until that task's outcome arrives.
// Not thread-safe: the caller serializes calls.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"

namespace mesa::coord {

enum class Placement { kAuto, kWhole, kSpread };
const char* PlacementName(Placement p);
bool ParsePlacement(const std::string& name, Placement* out);

struct SchedulerOptions {
  Placement placement = Placement::kAuto;
  int max_attempts = 3;
  int64_t heartbeat_timeout_ms = 15000;  // a worker silent this long is dead
  // Task deadline: base + per_token * tokens the task computes (prompt and generation).
  int64_t deadline_base_ms = 120000;
  double deadline_ms_per_token = 20.0;
};

struct ItemSpec {
  std::string job_id;
  int64_t item = 0;                     // index in the job
  int32_t n_middle = 0;                 // middle chunks in the plan; 0 = not chunked
  int64_t prompt_tokens = 0;
  int64_t max_new_tokens = 0;
  std::vector<int64_t> chunk_kv_bytes;  // size n_middle: K/V bytes each chunk task keeps
  std::vector<int64_t> chunk_tokens;    // size n_middle: tokens each chunk task computes
  int32_t failures = 0;                 // failures counted before (from the store)
  int32_t last_attempt = 0;             // highest attempt dispatched before (from the store)
};

enum class TaskKind { kChunk, kFinal };

struct SourceRef {           // where a final task finds one middle chunk
  int32_t chunk = 0;
  std::string worker;        // holder's worker id (may be the final worker itself)
  int32_t attempt = 0;       // the attempt of the chunk task that computed it
};

struct Dispatch {
  uint64_t task = 0;
  std::string worker;
  TaskKind kind = TaskKind::kFinal;
  std::string job_id;
  int64_t item = 0;
  int32_t chunk = -1;        // kChunk: middle chunk index
  int32_t attempt = 0;
  int64_t deadline_ms = 0;   // absolute, on the scheduler's clock
  bool whole = false;        // kFinal: compute every chunk here (sources empty)
  std::vector<SourceRef> sources;  // kFinal spread: one per middle chunk, in order
};
struct CancelTask {          // stop an in-flight task (job cancelled, or deadline passed)
  uint64_t task = 0;
  std::string worker;
};
struct ReleaseKv {           // free K/V of an item on a worker (attempt -1: all)
  std::string worker;
  std::string job_id;
  int64_t item = 0;
  int32_t attempt = -1;
};
struct ItemFailed {          // the item has failed for good
  std::string job_id;
  int64_t item = 0;
  std::string error;
};
using Action = std::variant<Dispatch, CancelTask, ReleaseKv, ItemFailed>;

struct WorkerCaps {
  int64_t kv_budget_bytes = 0;  // 0 = no limit
};

class Scheduler {
 public:
  Scheduler(SchedulerOptions options, int64_t now_ms);

  // Items are queued in the order given; jobs share workers round-robin.
  void AddJob(const std::string& job_id, const std::vector<ItemSpec>& items, int64_t now_ms);
  void CancelJob(const std::string& job_id, int64_t now_ms);
  void WorkerJoined(const std::string& worker, WorkerCaps caps, int64_t now_ms);
  void WorkerHeartbeat(const std::string& worker, int64_t now_ms);
  void WorkerDraining(const std::string& worker, int64_t now_ms);  // no new tasks
  void WorkerLeft(const std::string& worker, int64_t now_ms);      // gone: tasks and K/V lost
  // Outcomes of dispatched tasks; unknown or stale task ids are ignored except that
  // they free their worker. Returns true when a final success completes its item (the
  // caller has committed the result; a second success for the same item returns false).
  bool TaskSucceeded(uint64_t task, int64_t now_ms);
  void TaskFailed(uint64_t task, const absl::Status& status, int64_t now_ms);
  void Tick(int64_t now_ms);  // heartbeat timeouts and task deadlines

  // The actions produced since the last call, in order.
  std::vector<Action> TakeActions();

  // Observers (tests, metrics, status).
  struct Stats {
    int64_t items_queued = 0, items_running = 0, items_done = 0, items_failed = 0;
    int64_t tasks_in_flight = 0, workers = 0, workers_idle = 0;
    int64_t kv_bytes_held = 0;  // by the scheduler's accounting
  };
  Stats stats() const;
  bool JobFinished(const std::string& job_id) const;  // every item done, failed or cancelled
  int64_t next_deadline_ms() const;                   // earliest timer; INT64_MAX when none
  // Failures counted for an item so far (ItemSpec.failures included), for the store to
  // persist; -1 for an unknown item.
  int32_t ItemFailures(const std::string& job_id, int64_t item) const;
  // A draining worker with no task in flight and no K/V held: safe to let go.
  // Whether the worker is known (joined and not left or declared dead).
  bool HasWorker(const std::string& worker) const;
  bool WorkerDrained(const std::string& worker) const;

 private:
  // Implementation state lives in scheduler.cc (private structs declared there).
  struct State;
  std::shared_ptr<State> s_;
};

}  // namespace mesa::coord
