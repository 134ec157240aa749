// The scheduling state machine (see scheduler.h for the events and actions).
//
// Contract kept here, beyond the header:
// - Deterministic: every decision walks std::map/std::set in key order; no clock, no
//   threads. Not thread-safe: the caller serializes calls.
// - Tasks: `tasks` holds every dispatched task whose outcome has not arrived. A task is
//   `live` while its item still counts on it; a task given up (deadline, job cancelled,
//   item ended, its chunk computed elsewhere) is no longer live but keeps its worker busy
//   until its outcome arrives. Each item points only at its live tasks.
// - Dispatch order for an idle worker: (1) a final of a started item that this worker
//   may run (a spread final whose chosen worker is this one or that has no usable holder,
//   or a whole final being retried); (2) a chunk of a started item that fits this
//   worker; (3) the next item of a job. Each level walks jobs round-robin from the job
//   after the one served last, items in input order.
// - Placement in kAuto, decided when an item starts: spread when the item's K/V fits no
//   usable worker's budget; else, while queued items >= available workers (idle, or
//   running a chunk task: free again within a chunk, to take the next chunk), the one
//   with less work in worker-seconds (whole, unless measured chunk rates make spread's
//   work smaller: spread_work_s = all chunks at the chunk rate + an overhead each + the
//   final as below; once a final is measured but no chunk ever was, one item is spread
//   to measure the chunk rate); else the
//   cheaper by the cost model (Estimate) with the item's share of the available workers,
//   m = available / (queued items + spread items with chunks queued): whole = prompt
//   tokens at the final rate + decoding + one task overhead; spread = the chunks over
//   min(m, chunks) workers (max(largest chunk, all chunks / m) at the chunk rate + one
//   overhead per wave) + the
//   K/V not on the final worker (all but ~1/m of it) at the transfer rate + the final's
//   own tokens at the final rate + decoding + one overhead. A worker whose budget the
//   whole item exceeds leaves it to one where it fits.
// - Cost model: exponentially weighted averages of seconds per chunk token, per final
//   prompt token (prefill less its K/V fetches), per decoded token, per fetched K/V byte,
//   and of per-task overhead (wall time from dispatch to success less the reported
//   compute), from TaskStats; SchedulerOptions' priors until the first measurement (a
//   prompt rate measured on either kind of task stands in for the other).
// - K/V accounting: bytes of done chunks per holder. A worker that refused a chunk with
//   RESOURCE_EXHAUSTED is not offered that chunk again until it releases K/V or
//   succeeds in a task. When nothing is in flight and the queued work fits no worker,
//   the most recently started stuck item fails (RESOURCE_EXHAUSTED), freeing its K/V.
// - A final whose source holder died while it ran is not charged a failure (the lost
//   chunk is the cause, and lost chunks are recomputed without counting). Any other
//   failed final, RESOURCE_EXHAUSTED included, counts.
// - A worker id that joins again is a restarted worker: first handled as if it left.
// - K/V prefetch (MoveKv): a spread item's final worker F is the worker that started it.
//   A chunk that succeeds on W != F while some other chunk of the item is not done yet,
//   with F known, not draining and its budget leaving room, is moved: its bytes are
//   reserved on F at once (W keeps counting them until KvMoved). KvMoved is used only
//   when nothing changed meanwhile: the item still runs, no final of it was dispatched
//   since the move began (a dispatched final reads the chunk from W), the chunk is still
//   done by that attempt on W, and F is the same worker (epoch) and not draining; then
//   F holds it and W's copy is released. Otherwise, and on KvMoveFailed, F's copy of
//   that attempt is released and its reservation dropped. At most one move per chunk
//   attempt (moves start only at a chunk's success). The last chunk to finish is not
//   moved: the final fetches it itself at once. Moves to a worker that is lost are
//   forgotten with it; their outcomes are then unknown and ignored.
// - A spread final consumes the chunks held by its own worker. When it fails or is given
//   up (Requeue), those chunks (the attempts it was given) are dropped: accounting,
//   a ReleaseKv for each, and recomputed without counting.
#include "coordinator/scheduler.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"

namespace mesa::coord {

namespace {
constexpr int32_t kAttemptStride = 1000;  // first attempt > failures * kAttemptStride
}  // namespace

const char* PlacementName(Placement p) {
  switch (p) {
    case Placement::kAuto:
      return "auto";
    case Placement::kWhole:
      return "whole";
    case Placement::kSpread:
      return "spread";
  }
  return "auto";
}

bool ParsePlacement(const std::string& name, Placement* out) {
  for (Placement p : {Placement::kAuto, Placement::kWhole, Placement::kSpread}) {
    if (name == PlacementName(p)) {
      *out = p;
      return true;
    }
  }
  return false;
}

struct Scheduler::State {
  enum class ItemPhase { kQueued, kRunning, kDone, kFailed, kCancelled };
  enum class ChunkPhase { kQueued, kRunning, kDone };
  struct Chunk {
    ChunkPhase phase = ChunkPhase::kQueued;
    uint64_t task = 0;    // kRunning: the live task
    std::string holder;   // kDone: where its K/V is
    int32_t attempt = 0;  // kDone: the attempt that computed it
  };
  struct Item {
    ItemSpec spec;
    ItemPhase phase = ItemPhase::kQueued;
    bool whole = false;
    int32_t failures = 0;
    int32_t last_attempt = 0;
    uint64_t start_seq = 0;
    uint64_t final_task = 0;    // the live final task; 0 when none
    std::string final_worker;   // spread: the worker chosen when it started (MoveKv target)
    uint64_t finals_dispatched = 0;
    std::vector<Chunk> chunks;  // spread items only
    std::string last_error;
  };
  struct Job {
    std::vector<Item> items;             // input order
    std::map<int64_t, size_t> pos;       // item index -> position in `items`
    std::set<size_t> queued, running;    // positions, input order
  };
  using ChunkKey = std::tuple<std::string, int64_t, int32_t>;  // job, item, chunk
  struct Worker {
    WorkerCaps caps;
    int64_t last_beat_ms = 0;
    bool draining = false;
    uint64_t task = 0;  // in flight (live or given up); 0 when idle
    int64_t kv_bytes = 0;  // held chunks, and moves in flight to it
    uint64_t epoch = 0;    // which join of this id (a rejoin is another worker)
    std::set<ChunkKey> refused;
  };
  struct Task {
    std::string worker, job_id;
    size_t pos = 0;
    TaskKind kind = TaskKind::kFinal;
    bool whole = false;        // kFinal: computes every chunk itself
    int64_t dispatched_ms = 0;
    int32_t chunk = -1;
    int32_t attempt = 0;
    int64_t deadline_ms = 0;
    bool live = true;
    bool source_lost = false;
    std::vector<std::pair<int32_t, int32_t>> local;  // spread final: (chunk, attempt) its worker held
  };
  using MoveKey = std::tuple<std::string, int64_t, int32_t, int32_t>;  // job, item, chunk, attempt
  struct Move {
    std::string dest, src;
    uint64_t dest_epoch = 0;
    size_t pos = 0;
    int64_t bytes = 0;
    uint64_t finals_dispatched = 0;  // the item's count when the move began
  };

  // An exponentially weighted average; the first sample replaces the prior.
  struct Ewma {
    double value = 0;
    int64_t n = 0;
    void Add(double x, double weight) {
      value = n == 0 ? x : value + weight * (x - value);
      ++n;
    }
  };

  SchedulerOptions opt;
  Ewma chunk_spt, final_spt, decode_spt, transfer_spb, overhead_s;  // the cost model
  mutable bool chunk_probe_sent = false;
  std::map<std::string, Job> jobs;
  std::set<std::string> active_jobs;  // jobs with queued or running items
  std::string last_served;            // round-robin cursor
  std::map<std::string, Worker> workers;
  std::map<uint64_t, Task> tasks;
  std::map<MoveKey, Move> moves;  // MoveKv actions awaiting their outcome
  uint64_t next_task = 1, next_start_seq = 1, next_epoch = 1;
  int64_t items_done = 0, items_failed = 0, kv_moves = 0;
  std::vector<Action> actions;

  explicit State(SchedulerOptions o) : opt(std::move(o)) {}

  Item& ItemOf(const Task& t) { return jobs.at(t.job_id).items[t.pos]; }

  // ------------------------------------------------------------- item lifecycle

  void Untrack(const std::string& job_id, size_t pos) {
    Job& job = jobs.at(job_id);
    job.queued.erase(pos);
    job.running.erase(pos);
    if (job.queued.empty() && job.running.empty()) active_jobs.erase(job_id);
  }

  // Stops a live task: the worker is told to cancel and stays busy until the outcome.
  void GiveUp(uint64_t id) {
    Task& t = tasks.at(id);
    t.live = false;
    actions.push_back(CancelTask{id, t.worker});
  }

  // Puts a live task's work back in the queue of its item. A spread final may have
  // consumed the chunks its worker held: they are dropped and recomputed.
  void Requeue(uint64_t id) {
    const Task& t = tasks.at(id);
    Item& item = ItemOf(t);
    if (t.kind == TaskKind::kChunk) {
      item.chunks[t.chunk] = Chunk{};
      return;
    }
    item.final_task = 0;
    for (const auto& [c, attempt] : t.local) {
      if (static_cast<size_t>(c) >= item.chunks.size()) continue;
      Chunk& chunk = item.chunks[c];
      if (chunk.phase != ChunkPhase::kDone || chunk.holder != t.worker || chunk.attempt != attempt) continue;
      auto w = workers.find(t.worker);
      if (w != workers.end()) {
        w->second.kv_bytes -= item.spec.chunk_kv_bytes[c];
        Release(t.worker, t.job_id, item.spec.item, attempt);
      }
      chunk = Chunk{};
    }
  }

  void Release(const std::string& worker, const std::string& job_id, int64_t item, int32_t attempt) {
    actions.push_back(ReleaseKv{worker, job_id, item, attempt});
    auto w = workers.find(worker);
    if (w != workers.end()) w->second.refused.clear();
  }

  // The item leaves the machine: its live tasks are cancelled and its K/V released.
  void EndItem(const std::string& job_id, size_t pos, ItemPhase phase) {
    Item& item = jobs.at(job_id).items[pos];
    item.phase = phase;
    Untrack(job_id, pos);
    if (item.final_task != 0) GiveUp(item.final_task);
    item.final_task = 0;
    std::map<std::string, int64_t> held;  // holder -> bytes
    for (size_t c = 0; c < item.chunks.size(); ++c) {
      Chunk& chunk = item.chunks[c];
      if (chunk.phase == ChunkPhase::kRunning) GiveUp(chunk.task);
      if (chunk.phase == ChunkPhase::kDone) held[chunk.holder] += item.spec.chunk_kv_bytes[c];
    }
    item.chunks.clear();
    for (const auto& [worker, bytes] : held) {
      workers.at(worker).kv_bytes -= bytes;
      Release(worker, job_id, item.spec.item, -1);
    }
  }

  void FailItem(const std::string& job_id, size_t pos, const std::string& error) {
    Item& item = jobs.at(job_id).items[pos];
    ++items_failed;
    actions.push_back(ItemFailed{job_id, item.spec.item, error});
    EndItem(job_id, pos, ItemPhase::kFailed);
  }

  void CountFailure(const std::string& job_id, size_t pos, const std::string& reason) {
    Item& item = jobs.at(job_id).items[pos];
    ++item.failures;
    item.last_error = reason;
    if (item.failures >= opt.max_attempts) {
      FailItem(job_id, pos, absl::StrCat("failed ", item.failures, " of ", opt.max_attempts,
                                         " attempts; last error: ", reason));
    }
  }

  // --------------------------------------------------------------- cost model

  static double Inverse(double rate) { return rate > 0 ? 1.0 / rate : 0.0; }

  CostEstimates Costs() const {
    CostEstimates c;
    const double prior_prefill = Inverse(opt.prior_prefill_tokens_per_s);
    c.chunk_s_per_token = chunk_spt.n ? chunk_spt.value : final_spt.n ? final_spt.value : prior_prefill;
    c.final_s_per_token = final_spt.n ? final_spt.value : chunk_spt.n ? chunk_spt.value : prior_prefill;
    c.decode_s_per_token = decode_spt.n ? decode_spt.value : Inverse(opt.prior_decode_tokens_per_s);
    c.transfer_s_per_byte = transfer_spb.n ? transfer_spb.value : Inverse(opt.prior_transfer_bytes_per_s);
    c.task_overhead_s = overhead_s.n ? overhead_s.value : std::max(0.0, opt.prior_task_overhead_s);
    c.samples = chunk_spt.n + final_spt.n + decode_spt.n + transfer_spb.n + overhead_s.n;
    return c;
  }

  static int64_t FinalTokens(const ItemSpec& spec) {
    if (spec.final_tokens > 0) return spec.final_tokens;
    return spec.prompt_tokens / (std::max<int64_t>(spec.n_middle, 0) + 1);
  }

  PlacementEstimate EstimateItem(const ItemSpec& spec, int64_t idle) const {
    const CostEstimates c = Costs();
    PlacementEstimate e;
    const double decode = static_cast<double>(spec.max_new_tokens) * c.decode_s_per_token;
    e.whole_s = static_cast<double>(spec.prompt_tokens) * c.final_s_per_token + decode + c.task_overhead_s;
    const int64_t n = std::min<int64_t>(spec.n_middle, spec.chunk_tokens.size());
    if (n <= 0) {
      e.spread_s = e.spread_work_s = e.whole_s;
      e.spread_workers = 1;
      return e;
    }
    const int64_t m = std::clamp<int64_t>(idle, 1, n);
    int64_t sum_tokens = 0, max_tokens = 0, kv = 0;
    for (int64_t c = 0; c < n; ++c) {
      sum_tokens += spec.chunk_tokens[c];
      max_tokens = std::max(max_tokens, spec.chunk_tokens[c]);
    }
    for (int64_t b : spec.chunk_kv_bytes) kv += b;
    const double chunks = std::max(static_cast<double>(max_tokens), static_cast<double>(sum_tokens) / m) *
                              c.chunk_s_per_token +
                          static_cast<double>((n + m - 1) / m) * c.task_overhead_s;
    e.spread_workers = static_cast<int32_t>(m);
    e.kv_moved_bytes = kv - kv / m;  // the final worker holds about 1/m of it
    const double final = static_cast<double>(e.kv_moved_bytes) * c.transfer_s_per_byte +
                         static_cast<double>(FinalTokens(spec)) * c.final_s_per_token + decode + c.task_overhead_s;
    e.spread_s = chunks + final;
    e.spread_work_s = static_cast<double>(sum_tokens) * c.chunk_s_per_token +
                      static_cast<double>(n) * c.task_overhead_s + final;
    return e;
  }

  // A successful task's measurements into the averages.
  void Observe(const Task& t, const TaskStats& st, int64_t now_ms) {
    const ItemSpec& spec = ItemOf(t).spec;
    const double w = std::clamp(opt.cost_ewma_weight, 0.0, 1.0);
    if (t.kind == TaskKind::kChunk) {
      const int64_t tokens = st.tokens > 0 ? st.tokens : spec.chunk_tokens[t.chunk];
      if (st.compute_s > 0 && tokens > 0) chunk_spt.Add(st.compute_s / static_cast<double>(tokens), w);
    } else {
      const int64_t tokens = st.tokens > 0 ? st.tokens : t.whole ? spec.prompt_tokens : FinalTokens(spec);
      const double prefill = st.compute_s - std::max(0.0, st.kv_transfer_s);
      if (prefill > 0 && tokens > 0) final_spt.Add(prefill / static_cast<double>(tokens), w);
      if (st.generated > 0 && st.decode_s > 0) decode_spt.Add(st.decode_s / static_cast<double>(st.generated), w);
      if (st.kv_bytes_received > 0 && st.kv_transfer_s > 0) {
        transfer_spb.Add(st.kv_transfer_s / static_cast<double>(st.kv_bytes_received), w);
      }
    }
    const double reported = std::max(0.0, st.compute_s) + std::max(0.0, st.decode_s);
    if (reported > 0) {
      const double wall = static_cast<double>(now_ms - t.dispatched_ms) / 1000.0;
      overhead_s.Add(std::max(0.0, wall - reported), w);
    }
  }

  // kAuto for an item that fits some worker. While the queue is at least as long as the
  // available workers, either placement keeps everyone busy: the one with less work
  // (worker-seconds: spread with every chunk on its own worker) wins, whole unless the
  // measured rates make the chunks cheaper. Otherwise the sooner completion with the
  // item's share of the available workers.
  bool PreferWhole(const ItemSpec& spec, int64_t queued, int64_t available, int64_t sharing) const {
    if (queued >= available) {
      if (chunk_spt.n == 0 && final_spt.n > 0 && !chunk_probe_sent) {
        chunk_probe_sent = true;  // one item spread to measure the chunk rate
        return false;
      }
      const PlacementEstimate e = EstimateItem(spec, std::max<int64_t>(spec.n_middle, 1));
      return e.whole_s <= e.spread_work_s;
    }
    const PlacementEstimate e = EstimateItem(spec, available / std::max<int64_t>(sharing, 1));
    return e.whole_s <= e.spread_s;
  }

  // ------------------------------------------------------------------ workers

  // The worker is gone: its task fails (counted unless already given up) and the
  // chunks it held are recomputed (not counted).
  void LoseWorker(const std::string& id, const std::string& reason) {
    auto wit = workers.find(id);
    if (wit == workers.end()) return;
    const uint64_t task = wit->second.task;
    workers.erase(wit);
    std::erase_if(moves, [&](const auto& m) { return m.second.dest == id; });  // went with it
    for (const std::string& job_id : active_jobs) {
      Job& job = jobs.at(job_id);
      for (size_t pos : job.running) {
        Item& item = job.items[pos];
        bool lost = false;
        for (Chunk& chunk : item.chunks) {
          if (chunk.phase == ChunkPhase::kDone && chunk.holder == id) {
            chunk = Chunk{};
            lost = true;
          }
        }
        if (lost && item.final_task != 0 && tasks.at(item.final_task).worker != id) {
          tasks.at(item.final_task).source_lost = true;
        }
      }
    }
    if (task == 0) return;
    Task t = tasks.at(task);
    if (t.live) Requeue(task);
    tasks.erase(task);
    if (t.live && !(t.kind == TaskKind::kFinal && t.source_lost)) {
      CountFailure(t.job_id, t.pos, absl::StrCat("UNAVAILABLE: worker ", id, " ", reason));
    }
  }

  bool Usable(const Worker& w) const { return !w.draining; }

  static bool Fits(const Worker& w, const std::string& job_id, const Item& item, int32_t c) {
    if (w.refused.count(ChunkKey{job_id, item.spec.item, c})) return false;
    const int64_t budget = w.caps.kv_budget_bytes;
    return budget == 0 || w.kv_bytes + item.spec.chunk_kv_bytes[c] <= budget;
  }

  // ---------------------------------------------------------------- dispatch

  std::vector<std::string> JobsInTurn() const {
    std::vector<std::string> order;
    auto start = active_jobs.upper_bound(last_served);
    for (auto it = start; it != active_jobs.end(); ++it) order.push_back(*it);
    for (auto it = active_jobs.begin(); it != start; ++it) order.push_back(*it);
    return order;
  }

  int64_t Tokens(const Item& item, TaskKind kind, int32_t chunk) const {
    if (kind == TaskKind::kChunk) return item.spec.chunk_tokens[chunk];
    return item.spec.prompt_tokens + item.spec.max_new_tokens;
  }

  void Dispatch(const std::string& worker, const std::string& job_id, size_t pos, TaskKind kind,
                int32_t chunk, int64_t now_ms) {
    Item& item = jobs.at(job_id).items[pos];
    const uint64_t id = next_task++;
    Task t;
    t.worker = worker;
    t.job_id = job_id;
    t.pos = pos;
    t.kind = kind;
    t.chunk = chunk;
    t.whole = kind == TaskKind::kFinal && item.whole;
    t.dispatched_ms = now_ms;
    t.attempt = ++item.last_attempt;
    t.deadline_ms = now_ms + opt.deadline_base_ms +
                    std::llround(opt.deadline_ms_per_token * static_cast<double>(Tokens(item, kind, chunk)));
    mesa::coord::Dispatch d;
    d.task = id;
    d.worker = worker;
    d.kind = kind;
    d.job_id = job_id;
    d.item = item.spec.item;
    d.chunk = chunk;
    d.attempt = t.attempt;
    d.deadline_ms = t.deadline_ms;
    if (kind == TaskKind::kChunk) {
      item.chunks[chunk] = Chunk{ChunkPhase::kRunning, id, "", 0};
    } else {
      item.final_task = id;
      ++item.finals_dispatched;
      d.whole = item.whole;
      for (size_t c = 0; c < item.chunks.size(); ++c) {
        d.sources.push_back(SourceRef{static_cast<int32_t>(c), item.chunks[c].holder, item.chunks[c].attempt});
        if (item.chunks[c].holder == worker) t.local.emplace_back(static_cast<int32_t>(c), item.chunks[c].attempt);
      }
    }
    tasks.emplace(id, std::move(t));
    workers.at(worker).task = id;
    last_served = job_id;
    actions.push_back(std::move(d));
  }

  bool FinalReady(const Item& item) const {
    if (item.final_task != 0) return false;
    if (item.whole) return true;
    return std::all_of(item.chunks.begin(), item.chunks.end(),
                       [](const Chunk& c) { return c.phase == ChunkPhase::kDone; });
  }

  // The worker to run a ready spread final: the usable holder of the most of its bytes
  // (ties: lowest id); "" when any worker may (whole, or no usable holder).
  std::string FinalWorker(const Item& item) const {
    std::map<std::string, int64_t> held;
    for (size_t c = 0; c < item.chunks.size(); ++c) {
      const std::string& h = item.chunks[c].holder;
      if (Usable(workers.at(h))) held[h] += item.spec.chunk_kv_bytes[c];
    }
    std::string best;
    int64_t best_bytes = -1;
    for (const auto& [worker, bytes] : held) {
      if (bytes > best_bytes) best = worker, best_bytes = bytes;
    }
    return best;
  }

  bool TryFinal(const std::string& worker, int64_t now_ms) {
    for (const std::string& job_id : JobsInTurn()) {
      const Job& job = jobs.at(job_id);
      for (size_t pos : job.running) {
        const Item& item = job.items[pos];
        if (!FinalReady(item)) continue;
        const std::string target = FinalWorker(item);
        if (!target.empty() && target != worker) continue;
        Dispatch(worker, job_id, pos, TaskKind::kFinal, -1, now_ms);
        return true;
      }
    }
    return false;
  }

  // The first queued chunk of the item that fits the worker; -1 when none.
  int32_t ChunkFor(const std::string& worker, const std::string& job_id, const Item& item) const {
    const Worker& w = workers.at(worker);
    for (size_t c = 0; c < item.chunks.size(); ++c) {
      if (item.chunks[c].phase == ChunkPhase::kQueued && Fits(w, job_id, item, static_cast<int32_t>(c))) {
        return static_cast<int32_t>(c);
      }
    }
    return -1;
  }

  bool TryChunk(const std::string& worker, int64_t now_ms) {
    for (const std::string& job_id : JobsInTurn()) {
      const Job& job = jobs.at(job_id);
      for (size_t pos : job.running) {
        const int32_t c = ChunkFor(worker, job_id, job.items[pos]);
        if (c < 0) continue;
        Dispatch(worker, job_id, pos, TaskKind::kChunk, c, now_ms);
        return true;
      }
    }
    return false;
  }

  static bool FitsBudget(const Worker& w, int64_t bytes) {
    return w.caps.kv_budget_bytes == 0 || bytes <= w.caps.kv_budget_bytes;
  }

  bool TryStart(const std::string& worker, int64_t now_ms) {
    // kAuto's view: queued items, and workers idle or running a chunk task.
    int64_t queued = 0, available = 0, sharing = 0;
    for (const std::string& job_id : active_jobs) {
      const Job& job = jobs.at(job_id);
      queued += job.queued.size();
      for (size_t pos : job.running) {
        const Item& item = job.items[pos];
        sharing += std::any_of(item.chunks.begin(), item.chunks.end(),
                               [](const Chunk& c) { return c.phase == ChunkPhase::kQueued; });
      }
    }
    sharing += queued;
    for (const auto& [id, w] : workers) {
      available += Usable(w) && (w.task == 0 || tasks.at(w.task).kind == TaskKind::kChunk);
    }
    const Worker& self = workers.at(worker);
    for (const std::string& job_id : JobsInTurn()) {
      Job& job = jobs.at(job_id);
      if (job.queued.empty()) continue;
      const size_t pos = *job.queued.begin();
      Item& item = job.items[pos];
      int64_t total = 0;
      for (int64_t b : item.spec.chunk_kv_bytes) total += b;
      const Placement placement = item.spec.placement.value_or(opt.placement);
      bool whole = item.spec.n_middle == 0 || placement == Placement::kWhole;
      if (!whole && placement == Placement::kAuto) {
        const bool fits_somewhere = std::any_of(workers.begin(), workers.end(), [&](const auto& w) {
          return Usable(w.second) && FitsBudget(w.second, total);
        });
        if (fits_somewhere && PreferWhole(item.spec, queued, available, sharing)) {
          if (!FitsBudget(self, total)) continue;  // leave it to a worker where it fits
          whole = true;
        }
      }
      if (!whole) {
        item.chunks.assign(item.spec.n_middle, Chunk{});
        if (ChunkFor(worker, job_id, item) < 0) {
          item.chunks.clear();
          continue;
        }
      }
      job.queued.erase(pos);
      job.running.insert(pos);
      item.phase = ItemPhase::kRunning;
      item.whole = whole;
      item.final_worker = whole ? "" : worker;
      item.start_seq = next_start_seq++;
      if (whole) {
        Dispatch(worker, job_id, pos, TaskKind::kFinal, -1, now_ms);
      } else {
        Dispatch(worker, job_id, pos, TaskKind::kChunk, ChunkFor(worker, job_id, item), now_ms);
      }
      return true;
    }
    return false;
  }

  // Nothing in flight, an able worker idle, and work left that no worker can take: only
  // K/V room can be missing. Fails the most recently started such item (or the head of
  // the queue when none started); false when not stalled.
  bool ResolveStall() {
    if (!tasks.empty() || !moves.empty()) return false;
    if (std::none_of(workers.begin(), workers.end(), [&](const auto& w) { return Usable(w.second); })) {
      return false;
    }
    std::string victim_job;
    size_t victim_pos = 0;
    uint64_t victim_seq = 0;
    for (const std::string& job_id : active_jobs) {
      const Job& job = jobs.at(job_id);
      for (size_t pos : job.running) {
        if (job.items[pos].start_seq > victim_seq) {
          victim_job = job_id, victim_pos = pos, victim_seq = job.items[pos].start_seq;
        }
      }
    }
    if (victim_job.empty()) {
      if (active_jobs.empty()) return false;
      victim_job = *active_jobs.begin();
      victim_pos = *jobs.at(victim_job).queued.begin();
    }
    const Item& item = jobs.at(victim_job).items[victim_pos];
    int64_t largest = 0;
    for (int64_t b : item.spec.chunk_kv_bytes) largest = std::max(largest, b);
    std::string error = absl::StrCat(
        "RESOURCE_EXHAUSTED: no worker has room for this item's chunk K/V (up to ", largest,
        " bytes per chunk): every budget is full or the worker refused");
    if (item.failures > 0) {
      absl::StrAppend(&error, "; after ", item.failures, " failed attempts, last error: ", item.last_error);
    }
    FailItem(victim_job, victim_pos, error);
    return true;
  }

  // ----------------------------------------------------------------- K/V moves

  // Chunk `c` of a running spread item just became done on its holder: move it to the
  // item's final worker while other chunks are still computing (see the contract).
  void MaybeMove(const std::string& job_id, size_t pos, int32_t c) {
    Item& item = jobs.at(job_id).items[pos];
    const Chunk& chunk = item.chunks[c];
    if (item.whole || item.final_worker.empty() || chunk.holder == item.final_worker) return;
    if (std::all_of(item.chunks.begin(), item.chunks.end(),
                    [](const Chunk& x) { return x.phase == ChunkPhase::kDone; })) {
      return;  // the last one: the final fetches it itself
    }
    auto f = workers.find(item.final_worker);
    if (f == workers.end() || !Usable(f->second)) return;
    const int64_t bytes = item.spec.chunk_kv_bytes[c];
    if (!FitsBudget(f->second, f->second.kv_bytes + bytes)) return;
    f->second.kv_bytes += bytes;
    moves[MoveKey{job_id, item.spec.item, c, chunk.attempt}] =
        Move{item.final_worker, chunk.holder, f->second.epoch, pos, bytes, item.finals_dispatched};
    actions.push_back(MoveKv{item.final_worker, chunk.holder, job_id, item.spec.item, c, chunk.attempt});
  }

  // A move's outcome: `moved` when the destination now holds the copy.
  void MoveOutcome(const MoveKey& key, bool moved) {
    auto it = moves.find(key);
    if (it == moves.end()) return;
    const Move m = it->second;
    moves.erase(it);
    auto f = workers.find(m.dest);
    if (f == workers.end() || f->second.epoch != m.dest_epoch) return;  // its K/V went with it
    const auto& [job_id, index, c, attempt] = key;
    Item& item = jobs.at(job_id).items[m.pos];
    bool use = moved && item.phase == ItemPhase::kRunning && item.finals_dispatched == m.finals_dispatched &&
               Usable(f->second) && static_cast<size_t>(c) < item.chunks.size();
    if (use) {
      const Chunk& chunk = item.chunks[c];
      use = chunk.phase == ChunkPhase::kDone && chunk.holder == m.src && chunk.attempt == attempt;
    }
    if (use) {
      workers.at(m.src).kv_bytes -= m.bytes;
      item.chunks[c].holder = m.dest;
      ++kv_moves;
      Release(m.src, job_id, index, attempt);
    } else {
      f->second.kv_bytes -= m.bytes;
      Release(m.dest, job_id, index, attempt);  // a copy nobody will use, if any arrived
    }
  }

  void Schedule(int64_t now_ms) {
    for (;;) {
      bool progress = false;
      for (const auto& [id, w] : workers) {
        if (!Usable(w) || w.task != 0) continue;
        if (TryFinal(id, now_ms) || TryChunk(id, now_ms) || TryStart(id, now_ms)) progress = true;
      }
      if (!progress && !ResolveStall()) return;
    }
  }
};

Scheduler::Scheduler(SchedulerOptions options, int64_t now_ms)
    : s_(std::make_shared<State>(std::move(options))) {
  (void)now_ms;
}

void Scheduler::AddJob(const std::string& job_id, const std::vector<ItemSpec>& items, int64_t now_ms) {
  State::Job& job = s_->jobs[job_id];
  for (const ItemSpec& spec : items) {
    if (job.pos.count(spec.item)) continue;
    const size_t pos = job.items.size();
    job.pos[spec.item] = pos;
    State::Item item;
    item.spec = spec;
    item.failures = spec.failures;
    item.last_attempt = std::max(spec.failures * kAttemptStride, spec.last_attempt);
    job.items.push_back(std::move(item));
    job.queued.insert(pos);
    s_->active_jobs.insert(job_id);
    const bool valid = spec.n_middle >= 0 && spec.chunk_kv_bytes.size() == static_cast<size_t>(spec.n_middle) &&
                       spec.chunk_tokens.size() == static_cast<size_t>(spec.n_middle);
    if (!valid) {
      s_->FailItem(job_id, pos, absl::StrCat("INVALID_ARGUMENT: n_middle ", spec.n_middle, " with ",
                                             spec.chunk_kv_bytes.size(), " chunk sizes and ",
                                             spec.chunk_tokens.size(), " chunk token counts"));
    } else if (spec.failures >= s_->opt.max_attempts) {
      s_->FailItem(job_id, pos, absl::StrCat("failed ", spec.failures, " of ", s_->opt.max_attempts,
                                             " attempts before the coordinator restarted"));
    }
  }
  s_->Schedule(now_ms);
}

void Scheduler::CancelJob(const std::string& job_id, int64_t now_ms) {
  auto it = s_->jobs.find(job_id);
  if (it == s_->jobs.end()) return;
  const std::set<size_t> running = it->second.running, queued = it->second.queued;
  for (size_t pos : running) s_->EndItem(job_id, pos, State::ItemPhase::kCancelled);
  for (size_t pos : queued) s_->EndItem(job_id, pos, State::ItemPhase::kCancelled);
  s_->Schedule(now_ms);
}

void Scheduler::WorkerJoined(const std::string& worker, WorkerCaps caps, int64_t now_ms) {
  // A known id joining again restarted: whatever it ran or held is gone.
  s_->LoseWorker(worker, "registered again");
  State::Worker& w = s_->workers[worker];
  w.caps = caps;
  w.last_beat_ms = now_ms;
  w.epoch = s_->next_epoch++;
  s_->Schedule(now_ms);
}

void Scheduler::WorkerHeartbeat(const std::string& worker, int64_t now_ms) {
  auto it = s_->workers.find(worker);
  if (it != s_->workers.end()) it->second.last_beat_ms = std::max(it->second.last_beat_ms, now_ms);
}

void Scheduler::WorkerDraining(const std::string& worker, int64_t now_ms) {
  auto it = s_->workers.find(worker);
  if (it == s_->workers.end() || it->second.draining) return;
  it->second.draining = true;
  s_->Schedule(now_ms);  // a final waiting for this worker now goes elsewhere
}

void Scheduler::WorkerLeft(const std::string& worker, int64_t now_ms) {
  s_->LoseWorker(worker, "left");
  s_->Schedule(now_ms);
}

bool Scheduler::TaskSucceeded(uint64_t task, int64_t now_ms, const TaskStats& stats) {
  auto it = s_->tasks.find(task);
  if (it == s_->tasks.end()) return false;
  const State::Task t = it->second;
  s_->Observe(t, stats, now_ms);
  s_->tasks.erase(it);
  State::Worker& w = s_->workers.at(t.worker);
  w.task = 0;
  w.refused.clear();
  State::Item& item = s_->ItemOf(t);
  const bool active = item.phase == State::ItemPhase::kRunning;
  bool completed = false;
  if (t.kind == TaskKind::kFinal) {
    // A given-up final that still succeeded is as valid as any other.
    if (active) {
      if (t.live) item.final_task = 0;
      ++s_->items_done;
      s_->EndItem(t.job_id, t.pos, State::ItemPhase::kDone);
      completed = true;
    }
  } else if (active && item.chunks[t.chunk].phase != State::ChunkPhase::kDone) {
    State::Chunk& chunk = item.chunks[t.chunk];
    if (chunk.phase == State::ChunkPhase::kRunning && chunk.task != task) s_->GiveUp(chunk.task);
    chunk = State::Chunk{State::ChunkPhase::kDone, 0, t.worker, t.attempt};
    w.kv_bytes += item.spec.chunk_kv_bytes[t.chunk];
    s_->MaybeMove(t.job_id, t.pos, t.chunk);
  } else {
    s_->Release(t.worker, t.job_id, item.spec.item, t.attempt);  // K/V nobody needs
  }
  s_->Schedule(now_ms);
  return completed;
}

void Scheduler::TaskFailed(uint64_t task, const absl::Status& status, int64_t now_ms) {
  auto it = s_->tasks.find(task);
  if (it == s_->tasks.end()) return;
  const State::Task t = it->second;
  State::Worker& w = s_->workers.at(t.worker);
  w.task = 0;
  if (t.live) {
    s_->Requeue(task);
    s_->tasks.erase(task);
    if (t.kind == TaskKind::kChunk && status.code() == absl::StatusCode::kResourceExhausted) {
      w.refused.insert(State::ChunkKey{t.job_id, s_->ItemOf(t).spec.item, t.chunk});
    } else if (!(t.kind == TaskKind::kFinal && t.source_lost)) {
      s_->CountFailure(t.job_id, t.pos, absl::StrCat(status.ToString(), " (worker ", t.worker, ")"));
    }
  } else {
    s_->tasks.erase(task);
  }
  s_->Schedule(now_ms);
}

void Scheduler::Tick(int64_t now_ms) {
  std::vector<std::string> silent;
  for (const auto& [id, w] : s_->workers) {
    if (now_ms - w.last_beat_ms > s_->opt.heartbeat_timeout_ms) silent.push_back(id);
  }
  for (const std::string& id : silent) {
    s_->LoseWorker(id, absl::StrCat("silent for more than ", s_->opt.heartbeat_timeout_ms, " ms"));
  }
  std::vector<uint64_t> expired;
  for (const auto& [id, t] : s_->tasks) {
    if (t.live && now_ms >= t.deadline_ms) expired.push_back(id);
  }
  for (uint64_t id : expired) {
    const State::Task& t = s_->tasks.at(id);
    if (!t.live) continue;  // given up meanwhile: its item failed
    const std::string job_id = t.job_id, worker = t.worker;
    const size_t pos = t.pos;
    s_->Requeue(id);
    s_->GiveUp(id);
    s_->CountFailure(job_id, pos, absl::StrCat("DEADLINE_EXCEEDED: task ", id, " on worker ", worker));
  }
  s_->Schedule(now_ms);
}

bool Scheduler::ItemCommitted(const std::string& job_id, int64_t item, int64_t now_ms) {
  auto j = s_->jobs.find(job_id);
  if (j == s_->jobs.end()) return false;
  auto p = j->second.pos.find(item);
  if (p == j->second.pos.end()) return false;
  const State::ItemPhase phase = j->second.items[p->second].phase;
  if (phase != State::ItemPhase::kQueued && phase != State::ItemPhase::kRunning) return false;
  ++s_->items_done;
  s_->EndItem(job_id, p->second, State::ItemPhase::kDone);
  s_->Schedule(now_ms);
  return true;
}

void Scheduler::KvMoved(const std::string& job_id, int64_t item, int32_t chunk, int32_t attempt, int64_t now_ms) {
  s_->MoveOutcome(State::MoveKey{job_id, item, chunk, attempt}, /*moved=*/true);
  s_->Schedule(now_ms);
}

void Scheduler::KvMoveFailed(const std::string& job_id, int64_t item, int32_t chunk, int32_t attempt,
                             const absl::Status& status, int64_t now_ms) {
  (void)status;  // never counted: the chunk stays where it was
  s_->MoveOutcome(State::MoveKey{job_id, item, chunk, attempt}, /*moved=*/false);
  s_->Schedule(now_ms);
}

std::vector<Action> Scheduler::TakeActions() { return std::exchange(s_->actions, {}); }

Scheduler::Stats Scheduler::stats() const {
  Stats st;
  for (const std::string& job_id : s_->active_jobs) {
    st.items_queued += s_->jobs.at(job_id).queued.size();
    st.items_running += s_->jobs.at(job_id).running.size();
  }
  st.items_done = s_->items_done;
  st.items_failed = s_->items_failed;
  st.tasks_in_flight = s_->tasks.size();
  st.moves_in_flight = s_->moves.size();
  st.kv_moves = s_->kv_moves;
  st.workers = s_->workers.size();
  for (const auto& [id, w] : s_->workers) {
    st.workers_idle += (!w.draining && w.task == 0) ? 1 : 0;
    st.kv_bytes_held += w.kv_bytes;
  }
  return st;
}

std::vector<Scheduler::WorkerView> Scheduler::Workers() const {
  std::vector<WorkerView> out;
  for (const auto& [id, w] : s_->workers) {
    WorkerView v;
    v.worker = id;
    v.draining = w.draining;
    v.kv_bytes_held = w.kv_bytes;
    v.kv_budget_bytes = w.caps.kv_budget_bytes;
    v.last_beat_ms = w.last_beat_ms;
    // A task the scheduler gave up (cancelled, past its deadline) still occupies its
    // worker until the worker answers: shown all the same.
    if (auto t = s_->tasks.find(w.task); w.task != 0 && t != s_->tasks.end()) {
      const State::Task& task = t->second;
      v.task = w.task;
      v.kind = task.kind;
      v.job_id = task.job_id;
      if (auto j = s_->jobs.find(task.job_id); j != s_->jobs.end() && task.pos < j->second.items.size()) {
        v.item = j->second.items[task.pos].spec.item;
      }
      v.chunk = task.chunk;
      v.attempt = task.attempt;
      v.whole = task.whole;
      v.dispatched_ms = task.dispatched_ms;
    }
    out.push_back(std::move(v));
  }
  return out;
}

bool Scheduler::JobFinished(const std::string& job_id) const {
  return s_->jobs.count(job_id) && !s_->active_jobs.count(job_id);
}

int64_t Scheduler::next_deadline_ms() const {
  int64_t next = INT64_MAX;
  for (const auto& [id, t] : s_->tasks) {
    if (t.live) next = std::min(next, t.deadline_ms);
  }
  for (const auto& [id, w] : s_->workers) {
    next = std::min(next, w.last_beat_ms + s_->opt.heartbeat_timeout_ms + 1);
  }
  return next;
}

int32_t Scheduler::ItemFailures(const std::string& job_id, int64_t item) const {
  auto j = s_->jobs.find(job_id);
  if (j == s_->jobs.end()) return -1;
  auto p = j->second.pos.find(item);
  return p == j->second.pos.end() ? -1 : j->second.items[p->second].failures;
}

CostEstimates Scheduler::costs() const { return s_->Costs(); }

PlacementEstimate Scheduler::Estimate(const ItemSpec& item, int64_t workers) const {
  return s_->EstimateItem(item, workers);
}

bool Scheduler::HasWorker(const std::string& worker) const { return s_->workers.contains(worker); }

bool Scheduler::WorkerDrained(const std::string& worker) const {
  auto it = s_->workers.find(worker);
  return it != s_->workers.end() && it->second.draining && it->second.task == 0 && it->second.kv_bytes == 0;
}

}  // namespace mesa::coord
