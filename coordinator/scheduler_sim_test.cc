// Randomized simulation of the scheduler against simulated workers on a fake clock, in
// the manner of FoundationDB's simulation: per seed, random jobs, placements, worker
// speeds and K/V budgets, and random faults:
//  - worker deaths, announced (WorkerLeft) or silent (no beats, no outcomes: found by the
//    heartbeat timeout), followed by new workers joining under new ids;
//  - slow workers (tasks pass their deadline) and hung tasks (no outcome until cancelled;
//    the outcome, CANCELLED, comes later);
//  - lost K/V transfers: a final whose source is gone, or at random, fails UNAVAILABLE;
//  - RESOURCE_EXHAUSTED refusals: at random, or by a worker whose real room is smaller
//    than the budget it reported;
//  - K/V moves (MoveKv): each takes simulated time and ends KvMoved or KvMoveFailed (a
//    refusal for room, a lost transfer at random, a source that no longer holds the
//    chunk, a destination that died or went silent); at random the source or the
//    destination is killed while the move runs; a spread final consumes the chunks its
//    own worker holds;
//  - draining (the worker leaves once WorkerDrained), job cancels, and coordinator
//    restarts: the Scheduler is replaced by a new one given the unfinished items with the
//    failures and last attempts the store would have kept, and the workers drop their
//    K/V and tasks as real workers do when they register again.
// Invariants, checked after every event and at the end of each seed:
//  - every item of a job not cancelled ends exactly once: one completing final success
//    or one ItemFailed, never both, never twice; nothing ends in a cancelled job;
//  - no dispatch to a worker that left or was declared dead, to a draining or a busy
//    worker; no cancel or release for a worker the scheduler should not know; no cancel
//    of a task the worker does not run;
//  - (job, item, attempt) never repeats, across restarts too;
//  - stats match the simulation: items queued + running, done, failed, workers, idle
//    workers, tasks in flight, and K/V bytes (the scheduler's accounting equals what the
//    registered workers really hold, a move's bytes on its destination from its start,
//    every stray chunk released at once); no move to a gone, draining or busy-with-
//    itself worker, or of a chunk its source does not hold; a chunk attempt moves once;
//  - at the end: every job finished, nothing in flight (tasks or moves), no K/V held
//    anywhere.
// Successes report TaskStats (compute from the worker's speed, a share of a spread
// final's time as K/V transfer), so kAuto's cost model learns as the seed runs.
// Seeds where faults are off must complete every item that fits the workers' budgets.
// Replay one seed: MESA_SCHED_SIM_SEED=<seed> scheduler_sim_test.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "coordinator/scheduler.h"

namespace mesa::coord {
namespace {

using KvKey = std::tuple<std::string, int64_t, int32_t, int32_t>;  // job, item, chunk, attempt

constexpr int kSeeds = 3000;
constexpr int64_t kBeatMs = 1000;
constexpr int64_t kFaultWindowMs = 40000;   // faults happen before this; then the run settles
constexpr int64_t kGiveUpMs = 5'000'000;    // a seed still running here has lost liveness

enum class End { kOpen, kSucceeded, kFailed, kCancelled };

struct SimWorker {
  int64_t budget = 0;    // reported to the scheduler; 0 = no limit
  int64_t capacity = 0;  // real room for K/V; 0 = no limit
  double ms_per_token = 1.0;
  bool registered = true;  // known to the current scheduler (not left, not declared dead)
  bool silent = false;     // died without a word: no beats, no outcomes
  bool draining = false;
  bool hung = false;       // the current task gives no outcome until cancelled
  bool cancelled = false;  // the scheduler cancelled the current task
  int64_t last_beat = 0;
  std::map<KvKey, int64_t> kv;
  std::map<KvKey, int64_t> incoming;  // moves in flight to this worker (room taken at once)
  uint64_t task = 0;  // running; 0 = idle
  uint64_t run = 0;   // bumped whenever the running task changes: older timers are void
  Dispatch current;
  int64_t current_ms = 0;  // the current task's simulated duration

  int64_t Held() const {
    int64_t sum = 0;
    for (const auto& [key, bytes] : kv) sum += bytes;
    for (const auto& [key, bytes] : incoming) sum += bytes;
    return sum;
  }
};

struct SimItem {
  ItemSpec spec;
  End end = End::kOpen;
  int32_t last_attempt = 0;
};

struct SimJob {
  std::vector<SimItem> items;
  bool added = false;
  bool cancelled = false;
  int cancelled_in_life = -1;
};

struct Profile {
  bool faults = false;
  double p_error = 0, p_lost = 0, p_refuse = 0, p_hang = 0, p_slow = 0;
  int fault_events = 0;
  bool budgets = false;
  bool tight = false;  // some workers have less room than they report
};

// How often each path was taken, over all seeds: a simulation that stops reaching a
// path fails instead of passing quietly.
struct Coverage {
  std::map<std::string, int64_t> n;
  void Add(const std::string& what) { ++n[what]; }
};

class Sim {
 public:
  Sim(uint64_t seed, Coverage* coverage) : rng_(seed), cov_(coverage) {}

  int64_t events() const { return static_cast<int64_t>(next_seq_); }

  // Runs the seed; returns the first violated invariant, "" when none.
  std::string Run() {
    Setup();
    int64_t last_tick = -1;
    while (error_.empty()) {
      if (Finished()) break;
      if (now_ > kGiveUpMs) {
        Fail("no progress: items still open");
        break;
      }
      const int64_t next_event = events_.empty() ? INT64_MAX : events_.begin()->first.first;
      const int64_t timer = sched_->next_deadline_ms();
      if (timer == INT64_MAX && next_event == INT64_MAX) {
        Fail("nothing left to happen, items open");
        break;
      }
      if (timer <= next_event) {
        if (timer <= now_ && last_tick == now_) {
          Fail("Tick did not clear its timer");
          break;
        }
        now_ = std::max(now_, timer);
        last_tick = now_;
        sched_->Tick(now_);
        // Its actions were issued in order with the deaths it found (a release to a worker
        // found dead later in the same Tick came while it was still known).
        Apply();
        DeclareSilentDead();
      } else {
        auto it = events_.begin();
        std::function<void()> f = std::move(it->second);
        events_.erase(it);
        now_ = next_event;
        f();
      }
      Check();
    }
    if (error_.empty()) CheckEnd();
    return error_;
  }

 private:
  // ------------------------------------------------------------------ setup

  void Setup() {
    opt_.placement = std::vector<Placement>{Placement::kAuto, Placement::kWhole, Placement::kSpread}[Int(0, 2)];
    opt_.max_attempts = static_cast<int>(Int(1, 4));
    opt_.heartbeat_timeout_ms = 3 * kBeatMs;
    opt_.deadline_base_ms = 2000;
    opt_.deadline_ms_per_token = 3.0;
    profile_.faults = Int(0, 3) != 0;
    profile_.budgets = Int(0, 1) == 1;
    if (profile_.faults) {
      profile_.p_error = Real(0, 0.1);
      profile_.p_lost = Real(0, 0.1);
      profile_.p_refuse = Real(0, 0.1);
      profile_.p_hang = Real(0, 0.05);
      profile_.p_slow = Real(0, 0.3);
      profile_.fault_events = static_cast<int>(Int(0, 8));
      profile_.tight = profile_.budgets && Int(0, 1) == 1;
    }
    sched_ = std::make_unique<Scheduler>(opt_, now_);
    for (int64_t n = Int(1, 5); n > 0; --n) AddWorker();
    for (int64_t j = Int(1, 4); j > 0; --j) {
      const std::string id = "job" + std::to_string(jobs_.size());
      SimJob& job = jobs_[id];
      const int64_t n_items = Int(1, 6);
      for (int64_t i = 0; i < n_items; ++i) {
        SimItem item;
        item.spec.job_id = id;
        item.spec.item = i;
        item.spec.n_middle = static_cast<int32_t>(Int(0, 4));
        item.spec.prompt_tokens = Int(50, 300);
        for (int32_t c = 0; c < item.spec.n_middle; ++c) {
          const int64_t tokens = Int(100, 400);
          item.spec.chunk_tokens.push_back(tokens);
          item.spec.chunk_kv_bytes.push_back(tokens * 1000);
          item.spec.prompt_tokens += tokens;
        }
        item.spec.max_new_tokens = Int(10, 100);
        job.items.push_back(std::move(item));
      }
      At(Int(0, 1) == 0 ? 0 : Int(0, kFaultWindowMs), [this, id] { AddJob(id); });
    }
    for (int f = 0; f < profile_.fault_events; ++f) At(Int(1, kFaultWindowMs), [this] { Fault(); });
    At(kFaultWindowMs, [this] { EnsureWorkers(); });
  }

  void AddWorker() {
    const std::string id = "w" + std::to_string(next_worker_++);
    SimWorker& w = workers_[id];
    if (profile_.budgets && Int(0, 4) != 0) w.budget = Int(600, 2500) * 1000;
    w.capacity = w.budget;
    if (profile_.tight && Int(0, 2) == 0) w.capacity = w.budget == 0 ? 1'500'000 : w.budget * 6 / 10;
    w.ms_per_token = Chance(profile_.p_slow) ? Real(10, 20) : Real(0.3, 1.5);
    w.last_beat = now_;
    sched_->WorkerJoined(id, WorkerCaps{w.budget}, now_);
    Apply();
    At(now_ + kBeatMs, [this, id] { Beat(id); });
  }

  void AddJob(const std::string& id) {
    SimJob& job = jobs_.at(id);
    job.added = true;
    std::vector<ItemSpec> specs;
    for (const SimItem& item : job.items) specs.push_back(item.spec);
    sched_->AddJob(id, specs, now_);
    Apply();
  }

  void EnsureWorkers() {
    int usable = 0;
    for (const auto& [id, w] : workers_) usable += (w.registered && !w.silent && !w.draining) ? 1 : 0;
    for (; usable < 2; ++usable) AddWorker();
  }

  // ----------------------------------------------------------------- faults

  void Fault() {
    std::vector<std::string> alive;
    for (const auto& [id, w] : workers_) {
      if (w.registered && !w.silent) alive.push_back(id);
    }
    switch (Int(0, 6)) {
      case 0:  // announced death, a replacement joins later
      case 1:  // silent death
        if (alive.empty()) break;
        Kill(alive[Int(0, alive.size() - 1)], /*silent=*/Int(0, 1) == 1);
        At(now_ + Int(100, 5000), [this] { AddWorker(); });
        break;
      case 2:
        if (alive.empty()) break;
        Drain(alive[Int(0, alive.size() - 1)]);
        break;
      case 3: {
        std::vector<std::string> open;
        for (const auto& [id, job] : jobs_) {
          if (job.added && !job.cancelled) open.push_back(id);
        }
        if (open.empty()) break;
        CancelJob(open[Int(0, open.size() - 1)]);
        break;
      }
      case 4:
        Restart();
        break;
      default:
        AddWorker();
        break;
    }
  }

  void Kill(const std::string& id, bool silent) {
    SimWorker& w = workers_.at(id);
    cov_->Add(silent ? "silent death" : "announced death");
    if (silent) {
      w.silent = true;  // the scheduler keeps it until the heartbeat timeout
      return;
    }
    // A draining worker's deregistration can overtake its last result: the final's
    // success arrives after WorkerLeft, and the coordinator, having committed it, tells
    // the scheduler with ItemCommitted (coordinator_core.cc).
    const bool late_final = w.task != 0 && w.current.kind == TaskKind::kFinal && !w.hung && Chance(0.3);
    const Dispatch d = w.current;
    const uint64_t task = w.task;
    Forget(w);
    sched_->WorkerLeft(id, now_);
    Apply();
    if (late_final) {
      cov_->Add("final result after its worker left");
      if (sched_->TaskSucceeded(task, now_)) Fail("a success of a task written off completed an item");
      SimItem& item = ItemOf(d.job_id, d.item);
      const bool open = item.end == End::kOpen && !jobs_.at(d.job_id).cancelled;
      // The store takes the first commit: only an open item gets one.
      const bool settled = open && sched_->ItemCommitted(d.job_id, d.item, now_);
      if (open != settled) Fail("a committed late result did not settle its open item");
      if (settled) {
        item.end = End::kSucceeded;
        ++done_in_life_;
      }
      Apply();
    }
  }

  // The worker is gone for the scheduler: its task and K/V with it.
  void Forget(SimWorker& w) {
    w.registered = false;
    w.kv.clear();
    w.incoming.clear();
    w.task = 0;
    ++w.run;
  }

  void Drain(const std::string& id) {
    workers_.at(id).draining = true;
    sched_->WorkerDraining(id, now_);
    Apply();
  }

  void CancelJob(const std::string& id) {
    SimJob& job = jobs_.at(id);
    cov_->Add("job cancelled");
    job.cancelled = true;
    job.cancelled_in_life = life_;
    for (SimItem& item : job.items) {
      if (item.end == End::kOpen) item.end = End::kCancelled;
    }
    sched_->CancelJob(id, now_);
    Apply();
  }

  // A new coordinator: the store's view of unfinished items goes to a new Scheduler;
  // the workers register again and drop their K/V and tasks.
  void Restart() {
    cov_->Add("coordinator restart");
    std::vector<std::pair<std::string, std::vector<ItemSpec>>> carry;
    for (auto& [id, job] : jobs_) {
      if (!job.added || job.cancelled) continue;
      std::vector<ItemSpec> specs;
      for (const SimItem& item : job.items) {
        if (item.end != End::kOpen) continue;
        ItemSpec spec = item.spec;
        spec.failures = sched_->ItemFailures(id, spec.item);
        if (spec.failures < 0) Fail("ItemFailures unknown for an open item");
        spec.last_attempt = item.last_attempt;
        specs.push_back(std::move(spec));
      }
      carry.emplace_back(id, std::move(specs));
    }
    sched_ = std::make_unique<Scheduler>(opt_, now_);
    ++life_;
    moving_.clear();  // the old coordinator's moves: nobody hears of them
    done_in_life_ = failed_in_life_ = 0;
    for (auto& [id, w] : workers_) {
      if (!w.registered) continue;
      const bool silent = w.silent;
      Forget(w);
      if (silent) continue;
      w.registered = true;
      w.last_beat = now_;
      sched_->WorkerJoined(id, WorkerCaps{w.budget}, now_);
      if (w.draining) sched_->WorkerDraining(id, now_);
      Apply();
    }
    for (const auto& [id, specs] : carry) {
      sched_->AddJob(id, specs, now_);
      Apply();
    }
  }

  // ------------------------------------------------------------------ workers

  void Beat(const std::string& id) {
    SimWorker& w = workers_.at(id);
    if (!w.registered || w.silent) return;
    if (w.draining && sched_->WorkerDrained(id)) {
      if (!w.kv.empty()) Fail("drained worker " + id + " still holds K/V");
      cov_->Add("drained worker left");
      Forget(w);
      sched_->WorkerLeft(id, now_);
      Apply();
      if (now_ < kFaultWindowMs) At(now_ + Int(100, 3000), [this] { AddWorker(); });
      return;
    }
    w.last_beat = now_;
    sched_->WorkerHeartbeat(id, now_);
    At(now_ + kBeatMs, [this, id] { Beat(id); });
  }

  // Silent workers past the heartbeat timeout, as the scheduler's Tick just saw them.
  void DeclareSilentDead() {
    for (auto& [id, w] : workers_) {
      if (w.registered && w.silent && now_ - w.last_beat > opt_.heartbeat_timeout_ms) Forget(w);
    }
  }

  SimItem& ItemOf(const std::string& job, int64_t item) { return jobs_.at(job).items.at(item); }

  void OnDispatch(const Dispatch& d) {
    auto it = workers_.find(d.worker);
    if (it == workers_.end() || !it->second.registered) return Fail("dispatch to gone worker " + d.worker);
    SimWorker& w = it->second;
    if (w.draining) return Fail("dispatch to draining worker " + d.worker);
    if (w.task != 0) return Fail("dispatch to busy worker " + d.worker);
    const SimJob& job = jobs_.at(d.job_id);
    SimItem& item = ItemOf(d.job_id, d.item);
    if (job.cancelled || item.end != End::kOpen) return Fail("dispatch for an ended item");
    if (!attempts_.insert({d.job_id, d.item, d.attempt}).second) {
      return Fail("attempt " + std::to_string(d.attempt) + " repeats for " + d.job_id + "/" + std::to_string(d.item));
    }
    item.last_attempt = std::max(item.last_attempt, d.attempt);
    int64_t tokens = item.spec.prompt_tokens + item.spec.max_new_tokens;
    if (d.kind == TaskKind::kChunk) {
      if (d.chunk < 0 || d.chunk >= item.spec.n_middle) return Fail("bad chunk index");
      tokens = item.spec.chunk_tokens[d.chunk];
    } else if (!d.whole) {
      if (d.sources.size() != static_cast<size_t>(item.spec.n_middle)) return Fail("final lacks sources");
      for (size_t c = 0; c < d.sources.size(); ++c) {
        if (d.sources[c].chunk != static_cast<int32_t>(c)) return Fail("sources out of order");
      }
    } else if (!d.sources.empty()) {
      return Fail("whole final with sources");
    }
    w.task = d.task;
    w.current = d;
    w.hung = now_ < kFaultWindowMs && Chance(profile_.p_hang);
    w.cancelled = false;
    const uint64_t run = ++w.run;
    if (w.silent || w.hung) return;
    const int64_t duration = 1 + static_cast<int64_t>(static_cast<double>(tokens) * w.ms_per_token * Real(0.8, 1.2));
    w.current_ms = duration;
    At(now_ + duration, [this, id = d.worker, run, life = life_] { Complete(id, run, life); });
  }

  bool Has(const std::string& holder, const KvKey& key) {
    auto it = workers_.find(holder);
    return it != workers_.end() && it->second.registered && !it->second.silent && it->second.kv.count(key);
  }

  void Complete(const std::string& id, uint64_t run, int life) {
    SimWorker& w = workers_.at(id);
    if (life != life_ || w.run != run || !w.registered || w.silent) return;
    const Dispatch d = w.current;
    const SimItem& item = ItemOf(d.job_id, d.item);
    const bool faulty = now_ < kFaultWindowMs;
    absl::Status status;
    if (d.kind == TaskKind::kChunk) {
      const int64_t bytes = item.spec.chunk_kv_bytes[d.chunk];
      if ((faulty && Chance(profile_.p_refuse)) || (w.capacity > 0 && w.Held() + bytes > w.capacity)) {
        status = absl::ResourceExhaustedError("no room for chunk K/V");
      } else if (faulty && Chance(profile_.p_error)) {
        status = absl::InternalError("chunk crashed");
      } else {
        w.kv[KvKey{d.job_id, d.item, d.chunk, d.attempt}] = bytes;
      }
    } else {
      for (const SourceRef& s : d.sources) {
        if (!Has(s.worker, KvKey{d.job_id, d.item, s.chunk, s.attempt})) {
          status = absl::UnavailableError("source chunk missing");
        }
      }
      if (!status.ok()) cov_->Add("final source missing");
      if (status.ok() && !d.whole && faulty && Chance(profile_.p_lost)) {
        status = absl::UnavailableError("transfer lost");
      }
      if (status.ok() && faulty && Chance(profile_.p_error)) status = absl::InternalError("final crashed");
      // The final lays each chunk its own worker holds into its cache and drops it.
      for (const SourceRef& s : d.sources) {
        if (s.worker != d.worker) continue;
        const KvKey key{d.job_id, d.item, s.chunk, s.attempt};
        if (status.ok() && moved_.count(key)) cov_->Add("spread final used moved K/V");
        w.kv.erase(key);
      }
    }
    w.task = 0;
    ++w.run;
    cov_->Add(std::string(d.kind == TaskKind::kChunk ? "chunk " : d.whole ? "whole final " : "spread final ") +
              (status.ok() ? "succeeded" : std::string(absl::StatusCodeToString(status.code()))));
    if (!status.ok()) {
      sched_->TaskFailed(d.task, status, now_);
      Apply();
      return;
    }
    if (w.cancelled) cov_->Add(d.kind == TaskKind::kChunk ? "late chunk success" : "late final success");
    TaskStats stats;
    stats.compute_s = static_cast<double>(w.current_ms) / 1000.0;
    if (d.kind == TaskKind::kFinal && !d.whole) {
      stats.kv_bytes_received = 0;
      for (const SourceRef& s : d.sources) {
        if (s.worker != d.worker) stats.kv_bytes_received += item.spec.chunk_kv_bytes[s.chunk];
      }
      if (stats.kv_bytes_received > 0) stats.kv_transfer_s = stats.compute_s / 4;
    }
    if (d.kind == TaskKind::kFinal) {
      stats.generated = item.spec.max_new_tokens;
      stats.decode_s = stats.compute_s / 5;
      stats.compute_s -= stats.decode_s;
    }
    const bool completed = sched_->TaskSucceeded(d.task, now_, stats);
    const bool open = item.end == End::kOpen && !jobs_.at(d.job_id).cancelled;
    if (d.kind == TaskKind::kChunk && completed) Fail("a chunk success completed an item");
    if (d.kind == TaskKind::kFinal && completed != open) {
      Fail(std::string("final success ") + (completed ? "completed an ended item" : "left an open item open"));
    }
    if (completed) {
      ItemOf(d.job_id, d.item).end = End::kSucceeded;
      ++done_in_life_;
    }
    Apply();
  }

  void OnCancel(const CancelTask& c) {
    auto it = workers_.find(c.worker);
    if (it == workers_.end() || !it->second.registered) return Fail("cancel to gone worker " + c.worker);
    SimWorker& w = it->second;
    if (w.task != c.task) return Fail("cancel of a task " + c.worker + " does not run");
    cov_->Add(w.hung ? "hung task cancelled" : "task cancelled");
    w.cancelled = true;
    if (w.silent) return;
    if (!w.hung && Chance(0.5)) return;  // it finishes anyway: a late outcome
    const uint64_t run = ++w.run;
    At(now_ + Int(1, 50), [this, id = c.worker, run, life = life_] {
      SimWorker& x = workers_.at(id);
      if (life != life_ || x.run != run || !x.registered || x.silent) return;
      const uint64_t task = x.task;
      x.task = 0;
      ++x.run;
      sched_->TaskFailed(task, absl::CancelledError("cancelled"), now_);
      Apply();
    });
  }

  void OnRelease(const ReleaseKv& r) {
    auto it = workers_.find(r.worker);
    if (it == workers_.end() || !it->second.registered) return Fail("release to gone worker " + r.worker);
    cov_->Add(r.attempt == -1 ? "item K/V released" : "unneeded chunk released");
    auto& kv = it->second.kv;
    for (auto k = kv.begin(); k != kv.end();) {
      const auto& [job, item, chunk, attempt] = k->first;
      const bool match = job == r.job_id && item == r.item && (r.attempt == -1 || attempt == r.attempt);
      k = match ? kv.erase(k) : std::next(k);
    }
  }

  void OnItemFailed(const ItemFailed& f) {
    SimItem& item = ItemOf(f.job_id, f.item);
    if (jobs_.at(f.job_id).cancelled) return Fail("ItemFailed in a cancelled job");
    if (item.end != End::kOpen) return Fail("ItemFailed for an ended item " + f.job_id + "/" + std::to_string(f.item));
    if (f.error.empty()) return Fail("ItemFailed without an error");
    // Without faults only K/V room can fail an item, and only where budgets bind.
    const bool no_room = profile_.budgets && f.error.rfind("RESOURCE_EXHAUSTED", 0) == 0;
    if (!profile_.faults && !no_room) return Fail("item failed without faults: " + f.error);
    cov_->Add(f.error.rfind("RESOURCE_EXHAUSTED", 0) == 0 ? "item failed: no room" : "item failed: attempts");
    item.end = End::kFailed;
    ++failed_in_life_;
  }

  // ------------------------------------------------------------------ moves

  struct SimMove {
    std::string dest, src;
    int64_t bytes = 0;
    bool refused = false;
  };

  void OnMove(const MoveKv& m) {
    auto it = workers_.find(m.worker);
    if (it == workers_.end() || !it->second.registered) return Fail("move to gone worker " + m.worker);
    if (it->second.draining) return Fail("move to draining worker " + m.worker);
    auto src = workers_.find(m.from);
    if (src == workers_.end() || !src->second.registered) return Fail("move from gone worker " + m.from);
    if (m.worker == m.from) return Fail("move to the chunk's own holder");
    const SimJob& job = jobs_.at(m.job_id);
    const SimItem& item = ItemOf(m.job_id, m.item);
    if (job.cancelled || item.end != End::kOpen) return Fail("move for an ended item");
    if (m.chunk < 0 || m.chunk >= item.spec.n_middle) return Fail("move of a bad chunk index");
    const KvKey key{m.job_id, m.item, m.chunk, m.attempt};
    if (!src->second.kv.count(key)) return Fail("move of a chunk its source does not hold");
    if (!moved_ever_.insert(key).second) return Fail("a chunk attempt moved twice");
    cov_->Add("move started");
    SimWorker& dst = it->second;
    SimMove mv{m.worker, m.from, item.spec.chunk_kv_bytes[m.chunk], false};
    mv.refused = (dst.capacity > 0 && dst.Held() + mv.bytes > dst.capacity) ||
                 (now_ < kFaultWindowMs && Chance(profile_.p_refuse));
    dst.incoming[key] = mv.bytes;
    moving_[key] = mv;
    const int64_t duration =
        mv.refused ? Int(1, 5) : 1 + static_cast<int64_t>(static_cast<double>(mv.bytes) * Real(0.0003, 0.003));
    if (profile_.faults && now_ < kFaultWindowMs && Chance(0.1)) {
      // Kill one end while the move runs (if it is still alive by then).
      const std::string victim = Int(0, 1) == 0 ? m.worker : m.from;
      At(now_ + duration / 2, [this, victim, life = life_] {
        if (life != life_) return;
        SimWorker& v = workers_.at(victim);
        if (!v.registered || v.silent) return;
        cov_->Add("move endpoint killed");
        Kill(victim, /*silent=*/Int(0, 1) == 1);
        At(now_ + Int(100, 3000), [this] { AddWorker(); });
      });
    }
    At(now_ + duration, [this, key, life = life_] { FinishMove(key, life); });
  }

  void FinishMove(const KvKey& key, int life) {
    if (life != life_) return;
    auto mit = moving_.find(key);
    if (mit == moving_.end()) return Fail("a move finished twice");
    const SimMove mv = mit->second;
    moving_.erase(mit);
    SimWorker& dst = workers_.at(mv.dest);
    dst.incoming.erase(key);  // already gone if the destination was forgotten
    const auto& [job, item, chunk, attempt] = key;
    absl::Status status;
    if (!dst.registered) {
      status = absl::UnavailableError("destination gone");
      cov_->Add("move destination gone");
    } else if (dst.silent) {
      status = absl::DeadlineExceededError("destination does not answer");
      cov_->Add("move destination gone");
    } else if (mv.refused) {
      status = absl::ResourceExhaustedError("no room for the moved chunk");
    } else if (!Has(mv.src, key)) {
      status = absl::AbortedError("source gone");
      cov_->Add("move source gone");
    } else if (now_ < kFaultWindowMs && Chance(profile_.p_lost)) {
      status = absl::AbortedError("transfer lost");
    }
    if (status.ok()) {
      dst.kv[key] = mv.bytes;
      moved_.insert(key);
      const int64_t before = sched_->stats().kv_moves;
      sched_->KvMoved(job, item, chunk, attempt, now_);
      cov_->Add(sched_->stats().kv_moves > before ? "move used" : "move arrived too late");
    } else {
      cov_->Add(std::string("move ") + absl::StatusCodeToString(status.code()));
      sched_->KvMoveFailed(job, item, chunk, attempt, status, now_);
    }
    Apply();
  }

  void Apply() {
    for (const Action& a : sched_->TakeActions()) {
      if (const auto* d = std::get_if<Dispatch>(&a)) OnDispatch(*d);
      if (const auto* c = std::get_if<CancelTask>(&a)) OnCancel(*c);
      if (const auto* r = std::get_if<ReleaseKv>(&a)) OnRelease(*r);
      if (const auto* f = std::get_if<ItemFailed>(&a)) OnItemFailed(*f);
      if (const auto* m = std::get_if<MoveKv>(&a)) OnMove(*m);
    }
  }

  // --------------------------------------------------------------- invariants

  void Check() {
    if (!error_.empty()) return;
    const Scheduler::Stats st = sched_->stats();
    int64_t open = 0;
    for (const auto& [id, job] : jobs_) {
      if (!job.added || job.cancelled) continue;
      for (const SimItem& item : job.items) open += item.end == End::kOpen ? 1 : 0;
    }
    int64_t workers = 0, idle = 0, busy = 0, kv = 0;
    for (const auto& [id, w] : workers_) {
      if (!w.registered) continue;
      ++workers;
      idle += (!w.draining && w.task == 0) ? 1 : 0;
      busy += w.task != 0 ? 1 : 0;
      kv += w.Held();
    }
    std::ostringstream diff;
    const int64_t listed = st.items_queued + st.items_running;
    if (listed != open) diff << " open " << listed << " vs " << open;
    if (st.items_done != done_in_life_) diff << " done " << st.items_done << " vs " << done_in_life_;
    if (st.items_failed != failed_in_life_) diff << " failed " << st.items_failed << " vs " << failed_in_life_;
    if (st.workers != workers) diff << " workers " << st.workers << " vs " << workers;
    if (st.workers_idle != idle) diff << " idle " << st.workers_idle << " vs " << idle;
    if (st.tasks_in_flight != busy) diff << " in flight " << st.tasks_in_flight << " vs " << busy;
    if (st.moves_in_flight > static_cast<int64_t>(moving_.size())) {
      diff << " moves " << st.moves_in_flight << " vs " << moving_.size();
    }
    if (st.kv_bytes_held != kv) diff << " kv " << st.kv_bytes_held << " vs " << kv;
    // The per-worker view (`mesa workers`) agrees with the workers themselves.
    const std::vector<Scheduler::WorkerView> views = sched_->Workers();
    if (static_cast<int64_t>(views.size()) != workers) diff << " views " << views.size() << " vs " << workers;
    for (const Scheduler::WorkerView& v : views) {
      auto it = workers_.find(v.worker);
      if (it == workers_.end() || !it->second.registered) {
        diff << " view of unknown worker " << v.worker;
        continue;
      }
      const SimWorker& w = it->second;
      if (v.task != w.task) diff << " " << v.worker << " task " << v.task << " vs " << w.task;
      if (v.draining != w.draining) diff << " " << v.worker << " draining " << v.draining;
      if (v.kv_bytes_held != w.Held()) diff << " " << v.worker << " kv " << v.kv_bytes_held << " vs " << w.Held();
      if (v.task != 0 && w.task == v.task &&
          (v.job_id != w.current.job_id || v.item != w.current.item || v.kind != w.current.kind ||
           v.chunk != w.current.chunk || v.attempt != w.current.attempt)) {
        diff << " " << v.worker << " task " << v.task << " described as " << v.job_id << "/" << v.item << "/"
             << v.chunk << "/" << v.attempt;
      }
    }
    if (!diff.str().empty()) Fail("stats differ:" + diff.str());
  }

  bool Finished() const {
    for (const auto& [id, job] : jobs_) {
      if (!job.added) return false;
      if (job.cancelled) continue;
      for (const SimItem& item : job.items) {
        if (item.end == End::kOpen) return false;
      }
    }
    for (const auto& [id, w] : workers_) {
      if (w.registered && (w.silent || w.task != 0)) return false;
    }
    return moving_.empty();
  }

  void CheckEnd() {
    const Scheduler::Stats st = sched_->stats();
    if (st.tasks_in_flight != 0 || st.moves_in_flight != 0 || st.kv_bytes_held != 0 ||
        st.items_queued + st.items_running != 0) {
      return Fail("work left at the end");
    }
    for (const auto& [id, job] : jobs_) {
      const bool known = !job.cancelled || job.cancelled_in_life == life_;  // a restart forgets cancelled jobs
      if (known && !sched_->JobFinished(id)) Fail("job " + id + " not finished");
    }
    for (const auto& [id, w] : workers_) {
      if (!w.kv.empty() || !w.incoming.empty()) Fail("worker " + id + " still holds K/V");
    }
  }

  // ----------------------------------------------------------------- helpers

  void At(int64_t t, std::function<void()> f) { events_.emplace(std::make_pair(t, next_seq_++), std::move(f)); }
  int64_t Int(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
  double Real(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng_); }
  bool Chance(double p) { return p > 0 && Real(0, 1) < p; }
  void Fail(const std::string& what) {
    if (error_.empty()) error_ = "t=" + std::to_string(now_) + " ms: " + what;
  }

  std::mt19937_64 rng_;
  Coverage* cov_;
  SchedulerOptions opt_;
  Profile profile_;
  std::unique_ptr<Scheduler> sched_;
  int life_ = 0;  // restarts so far
  int64_t now_ = 0;
  int64_t done_in_life_ = 0, failed_in_life_ = 0;
  int next_worker_ = 0;
  uint64_t next_seq_ = 0;
  std::map<std::pair<int64_t, uint64_t>, std::function<void()>> events_;
  std::map<std::string, SimWorker> workers_;
  std::map<std::string, SimJob> jobs_;
  std::set<std::tuple<std::string, int64_t, int32_t>> attempts_;
  std::map<KvKey, SimMove> moving_;  // moves of this coordinator life in flight
  std::set<KvKey> moved_ever_;       // every chunk attempt ever moved
  std::set<KvKey> moved_;            // those that arrived
  std::string error_;
};

TEST(SchedulerSimTest, RandomFaultsKeepEveryInvariant) {
  std::vector<uint64_t> seeds;
  const char* one = std::getenv("MESA_SCHED_SIM_SEED");
  if (one != nullptr) {
    seeds.push_back(std::strtoull(one, nullptr, 10));
  } else {
    for (uint64_t s = 1; s <= kSeeds; ++s) seeds.push_back(s);
  }
  const auto start = std::chrono::steady_clock::now();
  Coverage coverage;
  int failures = 0;
  int64_t events = 0;
  for (uint64_t seed : seeds) {
    Sim sim(seed, &coverage);
    const std::string error = sim.Run();
    events += sim.events();
    if (error.empty()) continue;
    ADD_FAILURE() << "seed " << seed << ": " << error << " (replay: MESA_SCHED_SIM_SEED=" << seed << ")";
    if (++failures == 5) break;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%zu seeds, %lld simulated events, in %.2f s\n", seeds.size(), static_cast<long long>(events), seconds);
  for (const auto& [what, n] : coverage.n) std::printf("  %-28s %lld\n", what.c_str(), static_cast<long long>(n));
  if (one != nullptr) return;
  for (const char* path :
       {"announced death", "silent death", "coordinator restart", "job cancelled", "drained worker left",
        "final source missing", "hung task cancelled", "task cancelled", "item failed: no room",
        "item failed: attempts", "item K/V released", "unneeded chunk released", "chunk RESOURCE_EXHAUSTED",
        "chunk succeeded", "spread final succeeded", "whole final succeeded", "spread final UNAVAILABLE", "late chunk success",
        "late final success", "move started", "move used", "move arrived too late", "move ABORTED",
        "move RESOURCE_EXHAUSTED", "move destination gone", "move source gone", "move endpoint killed",
        "spread final used moved K/V"}) {
    EXPECT_GT(coverage.n[path], 0) << "the simulation never reached: " << path;
  }
}

}  // namespace
}  // namespace mesa::coord
