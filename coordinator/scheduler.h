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
// K/V prefetch: a spread item's final worker F is designated when the item starts (the
// worker that starts it). When one of its chunks succeeds on another worker W while
// other chunks are still to be computed, MoveKv asks F to copy that chunk's K/V from W
// into its own store (same key), overlapping the transfer with the remaining compute;
// KvMoved makes F the chunk's holder and releases W's copy; KvMoveFailed changes
// nothing (the final fetches the chunk from W). A move is not a task (no worker is
// busy for it); its bytes count on F from the start (a move that would not fit F's
// budget is not made) and on W until it succeeds. The final then goes to the biggest
// holder as before, normally F. A spread final consumes the chunks its own worker
// holds (each is dropped once laid into the final cache): when it fails or is given
// up, those chunks are recomputed (not counted beyond the final's own failure).
// Placement kAuto chooses per item when it starts, by a cost model fed with measured
// rates (TaskSucceeded's TaskStats): while queued items >= available workers (idle, or
// running a chunk task) both keep everyone busy, and the one with less work in
// worker-seconds wins (whole, with no transfer and no anchor recomputed per chunk,
// unless measured rates make chunks cheaper); otherwise the smaller estimated completion time of whole (all on one worker) vs
// spread (chunks over the item's share of the available workers, the K/V not on the
// final worker moved, then the final); spread regardless when the item's K/V fits no
// worker's budget. Deterministic: the estimates are a function of the events.
// Failures: a failed task (error, deadline, its worker died) counts one failure for its
// item; at max_attempts failures the item fails for good (ItemFailed). A chunk task
// refused with RESOURCE_EXHAUSTED is placed elsewhere without counting. Chunks held by
// a worker that died are recomputed (not counted). A task whose deadline expired is
// retried elsewhere, but its worker stays busy until that task's outcome arrives.
// Not thread-safe: the caller serializes calls.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
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
  // The cost model's priors (used until the first measurement of each kind) and the
  // weight of a new measurement in its exponentially weighted average.
  double prior_prefill_tokens_per_s = 1000;  // one worker computing prompt tokens
  double prior_decode_tokens_per_s = 20;
  double prior_transfer_bytes_per_s = 5e8;   // K/V fetched by a final (gRPC ~0.6 GB/s)
  double prior_task_overhead_s = 0.01;       // per task: dispatch, RPC, setup
  double cost_ewma_weight = 0.25;
};

struct ItemSpec {
  std::string job_id;
  int64_t item = 0;                     // index in the job
  int32_t n_middle = 0;                 // middle chunks in the plan; 0 = not chunked
  int64_t prompt_tokens = 0;
  int64_t max_new_tokens = 0;
  std::vector<int64_t> chunk_kv_bytes;  // size n_middle: K/V bytes each chunk task keeps
  std::vector<int64_t> chunk_tokens;    // size n_middle: tokens each chunk task computes
  int64_t final_tokens = 0;             // tokens a spread final computes (anchor + last
                                        // chunk); 0: estimated, prompt_tokens / (n_middle + 1)
  int32_t failures = 0;                 // failures counted before (from the store)
  int32_t last_attempt = 0;             // highest attempt dispatched before (from the store)
  std::optional<Placement> placement;   // the job's own choice; nullopt: SchedulerOptions'
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
struct MoveKv {              // copy a held chunk's K/V to the item's final worker
  std::string worker;        // destination: the item's final worker F
  std::string from;          // the chunk's holder W (where F fetches it)
  std::string job_id;
  int64_t item = 0;
  int32_t chunk = 0;
  int32_t attempt = 0;       // the chunk task's attempt: the K/V key, the same on F
};
using Action = std::variant<Dispatch, CancelTask, ReleaseKv, ItemFailed, MoveKv>;

struct WorkerCaps {
  int64_t kv_budget_bytes = 0;  // 0 = no limit
};

// What a successful task measured, as its worker reports it; zeros where unknown (no
// measurement is taken from them). Feeds the kAuto cost model.
struct TaskStats {
  int64_t tokens = 0;             // prompt tokens computed; 0: the scheduler's own count
                                  // (chunk: chunk_tokens; whole final: prompt_tokens;
                                  // spread final: final_tokens)
  double compute_s = 0;           // chunk: compute; final: prefill, K/V fetches included
  int64_t generated = 0;          // final: tokens decoded
  double decode_s = 0;
  int64_t kv_bytes_received = 0;  // final: K/V fetched from other workers
  double kv_transfer_s = 0;       // time of those fetches (inside compute_s)
};

// The cost model's current estimates (per worker, one task at a time).
struct CostEstimates {
  double chunk_s_per_token = 0;    // chunk tasks' prompt compute
  double final_s_per_token = 0;    // finals' prompt compute (whole finals: every token)
  double decode_s_per_token = 0;
  double transfer_s_per_byte = 0;
  double task_overhead_s = 0;      // wall time beyond the reported compute, per task
  int64_t samples = 0;             // measurements taken so far
};

// kAuto's view of one item: estimated completion time whole and spread, when its chunks
// may use `workers` workers.
struct PlacementEstimate {
  double whole_s = 0;
  double spread_s = 0;
  int32_t spread_workers = 0;  // workers the chunks are estimated to run on
  int64_t kv_moved_bytes = 0;  // estimated K/V fetched by the spread final
  double spread_work_s = 0;    // spread's worker-seconds: every chunk, transfer, final
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
  // `stats` (optional) feeds the kAuto cost model; the task's wall time (dispatch to
  // now_ms) beyond its reported compute counts as per-task overhead.
  bool TaskSucceeded(uint64_t task, int64_t now_ms, const TaskStats& stats = {});
  void TaskFailed(uint64_t task, const absl::Status& status, int64_t now_ms);
  // The item's result was committed by a final task the scheduler no longer counts (its
  // worker left or was declared dead before the success arrived, and the item was queued
  // again): the item is done. Its tasks still in flight are cancelled and its K/V
  // released. Returns true when this completed it; false for an unknown item or one
  // already settled.
  bool ItemCommitted(const std::string& job_id, int64_t item, int64_t now_ms);
  void Tick(int64_t now_ms);  // heartbeat timeouts and task deadlines
  // Outcomes of MoveKv actions (the key of the move: job, item, chunk, attempt). Unknown
  // moves are ignored. A move that arrives too late to be used (its item ended, a final
  // was dispatched meanwhile, the chunk was lost or recomputed, F drains) releases the
  // copy on F; a failure releases whatever F may have kept and changes nothing else.
  void KvMoved(const std::string& job_id, int64_t item, int32_t chunk, int32_t attempt, int64_t now_ms);
  void KvMoveFailed(const std::string& job_id, int64_t item, int32_t chunk, int32_t attempt,
                    const absl::Status& status, int64_t now_ms);

  // The actions produced since the last call, in order.
  std::vector<Action> TakeActions();

  // Observers (tests, metrics, status).
  struct Stats {
    int64_t items_queued = 0, items_running = 0, items_done = 0, items_failed = 0;
    int64_t tasks_in_flight = 0, workers = 0, workers_idle = 0;
    int64_t kv_bytes_held = 0;  // by the scheduler's accounting (moves in flight count
                                // on both their source and their destination)
    int64_t moves_in_flight = 0;  // MoveKv actions whose outcome has not arrived
    int64_t kv_moves = 0;         // moves that made their destination the holder
  };
  Stats stats() const;
  // One known worker as the scheduler sees it (`mesa workers`).
  struct WorkerView {
    std::string worker;
    bool draining = false;
    int64_t kv_bytes_held = 0;    // by the scheduler's accounting (as Stats)
    int64_t kv_budget_bytes = 0;  // 0 = no limit
    int64_t last_beat_ms = 0;     // on the scheduler's clock
    // The task in flight, if any (task == 0: idle), including one the scheduler gave up
    // that the worker has not answered yet.
    uint64_t task = 0;
    TaskKind kind = TaskKind::kFinal;
    std::string job_id;
    int64_t item = 0;
    int32_t chunk = -1;
    int32_t attempt = 0;
    bool whole = false;
    int64_t dispatched_ms = 0;
  };
  std::vector<WorkerView> Workers() const;  // by worker id
  bool JobFinished(const std::string& job_id) const;  // every item done, failed or cancelled
  int64_t next_deadline_ms() const;                   // earliest timer; INT64_MAX when none
  // Failures counted for an item so far (ItemSpec.failures included), for the store to
  // persist; -1 for an unknown item.
  int32_t ItemFailures(const std::string& job_id, int64_t item) const;
  // A draining worker with no task in flight and no K/V held: safe to let go.
  // Whether the worker is known (joined and not left or declared dead).
  bool HasWorker(const std::string& worker) const;
  bool WorkerDrained(const std::string& worker) const;
  // The cost model (kAuto): current estimates, and the estimate for an item.
  CostEstimates costs() const;
  PlacementEstimate Estimate(const ItemSpec& item, int64_t workers) const;

 private:
  // Implementation state lives in scheduler.cc (private structs declared there).
  struct State;
  std::shared_ptr<State> s_;
};

}  // namespace mesa::coord
