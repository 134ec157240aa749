// Scenario tests of the scheduling state machine: each drives the Scheduler by hand
// (events in, actions out) on a fake clock and checks the decisions the header promises.
// The randomized fault simulation is scheduler_sim_test.cc.
#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mesa::coord {
namespace {

template <class T>
std::vector<T> Only(const std::vector<Action>& actions) {
  std::vector<T> out;
  for (const Action& a : actions) {
    if (const T* t = std::get_if<T>(&a)) out.push_back(*t);
  }
  return out;
}

// An item of `bytes.size()` middle chunks, each keeping bytes[c] of K/V.
ItemSpec Item(const std::string& job, int64_t index, std::vector<int64_t> bytes = {}) {
  ItemSpec spec;
  spec.job_id = job;
  spec.item = index;
  spec.n_middle = static_cast<int32_t>(bytes.size());
  spec.chunk_kv_bytes = bytes;
  spec.chunk_tokens.assign(bytes.size(), 100);
  spec.prompt_tokens = 100 * static_cast<int64_t>(bytes.size() + 1);
  spec.max_new_tokens = 10;
  return spec;
}

SchedulerOptions Options(Placement placement, int max_attempts = 3) {
  SchedulerOptions o;
  o.placement = placement;
  o.max_attempts = max_attempts;
  o.heartbeat_timeout_ms = 1000;
  o.deadline_base_ms = 500;
  o.deadline_ms_per_token = 1.0;
  return o;
}

class SchedulerTest : public ::testing::Test {
 protected:
  void Start(SchedulerOptions options, std::vector<std::string> workers, int64_t budget = 0) {
    s_ = std::make_unique<Scheduler>(options, now_);
    for (const std::string& w : workers) s_->WorkerJoined(w, WorkerCaps{budget}, now_);
  }
  std::vector<Action> Take() { return s_->TakeActions(); }
  std::vector<Dispatch> Dispatches() { return Only<Dispatch>(Take()); }
  // The single dispatch the last events produced.
  Dispatch One() {
    std::vector<Dispatch> d = Dispatches();
    EXPECT_EQ(d.size(), 1u);
    return d.empty() ? Dispatch{} : d[0];
  }

  int64_t now_ = 0;
  std::unique_ptr<Scheduler> s_;
};

TEST(PlacementTest, NamesRoundTrip) {
  for (Placement p : {Placement::kAuto, Placement::kWhole, Placement::kSpread}) {
    Placement parsed = Placement::kAuto;
    ASSERT_TRUE(ParsePlacement(PlacementName(p), &parsed));
    EXPECT_EQ(parsed, p);
  }
  Placement parsed = Placement::kAuto;
  EXPECT_FALSE(ParsePlacement("everywhere", &parsed));
}

TEST_F(SchedulerTest, UnchunkedItemRunsWholeEvenWhenSpreadIsAsked) {
  Start(Options(Placement::kSpread), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0)}, now_);
  Dispatch d = One();
  EXPECT_EQ(d.kind, TaskKind::kFinal);
  EXPECT_TRUE(d.whole);
  EXPECT_TRUE(d.sources.empty());
  EXPECT_EQ(d.worker, "w1");
  EXPECT_EQ(d.deadline_ms, now_ + 500 + 110);
  EXPECT_TRUE(s_->TaskSucceeded(d.task, now_));
  EXPECT_TRUE(s_->JobFinished("j"));
  EXPECT_EQ(s_->stats().items_done, 1);
}

TEST_F(SchedulerTest, WholePlacementRunsChunkedItemOnOneWorker) {
  Start(Options(Placement::kWhole), {"w1", "w2", "w3"});
  s_->AddJob("j", {Item("j", 0, {10, 10, 10})}, now_);
  Dispatch d = One();
  EXPECT_EQ(d.kind, TaskKind::kFinal);
  EXPECT_TRUE(d.whole);
  EXPECT_EQ(s_->stats().workers_idle, 2);
}

TEST_F(SchedulerTest, AJobsOwnPlacementOverridesTheSchedulers) {
  // The scheduler runs whole; one job asks for spread, another for whole explicitly.
  Start(Options(Placement::kWhole), {"w1", "w2", "w3"});
  ItemSpec spread = Item("s", 0, {10, 10, 10});
  spread.placement = Placement::kSpread;
  s_->AddJob("s", {spread}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 3u);
  for (const Dispatch& x : d) EXPECT_EQ(x.kind, TaskKind::kChunk);

  Start(Options(Placement::kSpread), {"w1", "w2", "w3"});
  ItemSpec whole = Item("w", 0, {10, 10, 10});
  whole.placement = Placement::kWhole;
  s_->AddJob("w", {whole}, now_);
  Dispatch one = One();
  EXPECT_EQ(one.kind, TaskKind::kFinal);
  EXPECT_TRUE(one.whole);
}

TEST_F(SchedulerTest, SpreadRunsChunksInParallelThenFinalOnBiggestHolder) {
  Start(Options(Placement::kSpread), {"w1", "w2", "w3"});
  s_->AddJob("j", {Item("j", 0, {100, 300, 200})}, now_);
  std::vector<Dispatch> chunks = Dispatches();
  ASSERT_EQ(chunks.size(), 3u);
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(chunks[c].kind, TaskKind::kChunk);
    EXPECT_EQ(chunks[c].chunk, c);
    EXPECT_EQ(chunks[c].worker, "w" + std::to_string(c + 1));
    EXPECT_EQ(chunks[c].deadline_ms, now_ + 500 + 100);
  }
  EXPECT_FALSE(s_->TaskSucceeded(chunks[0].task, now_));
  EXPECT_FALSE(s_->TaskSucceeded(chunks[2].task, now_));
  std::vector<Action> a = Take();
  EXPECT_TRUE(Only<Dispatch>(a).empty());  // the final waits for chunk 1
  ASSERT_EQ(Only<MoveKv>(a).size(), 1u);   // chunk 2 moves to w1, which started the item
  s_->KvMoveFailed("j", 0, 2, chunks[2].attempt, absl::UnavailableError("lost"), now_);
  EXPECT_EQ(Only<ReleaseKv>(Take()).size(), 1u);  // whatever w1 may have kept of it
  EXPECT_FALSE(s_->TaskSucceeded(chunks[1].task, now_));
  EXPECT_EQ(s_->stats().kv_bytes_held, 600);
  Dispatch final = One();
  EXPECT_EQ(final.kind, TaskKind::kFinal);
  EXPECT_FALSE(final.whole);
  EXPECT_EQ(final.worker, "w2");  // holds 300 of 600 bytes
  ASSERT_EQ(final.sources.size(), 3u);
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(final.sources[c].chunk, c);
    EXPECT_EQ(final.sources[c].worker, chunks[c].worker);
    EXPECT_EQ(final.sources[c].attempt, chunks[c].attempt);
  }
  EXPECT_TRUE(s_->TaskSucceeded(final.task, now_));
  std::vector<ReleaseKv> released = Only<ReleaseKv>(Take());
  ASSERT_EQ(released.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(released[i].worker, "w" + std::to_string(i + 1));
    EXPECT_EQ(released[i].attempt, -1);
  }
  EXPECT_EQ(s_->stats().kv_bytes_held, 0);
  EXPECT_FALSE(s_->TaskSucceeded(final.task, now_));  // a repeat completes nothing
}

TEST_F(SchedulerTest, FinalTieGoesToLowestWorkerId) {
  Start(Options(Placement::kSpread), {"wb", "wa"});
  s_->AddJob("j", {Item("j", 0, {50, 50})}, now_);
  std::vector<Dispatch> chunks = Dispatches();
  ASSERT_EQ(chunks.size(), 2u);
  s_->TaskSucceeded(chunks[1].task, now_);
  s_->TaskSucceeded(chunks[0].task, now_);
  EXPECT_EQ(One().worker, "wa");
}

TEST_F(SchedulerTest, FinalWaitsForItsBusyHolder) {
  Start(Options(Placement::kSpread), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0, {300, 100}), Item("j", 1, {10})}, now_);
  std::vector<Dispatch> a = Dispatches();  // w1: item 0 chunk 0, w2: item 0 chunk 1
  ASSERT_EQ(a.size(), 2u);
  s_->TaskSucceeded(a[0].task, now_);
  Dispatch b = One();  // w1 starts item 1
  EXPECT_EQ(b.worker, "w1");
  EXPECT_EQ(b.item, 1);
  s_->TaskSucceeded(a[1].task, now_);
  EXPECT_TRUE(Dispatches().empty());  // item 0's final waits for w1 (300 bytes), w2 idles
  EXPECT_EQ(s_->stats().workers_idle, 1);
  s_->TaskSucceeded(b.task, now_);
  Dispatch f = One();  // item 0 first (input order); item 1's final waits again
  EXPECT_EQ(f.worker, "w1");
  EXPECT_EQ(f.item, 0);
}

TEST_F(SchedulerTest, AutoSpreadsWhenWorkersWouldIdleAndRunsWholeUnderLoad) {
  Start(Options(Placement::kAuto), {"w1", "w2", "w3"});
  s_->AddJob("one", {Item("one", 0, {10, 10, 10})}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 3u);
  for (const Dispatch& x : d) EXPECT_EQ(x.kind, TaskKind::kChunk);

  Start(Options(Placement::kAuto), {"w1", "w2", "w3"});
  s_->AddJob("three", {Item("three", 0, {10, 10}), Item("three", 1, {10, 10}), Item("three", 2, {10, 10})}, now_);
  d = Dispatches();
  ASSERT_EQ(d.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(d[i].kind, TaskKind::kFinal);
    EXPECT_TRUE(d[i].whole);
    EXPECT_EQ(d[i].item, i);
  }
}

TEST_F(SchedulerTest, AutoSpreadsAnItemTooBigForEveryBudget) {
  Start(Options(Placement::kAuto), {"w1"}, /*budget=*/250);
  s_->AddJob("j", {Item("j", 0, {100, 100, 100}), Item("j", 1, {10})}, now_);
  Dispatch d = One();  // 2 queued >= 1 idle, but 300 bytes fit no worker
  EXPECT_EQ(d.kind, TaskKind::kChunk);
}

TEST_F(SchedulerTest, AutoLeavesAWholeItemToAWorkerWhereItFits) {
  s_ = std::make_unique<Scheduler>(Options(Placement::kAuto), now_);
  s_->WorkerJoined("small", WorkerCaps{100}, now_);
  s_->WorkerJoined("big", WorkerCaps{0}, now_);
  s_->AddJob("j", {Item("j", 0, {100, 100}), Item("j", 1, {100, 100}), Item("j", 2, {100, 100})}, now_);
  Dispatch d = One();
  EXPECT_EQ(d.worker, "big");
  EXPECT_TRUE(d.whole);
}

// ---------------------------------------------------------------- kAuto cost model

// A long document: `chunks` middle chunks of 1000 tokens (anchor included) and 1 MB of
// K/V each; the final computes 600 tokens itself and decodes 10.
ItemSpec LongDoc(const std::string& job, int64_t index, int chunks) {
  ItemSpec spec;
  spec.job_id = job;
  spec.item = index;
  spec.n_middle = chunks;
  spec.chunk_kv_bytes.assign(chunks, 1'000'000);
  spec.chunk_tokens.assign(chunks, 1000);
  spec.final_tokens = 600;
  spec.prompt_tokens = 900 * chunks + 600;
  spec.max_new_tokens = 10;
  return spec;
}

// kAuto with priors: 1000 prompt tokens/s, 100 decoded tokens/s, no task overhead, and
// K/V moved at `transfer_bytes_per_s`.
SchedulerOptions CostOptions(double transfer_bytes_per_s) {
  SchedulerOptions o = Options(Placement::kAuto);
  o.deadline_base_ms = 1'000'000;
  o.prior_prefill_tokens_per_s = 1000;
  o.prior_decode_tokens_per_s = 100;
  o.prior_task_overhead_s = 0;
  o.prior_transfer_bytes_per_s = transfer_bytes_per_s;
  return o;
}

TEST_F(SchedulerTest, EstimateFollowsTheCostModel) {
  Start(CostOptions(1e8), {"w1"});
  const PlacementEstimate e = s_->Estimate(LongDoc("j", 0, 8), /*workers=*/4);
  EXPECT_DOUBLE_EQ(e.whole_s, 7.8 + 0.1);  // 7800 tokens at 1000/s, 10 decoded at 100/s
  EXPECT_EQ(e.spread_workers, 4);
  EXPECT_EQ(e.kv_moved_bytes, 6'000'000);  // 8 MB, the final's worker holds 2 MB
  // 2 waves of 1000-token chunks, 6 MB at 100 MB/s, the final's 600 tokens, decoding.
  EXPECT_DOUBLE_EQ(e.spread_s, 2.0 + 0.06 + 0.6 + 0.1);
  EXPECT_DOUBLE_EQ(e.spread_work_s, 8.0 + 0.06 + 0.6 + 0.1);  // every chunk, once
  EXPECT_EQ(s_->Estimate(LongDoc("j", 0, 8), 100).spread_workers, 8);  // one chunk each at most
  EXPECT_EQ(s_->costs().samples, 0);
}

TEST_F(SchedulerTest, AutoSpreadsALongDocOnIdleWorkersWhenTransferIsFast) {
  Start(CostOptions(1e9), {"w1", "w2", "w3", "w4"});
  s_->AddJob("j", {LongDoc("j", 0, 8)}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 4u);
  for (const Dispatch& x : d) EXPECT_EQ(x.kind, TaskKind::kChunk);
}

TEST_F(SchedulerTest, AutoRunsALongDocWholeWhenTransferIsSlow) {
  Start(CostOptions(1e5), {"w1", "w2", "w3", "w4"});  // 6 MB would take 60 s
  s_->AddJob("j", {LongDoc("j", 0, 8)}, now_);
  Dispatch d = One();
  EXPECT_EQ(d.kind, TaskKind::kFinal);
  EXPECT_TRUE(d.whole);
}

TEST_F(SchedulerTest, AutoRunsWholeWhileQueuedDocsOutnumberIdleWorkers) {
  Start(CostOptions(1e12), {"w1", "w2", "w3"});
  s_->AddJob("j", {LongDoc("j", 0, 8), LongDoc("j", 1, 8), LongDoc("j", 2, 8), LongDoc("j", 3, 8)}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 3u);
  for (const Dispatch& x : d) {
    EXPECT_EQ(x.kind, TaskKind::kFinal);
    EXPECT_TRUE(x.whole);
  }
}

TEST_F(SchedulerTest, AutoSpreadsUnderLoadWhenMeasuredChunksAreMuchCheaper) {
  Start(CostOptions(1e12), {"w1", "w2"});
  s_->AddJob("c", {LongDoc("c", 0, 2)}, now_);
  std::vector<Dispatch> c = Dispatches();
  ASSERT_EQ(c.size(), 2u);  // alone on 2 workers: spread
  s_->TaskSucceeded(c[0].task, now_, TaskStats{1000, 0.1, 0, 0, 0, 0});  // 10000 tokens/s
  s_->TaskSucceeded(c[1].task, now_, TaskStats{1000, 0.1, 0, 0, 0, 0});
  Dispatch f = One();
  s_->TaskSucceeded(f.task, now_, TaskStats{0, 6.0, 0, 0, 0, 0});  // final: 600 tokens at 100/s
  // 3 queued >= 2 workers, yet 8000 chunk tokens cost 0.8 s against 78 s whole: spread.
  s_->AddJob("d", {LongDoc("d", 0, 8), LongDoc("d", 1, 8), LongDoc("d", 2, 8)}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 2u);
  for (const Dispatch& x : d) {
    EXPECT_EQ(x.kind, TaskKind::kChunk);
    EXPECT_EQ(x.item, 0);
  }
}

TEST_F(SchedulerTest, AutoSpreadsOneItemToMeasureTheChunkRateThenFollowsTheRates) {
  Start(CostOptions(1e12), {"w1"});
  s_->AddJob("a", {LongDoc("a", 0, 2), LongDoc("a", 1, 2), LongDoc("a", 2, 2), LongDoc("a", 3, 2)}, now_);
  Dispatch d0 = One();
  ASSERT_TRUE(d0.whole);  // nothing measured: whole under load
  s_->TaskSucceeded(d0.task, now_, TaskStats{0, 2.4, 0, 0, 0, 0});  // 1000 tokens/s
  Dispatch probe = One();
  EXPECT_EQ(probe.kind, TaskKind::kChunk);  // the chunk rate was never measured: spread once
  EXPECT_EQ(probe.item, 1);
  s_->TaskSucceeded(probe.task, now_, TaskStats{1000, 1.0, 0, 0, 0, 0});  // 1000 tokens/s too
  Dispatch c1 = One();
  s_->TaskSucceeded(c1.task, now_, TaskStats{1000, 1.0, 0, 0, 0, 0});
  Dispatch f1 = One();
  EXPECT_FALSE(f1.whole);
  s_->TaskSucceeded(f1.task, now_, TaskStats{0, 0.6, 0, 0, 0, 0});
  Dispatch d2 = One();  // equal rates: whole has less work
  EXPECT_TRUE(d2.whole);
  EXPECT_EQ(d2.item, 2);
}

TEST_F(SchedulerTest, AutoSpreadsADocWhoseKvExceedsEveryBudgetEvenWhenTransferIsSlow) {
  Start(CostOptions(1), {"w1", "w2"}, /*budget=*/5'000'000);  // 8 MB fits nowhere
  s_->AddJob("j", {LongDoc("j", 0, 8), LongDoc("j", 1, 8)}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 2u);
  for (const Dispatch& x : d) EXPECT_EQ(x.kind, TaskKind::kChunk);
}

TEST_F(SchedulerTest, MeasuredTransferRateChangesTheDecision) {
  Start(CostOptions(1e9), {"w1", "w2"});
  s_->AddJob("a", {LongDoc("a", 0, 2)}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 2u);  // fast by the prior: spread
  now_ += 1000;
  s_->TaskSucceeded(d[0].task, now_, TaskStats{1000, 0.5, 0, 0, 0, 0});
  s_->TaskSucceeded(d[1].task, now_, TaskStats{1000, 0.5, 0, 0, 0, 0});
  CostEstimates c = s_->costs();
  EXPECT_DOUBLE_EQ(c.chunk_s_per_token, 0.5 / 1000);
  EXPECT_DOUBLE_EQ(c.final_s_per_token, 0.5 / 1000);  // stands in until a final is measured
  EXPECT_DOUBLE_EQ(c.task_overhead_s, 0.5);           // 1 s of wall time, 0.5 s reported
  Dispatch f = One();
  EXPECT_FALSE(f.whole);
  now_ += 2000;
  // The final fetched 1 MB in 10 s (100 KB/s) within 10.3 s of prefill, decoded 10 in 0.1 s.
  EXPECT_TRUE(s_->TaskSucceeded(f.task, now_, TaskStats{0, 10.3, 10, 0.1, 1'000'000, 10.0}));
  c = s_->costs();
  EXPECT_DOUBLE_EQ(c.transfer_s_per_byte, 1e-5);
  EXPECT_NEAR(c.final_s_per_token, 0.3 / 600, 1e-12);  // prefill less the fetch, 600 tokens
  EXPECT_DOUBLE_EQ(c.decode_s_per_token, 0.01);
  EXPECT_EQ(c.samples, 2 + 2 + 3 + 1);  // 2 chunk rates + overheads, final: 3 rates + overhead
  s_->AddJob("b", {LongDoc("b", 0, 2)}, now_);
  Dispatch w = One();  // 1 MB to move now costs 10 s: whole
  EXPECT_EQ(w.kind, TaskKind::kFinal);
  EXPECT_TRUE(w.whole);
}

TEST_F(SchedulerTest, JobsShareWorkersRoundRobin) {
  Start(Options(Placement::kWhole), {"w1"});
  s_->AddJob("a", {Item("a", 0), Item("a", 1), Item("a", 2)}, now_);
  Dispatch first = One();
  s_->AddJob("b", {Item("b", 0), Item("b", 1), Item("b", 2)}, now_);
  std::vector<std::string> order = {first.job_id + std::to_string(first.item)};
  uint64_t task = first.task;
  for (int i = 0; i < 5; ++i) {
    s_->TaskSucceeded(task, now_);
    Dispatch d = One();
    order.push_back(d.job_id + std::to_string(d.item));
    task = d.task;
  }
  EXPECT_EQ(order, (std::vector<std::string>{"a0", "b0", "a1", "b1", "a2", "b2"}));
}

TEST_F(SchedulerTest, WorkerDeathMidChunkCountsAndRecomputes) {
  Start(Options(Placement::kSpread), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0, {10, 10})}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 2u);
  s_->WorkerLeft("w1", now_);
  EXPECT_EQ(s_->ItemFailures("j", 0), 1);
  EXPECT_TRUE(Dispatches().empty());  // w2 busy, w1 gone
  s_->WorkerJoined("w3", WorkerCaps{}, now_);
  Dispatch redo = One();
  EXPECT_EQ(redo.worker, "w3");
  EXPECT_EQ(redo.chunk, 0);
  EXPECT_GT(redo.attempt, d[1].attempt);
  s_->TaskSucceeded(redo.task, now_);
  s_->TaskSucceeded(d[1].task, now_);
  Dispatch f = One();
  EXPECT_EQ(f.kind, TaskKind::kFinal);
  EXPECT_EQ(f.worker, "w2");  // 10 vs 10 bytes: lowest id
  EXPECT_TRUE(s_->TaskSucceeded(f.task, now_));
  EXPECT_EQ(s_->stats().items_done, 1);
}

TEST_F(SchedulerTest, WorkerDeathMidFinalRecomputesItsChunksAndCompletesOnce) {
  Start(Options(Placement::kSpread), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0, {10, 20})}, now_);
  std::vector<Dispatch> d = Dispatches();
  s_->TaskSucceeded(d[0].task, now_);
  s_->TaskSucceeded(d[1].task, now_);
  Dispatch f = One();
  ASSERT_EQ(f.worker, "w2");
  s_->WorkerLeft("w2", now_);
  EXPECT_EQ(s_->ItemFailures("j", 0), 1);
  EXPECT_EQ(s_->stats().kv_bytes_held, 10);
  Dispatch redo = One();  // chunk 1 was on w2: recomputed on w1
  EXPECT_EQ(redo.worker, "w1");
  EXPECT_EQ(redo.chunk, 1);
  s_->TaskSucceeded(redo.task, now_);
  Dispatch f2 = One();
  EXPECT_EQ(f2.worker, "w1");
  ASSERT_EQ(f2.sources.size(), 2u);
  EXPECT_EQ(f2.sources[1].attempt, redo.attempt);
  EXPECT_FALSE(s_->TaskSucceeded(f.task, now_));  // the dead worker's task is unknown now
  EXPECT_TRUE(s_->TaskSucceeded(f2.task, now_));
  EXPECT_FALSE(s_->TaskSucceeded(f2.task, now_));
  EXPECT_EQ(s_->stats().items_done, 1);
}

// A draining worker's deregistration can overtake its last result: the scheduler writes
// the final off and queues the item again, then the result arrives and is committed.
// ItemCommitted settles the item: the redo is cancelled, its K/V released, the job done.
TEST_F(SchedulerTest, AResultCommittedAfterItsWorkerLeftSettlesTheItem) {
  Start(Options(Placement::kSpread), {"w1", "w2", "w3"});
  s_->AddJob("j", {Item("j", 0, {10, 20}), Item("j", 1)}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 3u);  // chunks 0 and 1 of item 0, item 1 whole
  s_->TaskSucceeded(d[0].task, now_);
  s_->TaskSucceeded(d[1].task, now_);
  EXPECT_TRUE(s_->TaskSucceeded(d[2].task, now_));
  std::vector<Dispatch> after = Dispatches();
  ASSERT_EQ(after.size(), 1u);
  const Dispatch f = after[0];
  ASSERT_EQ(f.kind, TaskKind::kFinal);
  s_->WorkerLeft(f.worker, now_);  // deregistered before its result arrived
  EXPECT_FALSE(s_->JobFinished("j"));
  std::vector<Action> redo = Take();  // the item again: a chunk it held, or its final
  ASSERT_FALSE(Only<Dispatch>(redo).empty());
  const Dispatch r = Only<Dispatch>(redo)[0];
  EXPECT_FALSE(s_->TaskSucceeded(f.task, now_));  // the late result: unknown to the scheduler
  EXPECT_TRUE(s_->ItemCommitted("j", 0, now_));   // ... but committed: the item is done
  EXPECT_TRUE(s_->JobFinished("j"));
  EXPECT_EQ(s_->stats().items_done, 2);
  EXPECT_EQ(s_->stats().kv_bytes_held, 0);
  std::vector<Action> settle = Take();
  std::vector<CancelTask> cancels = Only<CancelTask>(settle);
  ASSERT_EQ(cancels.size(), 1u);  // the redo, still running
  EXPECT_EQ(cancels[0].task, r.task);
  EXPECT_FALSE(s_->ItemCommitted("j", 0, now_));  // once only
  EXPECT_FALSE(s_->ItemCommitted("j", 9, now_));
  EXPECT_FALSE(s_->ItemCommitted("nope", 0, now_));
  s_->TaskFailed(r.task, absl::CancelledError("cancelled"), now_);  // the redo's outcome
  EXPECT_TRUE(s_->JobFinished("j"));
  EXPECT_EQ(s_->ItemFailures("j", 0), 1);  // the loss counted; the cancelled redo not
  EXPECT_EQ(s_->stats().tasks_in_flight, 0);
}

TEST_F(SchedulerTest, HeldChunksLostWithTheirHolderAreRecomputedWithoutCounting) {
  Start(Options(Placement::kSpread), {"w1", "w2", "w3"});
  s_->AddJob("j", {Item("j", 0, {10, 10})}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 2u);
  s_->TaskSucceeded(d[0].task, now_);  // w1 holds chunk 0; chunk 1 still runs on w2
  s_->WorkerLeft("w1", now_);
  EXPECT_EQ(s_->ItemFailures("j", 0), 0);
  EXPECT_EQ(s_->stats().kv_bytes_held, 0);
  Dispatch redo = One();
  EXPECT_EQ(redo.worker, "w3");
  EXPECT_EQ(redo.chunk, 0);
}

TEST_F(SchedulerTest, FinalWhoseSourceDiedIsNotCharged) {
  Start(Options(Placement::kSpread), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0, {10, 20})}, now_);
  std::vector<Dispatch> d = Dispatches();
  s_->TaskSucceeded(d[0].task, now_);
  s_->TaskSucceeded(d[1].task, now_);
  Dispatch f = One();
  ASSERT_EQ(f.worker, "w2");
  s_->WorkerLeft("w1", now_);
  s_->TaskFailed(f.task, absl::UnavailableError("fetch chunk 0 failed"), now_);
  EXPECT_EQ(s_->ItemFailures("j", 0), 0);
}

TEST_F(SchedulerTest, DeadlineRetriesElsewhereAndKeepsTheWorkerBusyUntilItsOutcome) {
  Start(Options(Placement::kWhole), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0), Item("j", 1)}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 2u);
  s_->TaskSucceeded(d[1].task, now_);  // w2 free; nothing left to start
  EXPECT_EQ(s_->next_deadline_ms(), d[0].deadline_ms);
  now_ = d[0].deadline_ms;
  s_->WorkerHeartbeat("w1", now_);
  s_->WorkerHeartbeat("w2", now_);
  s_->Tick(now_);
  std::vector<Action> a = Take();
  std::vector<CancelTask> cancels = Only<CancelTask>(a);
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(cancels[0].task, d[0].task);
  EXPECT_EQ(cancels[0].worker, "w1");
  std::vector<Dispatch> retry = Only<Dispatch>(a);
  ASSERT_EQ(retry.size(), 1u);
  EXPECT_EQ(retry[0].worker, "w2");
  EXPECT_GT(retry[0].attempt, d[0].attempt);
  EXPECT_EQ(s_->ItemFailures("j", 0), 1);
  EXPECT_EQ(s_->stats().tasks_in_flight, 2);
  EXPECT_EQ(s_->stats().workers_idle, 0);  // w1 still runs the given-up task
  s_->AddJob("k", {Item("k", 0)}, now_);
  EXPECT_TRUE(Dispatches().empty());
  s_->TaskFailed(d[0].task, absl::CancelledError("cancelled"), now_);
  EXPECT_EQ(s_->ItemFailures("j", 0), 1);  // counted once, at the deadline
  Dispatch k = One();
  EXPECT_EQ(k.worker, "w1");
  EXPECT_EQ(k.job_id, "k");
}

TEST_F(SchedulerTest, GivenUpFinalThatSucceedsCompletesAndCancelsTheRetry) {
  Start(Options(Placement::kWhole), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0)}, now_);
  Dispatch d = One();
  now_ = d.deadline_ms;
  s_->WorkerHeartbeat("w1", now_);
  s_->WorkerHeartbeat("w2", now_);
  s_->Tick(now_);
  Dispatch retry = One();
  EXPECT_TRUE(s_->TaskSucceeded(d.task, now_));
  std::vector<CancelTask> cancels = Only<CancelTask>(Take());
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(cancels[0].task, retry.task);
  EXPECT_FALSE(s_->TaskSucceeded(retry.task, now_));
  EXPECT_EQ(s_->stats().items_done, 1);
  EXPECT_EQ(s_->stats().tasks_in_flight, 0);
}

TEST_F(SchedulerTest, GivenUpChunkThatSucceedsIsUsedAndTheRetryReleased) {
  Start(Options(Placement::kSpread), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0, {10})}, now_);
  Dispatch d = One();
  now_ = d.deadline_ms;
  s_->WorkerHeartbeat("w1", now_);
  s_->WorkerHeartbeat("w2", now_);
  s_->Tick(now_);
  Dispatch retry = One();
  ASSERT_EQ(retry.worker, "w2");
  s_->TaskSucceeded(d.task, now_);  // the late result is good: use it
  std::vector<Action> a = Take();
  ASSERT_EQ(Only<CancelTask>(a).size(), 1u);
  EXPECT_EQ(Only<CancelTask>(a)[0].task, retry.task);
  std::vector<Dispatch> f = Only<Dispatch>(a);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].worker, "w1");
  EXPECT_EQ(f[0].sources[0].attempt, d.attempt);
  s_->TaskSucceeded(retry.task, now_);  // its K/V is not needed
  std::vector<ReleaseKv> r = Only<ReleaseKv>(Take());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].worker, "w2");
  EXPECT_EQ(r[0].attempt, retry.attempt);
  EXPECT_EQ(s_->stats().kv_bytes_held, 10);
}

TEST_F(SchedulerTest, MaxAttemptsFailsTheItemOnceAndReleasesItsKv) {
  Start(Options(Placement::kSpread, /*max_attempts=*/2), {"w1", "w2", "w3"});
  s_->AddJob("j", {Item("j", 0, {10, 10, 10})}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 3u);
  s_->TaskSucceeded(d[0].task, now_);
  s_->TaskFailed(d[1].task, absl::InternalError("boom"), now_);
  Dispatch again = One();
  EXPECT_EQ(again.chunk, 1);
  s_->TaskFailed(again.task, absl::InternalError("boom again"), now_);
  std::vector<Action> a = Take();
  std::vector<ItemFailed> failed = Only<ItemFailed>(a);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_NE(failed[0].error.find("boom again"), std::string::npos) << failed[0].error;
  EXPECT_NE(failed[0].error.find("2 of 2"), std::string::npos) << failed[0].error;
  std::vector<CancelTask> cancels = Only<CancelTask>(a);
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(cancels[0].task, d[2].task);
  std::vector<ReleaseKv> released = Only<ReleaseKv>(a);
  ASSERT_EQ(released.size(), 1u);
  EXPECT_EQ(released[0].worker, "w1");
  EXPECT_EQ(released[0].attempt, -1);
  EXPECT_TRUE(Only<Dispatch>(a).empty());
  s_->TaskSucceeded(d[2].task, now_);  // the cancelled chunk finished anyway
  a = Take();
  ASSERT_EQ(Only<ReleaseKv>(a).size(), 1u);
  EXPECT_EQ(Only<ReleaseKv>(a)[0].attempt, d[2].attempt);
  EXPECT_TRUE(Only<ItemFailed>(a).empty());
  EXPECT_TRUE(s_->JobFinished("j"));
  Scheduler::Stats st = s_->stats();
  EXPECT_EQ(st.items_failed, 1);
  EXPECT_EQ(st.items_done, 0);
  EXPECT_EQ(st.kv_bytes_held, 0);
  EXPECT_EQ(st.tasks_in_flight, 0);
}

TEST_F(SchedulerTest, ResourceExhaustedMovesTheChunkWithoutCounting) {
  Start(Options(Placement::kSpread), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0, {10}), Item("j", 1, {10})}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 2u);  // w1: item 0, w2: item 1
  s_->TaskFailed(d[0].task, absl::ResourceExhaustedError("full"), now_);
  EXPECT_EQ(s_->ItemFailures("j", 0), 0);
  EXPECT_TRUE(Dispatches().empty());  // not back on w1
  s_->TaskSucceeded(d[1].task, now_);
  Dispatch f = One();  // item 1's final on its holder
  EXPECT_EQ(f.worker, "w2");
  EXPECT_EQ(f.item, 1);
  s_->TaskSucceeded(f.task, now_);
  Dispatch moved = One();
  EXPECT_EQ(moved.worker, "w2");
  EXPECT_EQ(moved.item, 0);
  EXPECT_EQ(moved.chunk, 0);
}

TEST_F(SchedulerTest, NoRoomAnywhereFailsTheItemClearly) {
  Start(Options(Placement::kSpread), {"w1"});
  s_->AddJob("j", {Item("j", 0, {10})}, now_);
  Dispatch d = One();
  s_->TaskFailed(d.task, absl::ResourceExhaustedError("full"), now_);
  std::vector<ItemFailed> failed = Only<ItemFailed>(Take());
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_NE(failed[0].error.find("RESOURCE_EXHAUSTED"), std::string::npos);
  EXPECT_TRUE(s_->JobFinished("j"));
  s_->AddJob("k", {Item("k", 0, {10})}, now_);
  EXPECT_EQ(One().job_id, "k");  // the worker's refusal was about that chunk only
}

TEST_F(SchedulerTest, BudgetLimitsChunksPerWorker) {
  Start(Options(Placement::kSpread), {"w1"}, /*budget=*/250);
  s_->AddJob("j", {Item("j", 0, {100, 100, 100})}, now_);
  Dispatch c0 = One();
  s_->TaskSucceeded(c0.task, now_);
  Dispatch c1 = One();
  s_->TaskSucceeded(c1.task, now_);
  std::vector<ItemFailed> failed = Only<ItemFailed>(Take());  // 300 bytes never fit in 250
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_NE(failed[0].error.find("RESOURCE_EXHAUSTED"), std::string::npos);
  EXPECT_EQ(s_->stats().kv_bytes_held, 0);
}

TEST_F(SchedulerTest, CancelJobStopsTasksReleasesKvAndFinishesTheJob) {
  Start(Options(Placement::kSpread), {"w1", "w2", "w3"});
  s_->AddJob("j", {Item("j", 0, {10, 10}), Item("j", 1, {10})}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 3u);
  s_->TaskSucceeded(d[0].task, now_);
  Take();
  s_->CancelJob("j", now_);
  std::vector<Action> a = Take();
  std::vector<CancelTask> cancels = Only<CancelTask>(a);
  ASSERT_EQ(cancels.size(), 2u);
  std::vector<ReleaseKv> released = Only<ReleaseKv>(a);
  ASSERT_EQ(released.size(), 1u);
  EXPECT_EQ(released[0].worker, d[0].worker);
  EXPECT_TRUE(Only<ItemFailed>(a).empty());
  EXPECT_TRUE(s_->JobFinished("j"));
  s_->TaskSucceeded(d[1].task, now_);
  ASSERT_EQ(Only<ReleaseKv>(Take()).size(), 1u);
  s_->TaskFailed(d[2].task, absl::CancelledError("cancelled"), now_);
  Scheduler::Stats st = s_->stats();
  EXPECT_EQ(st.items_queued + st.items_running + st.items_done + st.items_failed, 0);
  EXPECT_EQ(st.tasks_in_flight, 0);
  EXPECT_EQ(st.kv_bytes_held, 0);
  EXPECT_EQ(st.workers_idle, 3);
}

TEST_F(SchedulerTest, DrainingWorkerGetsNoTasksAndNoFinal) {
  Start(Options(Placement::kSpread), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0, {300, 100}), Item("j", 1)}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 2u);
  s_->WorkerDraining("w1", now_);
  s_->TaskSucceeded(d[0].task, now_);
  EXPECT_TRUE(Dispatches().empty());  // w1 drains: item 1 waits
  EXPECT_FALSE(s_->WorkerDrained("w1"));  // still holds chunk 0
  s_->TaskSucceeded(d[1].task, now_);
  Dispatch f = One();  // w1 holds more, but drains: the final goes to w2
  EXPECT_EQ(f.worker, "w2");
  EXPECT_EQ(f.sources[0].worker, "w1");
  EXPECT_TRUE(s_->TaskSucceeded(f.task, now_));
  EXPECT_TRUE(s_->WorkerDrained("w1"));
  Dispatch next = One();
  EXPECT_EQ(next.worker, "w2");
  EXPECT_EQ(next.item, 1);
}

TEST_F(SchedulerTest, WorkersViewShowsEachWorkersTaskHeldKvAndDraining) {
  Start(Options(Placement::kSpread), {"w1", "w2"}, /*budget=*/1000);
  s_->AddJob("j", {Item("j", 7, {300, 100})}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 2u);
  now_ = 250;
  s_->WorkerHeartbeat("w2", now_);
  std::vector<Scheduler::WorkerView> v = s_->Workers();
  ASSERT_EQ(v.size(), 2u);
  for (const Scheduler::WorkerView& w : v) {
    const Dispatch& mine = d[0].worker == w.worker ? d[0] : d[1];
    EXPECT_EQ(w.task, mine.task) << w.worker;
    EXPECT_EQ(w.kind, TaskKind::kChunk);
    EXPECT_EQ(w.job_id, "j");
    EXPECT_EQ(w.item, 7);  // the item's index in its job, not its place in the queue
    EXPECT_EQ(w.chunk, mine.chunk);
    EXPECT_EQ(w.attempt, mine.attempt);
    EXPECT_EQ(w.dispatched_ms, 0);
    EXPECT_EQ(w.kv_budget_bytes, 1000);
    EXPECT_FALSE(w.draining);
  }
  EXPECT_EQ(v[0].worker, "w1");  // by id
  EXPECT_EQ(v[0].last_beat_ms, 0);
  EXPECT_EQ(v[1].last_beat_ms, 250);
  s_->TaskSucceeded(d[0].task, now_);
  s_->WorkerDraining(d[0].worker, now_);
  v = s_->Workers();
  const Scheduler::WorkerView& done = v[0].worker == d[0].worker ? v[0] : v[1];
  EXPECT_EQ(done.task, 0u);  // idle, holding its chunk, draining
  EXPECT_TRUE(done.draining);
  EXPECT_EQ(done.kv_bytes_held, d[0].chunk == 0 ? 300 : 100);
}

TEST_F(SchedulerTest, SilentWorkerIsDeclaredDead) {
  SchedulerOptions options = Options(Placement::kWhole);
  options.deadline_base_ms = 100000;
  Start(options, {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0)}, now_);
  Dispatch d = One();
  EXPECT_EQ(s_->next_deadline_ms(), 1001);
  now_ = 900;
  s_->WorkerHeartbeat("w2", now_);
  now_ = s_->next_deadline_ms();
  EXPECT_EQ(now_, 1001);
  s_->Tick(now_);
  Dispatch retry = One();
  EXPECT_EQ(retry.worker, "w2");
  EXPECT_EQ(s_->ItemFailures("j", 0), 1);
  EXPECT_EQ(s_->stats().workers, 1);
  EXPECT_FALSE(s_->TaskSucceeded(d.task, now_));
}

TEST_F(SchedulerTest, RestartContinuesAttemptsAndFailureCounts) {
  Start(Options(Placement::kWhole, /*max_attempts=*/3), {"w1", "w2", "w3"});
  ItemSpec twice = Item("j", 0);
  twice.failures = 2;
  ItemSpec seen = Item("j", 1);
  seen.failures = 1;
  seen.last_attempt = 2500;
  ItemSpec spent = Item("j", 2);
  spent.failures = 3;
  s_->AddJob("j", {twice, seen, spent}, now_);
  std::vector<Action> a = Take();
  std::vector<ItemFailed> failed = Only<ItemFailed>(a);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].item, 2);
  std::vector<Dispatch> d = Only<Dispatch>(a);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].attempt, 2001);
  EXPECT_EQ(d[1].attempt, 2501);
  s_->TaskFailed(d[0].task, absl::InternalError("third"), now_);
  failed = Only<ItemFailed>(Take());
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].item, 0);
  EXPECT_EQ(s_->ItemFailures("j", 0), 3);
}

// ---------------------------------------------------------------- K/V moves

// w1 starts the item (its final worker), w2 and w3 take chunks 1 and 2.
class MoveTest : public SchedulerTest {
 protected:
  void SetUp() override {
    Start(Options(Placement::kSpread), {"w1", "w2", "w3"});
    s_->AddJob("j", {Item("j", 0, {100, 100, 100})}, now_);
    chunks_ = Dispatches();
    ASSERT_EQ(chunks_.size(), 3u);
    for (int c = 0; c < 3; ++c) ASSERT_EQ(chunks_[c].worker, "w" + std::to_string(c + 1));
  }
  // Chunk 1 succeeds on w2: the move to w1 it must produce.
  MoveKv SucceedChunk1() {
    s_->TaskSucceeded(chunks_[1].task, now_);
    std::vector<Action> a = Take();
    EXPECT_TRUE(Only<Dispatch>(a).empty());
    std::vector<MoveKv> m = Only<MoveKv>(a);
    EXPECT_EQ(m.size(), 1u);
    return m.empty() ? MoveKv{} : m[0];
  }
  std::vector<Dispatch> chunks_;
};

TEST_F(MoveTest, ChunkDoneElsewhereMovesToTheFinalWorkerWhichThenHoldsIt) {
  const MoveKv m = SucceedChunk1();
  EXPECT_EQ(m.worker, "w1");
  EXPECT_EQ(m.from, "w2");
  EXPECT_EQ(m.job_id, "j");
  EXPECT_EQ(m.item, 0);
  EXPECT_EQ(m.chunk, 1);
  EXPECT_EQ(m.attempt, chunks_[1].attempt);
  EXPECT_EQ(s_->stats().kv_bytes_held, 200);  // on w2, and taken on w1 for the move
  EXPECT_EQ(s_->stats().moves_in_flight, 1);
  EXPECT_EQ(s_->stats().workers_idle, 1);     // a move occupies no worker: w2 is free
  s_->KvMoved("j", 0, 1, m.attempt, now_);
  std::vector<ReleaseKv> r = Only<ReleaseKv>(Take());
  ASSERT_EQ(r.size(), 1u);  // exactly w2's copy of that chunk
  EXPECT_EQ(r[0].worker, "w2");
  EXPECT_EQ(r[0].attempt, m.attempt);
  Scheduler::Stats st = s_->stats();
  EXPECT_EQ(st.kv_bytes_held, 100);
  EXPECT_EQ(st.moves_in_flight, 0);
  EXPECT_EQ(st.kv_moves, 1);
  s_->TaskSucceeded(chunks_[0].task, now_);  // on w1 itself: nothing to move
  EXPECT_TRUE(Only<MoveKv>(Take()).empty());
  s_->TaskSucceeded(chunks_[2].task, now_);  // the last one: the final fetches it itself
  std::vector<Action> a = Take();
  EXPECT_TRUE(Only<MoveKv>(a).empty());
  std::vector<Dispatch> f = Only<Dispatch>(a);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].worker, "w1");  // holds 200 of 300 bytes
  ASSERT_EQ(f[0].sources.size(), 3u);
  EXPECT_EQ(f[0].sources[0].worker, "w1");
  EXPECT_EQ(f[0].sources[1].worker, "w1");
  EXPECT_EQ(f[0].sources[1].attempt, chunks_[1].attempt);
  EXPECT_EQ(f[0].sources[2].worker, "w3");
  EXPECT_TRUE(s_->TaskSucceeded(f[0].task, now_));
  std::vector<ReleaseKv> end = Only<ReleaseKv>(Take());
  ASSERT_EQ(end.size(), 2u);
  EXPECT_EQ(end[0].worker, "w1");
  EXPECT_EQ(end[1].worker, "w3");
  EXPECT_EQ(s_->stats().kv_bytes_held, 0);
}

TEST_F(MoveTest, FailedMoveLeavesTheChunkWhereItWasWithoutCounting) {
  const MoveKv m = SucceedChunk1();
  s_->KvMoveFailed("j", 0, 1, m.attempt, absl::AbortedError("source unreachable"), now_);
  std::vector<Action> a = Take();
  std::vector<ReleaseKv> r = Only<ReleaseKv>(a);
  ASSERT_EQ(r.size(), 1u);  // whatever w1 kept of it
  EXPECT_EQ(r[0].worker, "w1");
  EXPECT_EQ(r[0].attempt, m.attempt);
  EXPECT_TRUE(Only<MoveKv>(a).empty());  // no second move of that attempt
  EXPECT_TRUE(Only<Dispatch>(a).empty());
  EXPECT_EQ(s_->ItemFailures("j", 0), 0);
  EXPECT_EQ(s_->stats().kv_bytes_held, 100);
  EXPECT_EQ(s_->stats().kv_moves, 0);
  s_->KvMoved("j", 0, 1, m.attempt, now_);  // a repeat outcome: unknown now, ignored
  EXPECT_TRUE(Take().empty());
  s_->TaskSucceeded(chunks_[0].task, now_);
  s_->TaskSucceeded(chunks_[2].task, now_);
  Dispatch f = One();
  EXPECT_EQ(f.worker, "w1");  // 100 bytes each: lowest id
  EXPECT_EQ(f.sources[1].worker, "w2");
  EXPECT_TRUE(s_->TaskSucceeded(f.task, now_));
  EXPECT_EQ(s_->stats().kv_bytes_held, 0);
}

TEST_F(MoveTest, FinalWorkerDeathLosesItsMovedChunksWithoutCounting) {
  s_->TaskSucceeded(chunks_[0].task, now_);  // w1 holds chunk 0 and is idle
  const MoveKv m = SucceedChunk1();
  s_->KvMoved("j", 0, 1, m.attempt, now_);
  Take();
  s_->WorkerLeft("w1", now_);
  EXPECT_EQ(s_->ItemFailures("j", 0), 0);
  EXPECT_EQ(s_->stats().kv_bytes_held, 0);  // chunks 0 and 1 went with w1
  Dispatch redo = One();                    // w2 is idle: chunk 0 again
  EXPECT_EQ(redo.worker, "w2");
  EXPECT_EQ(redo.chunk, 0);
  s_->TaskSucceeded(redo.task, now_);  // no final worker any more: no moves
  EXPECT_TRUE(Only<MoveKv>(Take()).empty());
}

TEST_F(MoveTest, MoveInFlightToAWorkerThatDiesIsForgotten) {
  const MoveKv m = SucceedChunk1();
  s_->WorkerLeft("w1", now_);  // ran chunk 0: that failure counts
  EXPECT_EQ(s_->ItemFailures("j", 0), 1);
  EXPECT_EQ(s_->stats().moves_in_flight, 0);
  EXPECT_EQ(s_->stats().kv_bytes_held, 100);  // chunk 1, still on w2
  Take();
  s_->KvMoveFailed("j", 0, 1, m.attempt, absl::UnavailableError("gone"), now_);
  EXPECT_TRUE(Only<ReleaseKv>(Take()).empty());  // nothing to tell a gone worker
}

TEST_F(MoveTest, MoveWhoseSourceDiedIsReleasedOnArrival) {
  const MoveKv m = SucceedChunk1();
  s_->WorkerLeft("w2", now_);  // chunk 1 is lost with its holder (w2 was idle: not counted)
  EXPECT_EQ(s_->ItemFailures("j", 0), 0);
  Take();
  s_->KvMoved("j", 0, 1, m.attempt, now_);  // it had arrived, but chunk 1 is queued again
  std::vector<ReleaseKv> r = Only<ReleaseKv>(Take());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].worker, "w1");
  EXPECT_EQ(r[0].attempt, m.attempt);
  EXPECT_EQ(s_->stats().kv_bytes_held, 0);
}

TEST_F(MoveTest, MoveOutcomeAfterTheItemEndedReleasesTheCopy) {
  const MoveKv m = SucceedChunk1();
  s_->CancelJob("j", now_);
  std::vector<ReleaseKv> r = Only<ReleaseKv>(Take());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].worker, "w2");
  EXPECT_EQ(s_->stats().kv_bytes_held, 100);  // the move's room on w1, until its outcome
  s_->KvMoved("j", 0, 1, m.attempt, now_);
  r = Only<ReleaseKv>(Take());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].worker, "w1");
  EXPECT_EQ(r[0].attempt, m.attempt);
  s_->TaskFailed(chunks_[0].task, absl::CancelledError("cancelled"), now_);
  s_->TaskFailed(chunks_[2].task, absl::CancelledError("cancelled"), now_);
  Scheduler::Stats st = s_->stats();
  EXPECT_EQ(st.kv_bytes_held, 0);
  EXPECT_EQ(st.moves_in_flight, 0);
  EXPECT_EQ(st.tasks_in_flight, 0);
}

TEST_F(MoveTest, MoveArrivingAfterTheFinalWasDispatchedIsNotUsed) {
  const MoveKv m = SucceedChunk1();
  s_->TaskSucceeded(chunks_[0].task, now_);
  s_->TaskSucceeded(chunks_[2].task, now_);
  Dispatch f = One();
  ASSERT_EQ(f.worker, "w1");
  EXPECT_EQ(f.sources[1].worker, "w2");  // the final reads chunk 1 from w2
  s_->KvMoved("j", 0, 1, m.attempt, now_);
  std::vector<ReleaseKv> r = Only<ReleaseKv>(Take());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].worker, "w1");  // not w2: the final may be fetching from it
  EXPECT_EQ(r[0].attempt, m.attempt);
  EXPECT_EQ(s_->stats().kv_moves, 0);
  EXPECT_EQ(s_->stats().kv_bytes_held, 300);
}

TEST_F(MoveTest, FailedFinalDropsTheChunksItsWorkerConsumed) {
  const MoveKv m = SucceedChunk1();
  s_->KvMoved("j", 0, 1, m.attempt, now_);
  s_->TaskSucceeded(chunks_[0].task, now_);
  s_->TaskSucceeded(chunks_[2].task, now_);
  std::vector<Dispatch> f = Only<Dispatch>(Take());
  ASSERT_EQ(f.size(), 1u);
  ASSERT_EQ(f[0].worker, "w1");
  // w1 lays its chunks 0 and 1 into the final cache and drops them; then it fails.
  s_->TaskFailed(f[0].task, absl::InternalError("boom"), now_);
  std::vector<Action> a = Take();
  std::vector<ReleaseKv> r = Only<ReleaseKv>(a);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].worker, "w1");
  EXPECT_EQ(r[0].attempt, chunks_[0].attempt);
  EXPECT_EQ(r[1].worker, "w1");
  EXPECT_EQ(r[1].attempt, chunks_[1].attempt);
  EXPECT_EQ(s_->ItemFailures("j", 0), 1);
  EXPECT_EQ(s_->stats().kv_bytes_held, 100);  // chunk 2 on w3
  std::vector<Dispatch> redo = Only<Dispatch>(a);
  ASSERT_EQ(redo.size(), 2u);
  EXPECT_EQ(redo[0].chunk, 0);
  EXPECT_EQ(redo[1].chunk, 1);
  EXPECT_EQ(redo[1].worker, "w2");
  s_->TaskSucceeded(redo[1].task, now_);  // a new attempt: moved again
  std::vector<MoveKv> again = Only<MoveKv>(Take());
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempt, redo[1].attempt);
}

TEST_F(SchedulerTest, FailedFinalRecomputesTheChunksItsWorkerHeld) {
  Start(Options(Placement::kSpread), {"w1", "w2"});
  s_->AddJob("j", {Item("j", 0, {10, 20})}, now_);
  std::vector<Dispatch> d = Dispatches();
  s_->TaskSucceeded(d[0].task, now_);
  s_->TaskSucceeded(d[1].task, now_);  // the last chunk: no move
  Dispatch f = One();
  ASSERT_EQ(f.worker, "w2");
  s_->TaskFailed(f.task, absl::InternalError("boom"), now_);
  std::vector<Action> a = Take();
  std::vector<ReleaseKv> r = Only<ReleaseKv>(a);
  ASSERT_EQ(r.size(), 1u);  // chunk 1, which the final may have consumed
  EXPECT_EQ(r[0].worker, "w2");
  EXPECT_EQ(r[0].attempt, d[1].attempt);
  EXPECT_EQ(s_->ItemFailures("j", 0), 1);  // the final's failure only
  EXPECT_EQ(s_->stats().kv_bytes_held, 10);
  std::vector<Dispatch> redo = Only<Dispatch>(a);
  ASSERT_EQ(redo.size(), 1u);
  EXPECT_EQ(redo[0].kind, TaskKind::kChunk);
  EXPECT_EQ(redo[0].chunk, 1);
}

TEST_F(SchedulerTest, MoveIsSkippedWhenItWouldNotFitTheFinalWorker) {
  Start(Options(Placement::kSpread), {"w1", "w2", "w3"}, /*budget=*/150);
  s_->AddJob("j", {Item("j", 0, {100, 100, 100})}, now_);
  std::vector<Dispatch> d = Dispatches();
  ASSERT_EQ(d.size(), 3u);
  s_->TaskSucceeded(d[0].task, now_);  // w1 holds 100 of its 150
  Take();
  s_->TaskSucceeded(d[1].task, now_);
  EXPECT_TRUE(Only<MoveKv>(Take()).empty());
  EXPECT_EQ(s_->stats().kv_bytes_held, 200);
}

TEST_F(SchedulerTest, SameEventsGiveSameActions) {
  auto run = [] {
    Scheduler s(Options(Placement::kAuto), 0);
    for (const char* w : {"c", "a", "b"}) s.WorkerJoined(w, WorkerCaps{}, 0);
    s.AddJob("y", {Item("y", 0, {5, 7}), Item("y", 1, {3})}, 0);
    s.AddJob("x", {Item("x", 0, {1, 2, 3})}, 0);
    std::string trace;
    for (int step = 0; step < 20; ++step) {
      for (const Action& a : s.TakeActions()) {
        if (const Dispatch* d = std::get_if<Dispatch>(&a)) {
          trace += d->worker + d->job_id + std::to_string(d->item) + ":" + std::to_string(d->chunk) + " ";
          if (step % 3 == 0) {
            s.TaskFailed(d->task, absl::InternalError("x"), step);
          } else {
            s.TaskSucceeded(d->task, step);
          }
        }
      }
    }
    return trace;
  };
  EXPECT_EQ(run(), run());
}

}  // namespace
}  // namespace mesa::coord
