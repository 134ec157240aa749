// JobStore tests: roundtrips (a 5 MiB input included), request_id idempotency,
// first-commit-wins, derived counts, status timestamps, restart and crash durability (a
// forked child killed right after CommitResult), WAL mode and file modes as seen from
// outside, concurrent use, and the errors: unknown jobs, a garbage mesa.db, a newer schema.
#include "coordinator/job_store.h"

#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_path.h"

namespace mesa::coord {
namespace {

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A fresh, not yet existing store directory per test.
std::string StoreDir(const std::string& name) {
  const std::string dir = mesa::testing::UniqueTempPath(name);
  std::filesystem::remove_all(dir);
  return dir;
}

std::unique_ptr<JobStore> OpenOrDie(const std::string& dir) {
  auto store = JobStore::Open(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

JobRecord MakeJob(const std::string& id, const std::string& request_id = "") {
  JobRecord job;
  job.id = id;
  job.request_id = request_id;
  job.model = "stories260K";
  job.task = "summarize";
  job.options_json = R"({"max_tokens":64})";
  return job;
}

std::vector<ItemRecord> MakeItems(int n) {
  std::vector<ItemRecord> items;
  for (int i = 0; i < n; ++i) {
    ItemRecord it;
    it.idx = i;
    it.line = i + 1;
    it.custom_id = i % 2 == 0 ? absl::StrCat("doc-", i) : "";
    it.input = absl::StrCat(R"({"custom_id":"doc-)", i, R"(","body":{"text":"hello"}})");
    items.push_back(std::move(it));
  }
  return items;
}

int Mode(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<int>(st.st_mode & 07777);
}

// Runs one statement on a second, independent connection and returns the first column
// of its first row ("" if none).
std::string QueryOutside(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  std::string out;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK)
      << sqlite3_errmsg(db);
  if (sqlite3_step(stmt) == SQLITE_ROW && sqlite3_column_text(stmt, 0) != nullptr) {
    out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return out;
}

TEST(JobStoreTest, CreateGetListItemsRoundtrip) {
  auto store = OpenOrDie(StoreDir("roundtrip"));
  ASSERT_TRUE(store);
  std::vector<ItemRecord> items = MakeItems(3);
  // 5 MiB of every byte value but NUL, so that lengths, not terminators, carry it.
  items[1].input.resize(5 << 20);
  for (size_t i = 0; i < items[1].input.size(); ++i) items[1].input[i] = char(1 + i % 255);

  JobRecord job = MakeJob("job-a");
  job.created_at = 1700000000;
  auto created = store->CreateJob(job, items);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(created->created);
  EXPECT_EQ(created->job.id, "job-a");
  EXPECT_EQ(created->job.status, kJobValidating);
  EXPECT_EQ(created->job.created_at, 1700000000);
  EXPECT_EQ(created->job.total, 3);

  const int64_t before = Now();
  ASSERT_TRUE(store->CreateJob(MakeJob("job-b"), MakeItems(1)).ok());
  ASSERT_TRUE(store->CreateJob(MakeJob("job-c"), {}).ok());

  auto got = store->GetJob("job-a");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->request_id, "");
  EXPECT_EQ(got->model, "stories260K");
  EXPECT_EQ(got->task, "summarize");
  EXPECT_EQ(got->options_json, R"({"max_tokens":64})");
  EXPECT_EQ(got->in_progress_at, 0);
  EXPECT_EQ(got->error, "");
  auto b = store->GetJob("job-b");
  ASSERT_TRUE(b.ok());
  EXPECT_GE(b->created_at, before);  // stamped by the store
  EXPECT_LE(b->created_at, Now());

  auto back = store->Items("job-a");
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*back)[i].job_id, "job-a");
    EXPECT_EQ((*back)[i].idx, items[i].idx);
    EXPECT_EQ((*back)[i].line, items[i].line);
    EXPECT_EQ((*back)[i].custom_id, items[i].custom_id);
    EXPECT_TRUE((*back)[i].input == items[i].input) << "item " << i;
    EXPECT_EQ((*back)[i].state, ItemState::kPending);
    EXPECT_EQ((*back)[i].plan_json, "");
  }
  auto one = store->Item("job-a", 1);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->input.size(), size_t{5 << 20});
  EXPECT_TRUE(one->input == items[1].input);

  ASSERT_TRUE(store->SetPlan("job-a", 2, R"({"chunks":4})").ok());
  ASSERT_TRUE(store->SetFailures("job-a", 2, 3).ok());
  auto planned = store->Item("job-a", 2);
  ASSERT_TRUE(planned.ok());
  EXPECT_EQ(planned->plan_json, R"({"chunks":4})");
  EXPECT_EQ(planned->failures, 3);

  auto empty = store->Items("job-c");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());

  auto all = store->ListJobs(0);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].id, "job-c");  // newest first
  EXPECT_EQ((*all)[1].id, "job-b");
  EXPECT_EQ((*all)[2].id, "job-a");
  EXPECT_EQ((*all)[2].total, 3);
  EXPECT_EQ((*all)[0].total, 0);
  auto two = store->ListJobs(2);
  ASSERT_TRUE(two.ok());
  ASSERT_EQ(two->size(), 2u);
  EXPECT_EQ((*two)[0].id, "job-c");
  EXPECT_EQ((*two)[1].id, "job-b");
  EXPECT_EQ((*two)[1].total, 1);

  // A second job with the same id is refused.
  EXPECT_EQ(store->CreateJob(MakeJob("job-a"), {}).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(JobStoreTest, RequestIdMakesCreateIdempotent) {
  auto store = OpenOrDie(StoreDir("request_id"));
  ASSERT_TRUE(store);
  auto first = store->CreateJob(MakeJob("job-1", "req-42"), MakeItems(2));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->created);

  auto again = store->CreateJob(MakeJob("job-2", "req-42"), MakeItems(5));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->job.id, "job-1");
  EXPECT_EQ(again->job.request_id, "req-42");
  EXPECT_EQ(again->job.total, 2);

  EXPECT_EQ(store->GetJob("job-2").status().code(), absl::StatusCode::kNotFound);
  auto items = store->Items("job-1");
  ASSERT_TRUE(items.ok());
  EXPECT_EQ(items->size(), 2u);
  auto jobs = store->ListJobs(0);
  ASSERT_TRUE(jobs.ok());
  EXPECT_EQ(jobs->size(), 1u);

  // Jobs without a request_id never collide with each other.
  ASSERT_TRUE(store->CreateJob(MakeJob("job-3"), {}).ok());
  auto fourth = store->CreateJob(MakeJob("job-4"), {});
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  EXPECT_TRUE(fourth->created);
}

TEST(JobStoreTest, FirstCommitWinsAndCountsAreDerived) {
  auto store = OpenOrDie(StoreDir("commit"));
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->CreateJob(MakeJob("job"), MakeItems(4)).ok());

  auto c0 = store->CommitResult("job", 0, ItemState::kDone, R"({"id":"r0"})", 100, 10);
  ASSERT_TRUE(c0.ok()) << c0.status();
  EXPECT_TRUE(*c0);
  auto again = store->CommitResult("job", 0, ItemState::kFailed, R"({"id":"other"})", 1, 1);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again);
  auto item0 = store->Item("job", 0);
  ASSERT_TRUE(item0.ok());
  EXPECT_EQ(item0->state, ItemState::kDone);
  EXPECT_EQ(item0->result, R"({"id":"r0"})");
  EXPECT_EQ(item0->prompt_tokens, 100);
  EXPECT_EQ(item0->generated_tokens, 10);

  auto c1 = store->CommitResult("job", 1, ItemState::kDone, R"({"id":"r1"})", 50, 5);
  ASSERT_TRUE(c1.ok() && *c1);
  auto c3 = store->CommitResult("job", 3, ItemState::kFailed, R"({"error":"bad line"})", 0, 0);
  ASSERT_TRUE(c3.ok() && *c3);

  auto job = store->GetJob("job");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->total, 4);
  EXPECT_EQ(job->completed, 2);
  EXPECT_EQ(job->failed, 1);
  EXPECT_EQ(job->prompt_tokens, 150);
  EXPECT_EQ(job->generated_tokens, 15);
  auto listed = store->ListJobs(1);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].completed, 2);
  EXPECT_EQ((*listed)[0].failed, 1);
  EXPECT_EQ((*listed)[0].prompt_tokens, 150);

  EXPECT_EQ(store->CommitResult("job", 2, ItemState::kPending, "", 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->CommitResult("job", 9, ItemState::kDone, "{}", 0, 0).status().code(),
            absl::StatusCode::kNotFound);
}

// SettledItems: done and failed items in idx order, with results but without inputs.
TEST(JobStoreTest, SettledItemsLeaveOutPendingItemsAndInputs) {
  auto store = OpenOrDie(StoreDir("settled"));
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->CreateJob(MakeJob("job"), MakeItems(4)).ok());
  auto none = store->SettledItems("job");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  ASSERT_TRUE(store->CommitResult("job", 3, ItemState::kFailed, R"({"error":"bad line"})", 0, 0).ok());
  ASSERT_TRUE(store->CommitResult("job", 1, ItemState::kDone, R"({"id":"r1"})", 50, 5).ok());
  auto settled = store->SettledItems("job");
  ASSERT_TRUE(settled.ok()) << settled.status();
  ASSERT_EQ(settled->size(), 2u);
  EXPECT_EQ((*settled)[0].idx, 1);
  EXPECT_EQ((*settled)[0].state, ItemState::kDone);
  EXPECT_EQ((*settled)[0].result, R"({"id":"r1"})");
  EXPECT_EQ((*settled)[0].prompt_tokens, 50);
  EXPECT_EQ((*settled)[0].input, "");
  EXPECT_EQ((*settled)[1].idx, 3);
  EXPECT_EQ((*settled)[1].state, ItemState::kFailed);
  EXPECT_EQ(store->SettledItems("nope").status().code(), absl::StatusCode::kNotFound);
  // From an idx on: what a follower that has seen items 0..1 reads.
  auto later = store->SettledItems("job", 2);
  ASSERT_TRUE(later.ok()) << later.status();
  ASSERT_EQ(later->size(), 1u);
  EXPECT_EQ((*later)[0].idx, 3);
  auto past_end = store->SettledItems("job", 4);
  ASSERT_TRUE(past_end.ok()) << past_end.status();  // the job exists: nothing, not NOT_FOUND
  EXPECT_TRUE(past_end->empty());
  EXPECT_EQ(store->SettledItems("nope", 2).status().code(), absl::StatusCode::kNotFound);
}

TEST(JobStoreTest, GetJobStatusReadsTheStatusAndErrorAlone) {
  auto store = OpenOrDie(StoreDir("status_only"));
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->CreateJob(MakeJob("job"), MakeItems(3)).ok());
  auto s = store->GetJobStatus("job");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->status, store->GetJob("job")->status);
  EXPECT_EQ(s->error, "");
  ASSERT_TRUE(store->SetJobStatus("job", kJobFailed, "worker pool gone").ok());
  s = store->GetJobStatus("job");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->status, kJobFailed);
  EXPECT_EQ(s->error, "worker pool gone");
  EXPECT_EQ(store->GetJobStatus("nope").status().code(), absl::StatusCode::kNotFound);
}

// The metrics' read: without waiting it says UNAVAILABLE while the store is held (a large
// job being written), and reads once it is free; waiting, it blocks until then.
TEST(JobStoreTest, CountJobsByStatusNeedNotWaitForABusyStore) {
  auto store = OpenOrDie(StoreDir("busy"));
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->CreateJob(MakeJob("job"), MakeItems(2)).ok());
  std::atomic<bool> waited_read_done{false};
  std::thread waiting;
  {
    std::unique_lock<std::mutex> held = store->LockForTest();
    EXPECT_EQ(store->CountJobsByStatus(/*wait=*/false).status().code(), absl::StatusCode::kUnavailable);
    waiting = std::thread([&] {
      auto counts = store->CountJobsByStatus(/*wait=*/true);
      EXPECT_TRUE(counts.ok()) << counts.status();
      waited_read_done = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_FALSE(waited_read_done.load()) << "a waiting read went past a held store";
  }
  waiting.join();
  EXPECT_TRUE(waited_read_done.load());
  auto counts = store->CountJobsByStatus(/*wait=*/false);
  ASSERT_TRUE(counts.ok()) << counts.status();
  ASSERT_EQ(counts->size(), 1u);
  EXPECT_EQ((*counts)[0].second, 1);
}

TEST(JobStoreTest, StatusTimestampsAreStampedOnce) {
  auto store = OpenOrDie(StoreDir("status"));
  ASSERT_TRUE(store);
  JobRecord job = MakeJob("job");
  job.cancelling_at = 7;  // already stamped: must survive a later SetJobStatus
  ASSERT_TRUE(store->CreateJob(job, {}).ok());

  const int64_t before = Now();
  ASSERT_TRUE(store->SetJobStatus("job", kJobInProgress).ok());
  auto got = store->GetJob("job");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status, kJobInProgress);
  EXPECT_GE(got->in_progress_at, before);
  EXPECT_LE(got->in_progress_at, Now());
  EXPECT_EQ(got->completed_at, 0);

  ASSERT_TRUE(store->SetJobStatus("job", kJobCancelling).ok());
  got = store->GetJob("job");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status, kJobCancelling);
  EXPECT_EQ(got->cancelling_at, 7);

  ASSERT_TRUE(store->SetJobStatus("job", kJobFailed, "worker pool gone").ok());
  ASSERT_TRUE(store->SetJobStatus("job", kJobInProgress).ok());
  got = store->GetJob("job");
  ASSERT_TRUE(got.ok());
  const int64_t first_in_progress = got->in_progress_at;
  EXPECT_GE(got->failed_at, before);
  EXPECT_EQ(got->error, "worker pool gone");  // kept when no new error is given
  ASSERT_TRUE(store->SetJobStatus("job", kJobFailed, "second error").ok());
  got = store->GetJob("job");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->error, "second error");
  EXPECT_EQ(got->in_progress_at, first_in_progress);

  EXPECT_EQ(store->SetJobStatus("job", "expired").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->SetJobStatus("nope", kJobCompleted).code(), absl::StatusCode::kNotFound);
}

TEST(JobStoreTest, UnknownJobsAndItemsAreNotFound) {
  auto store = OpenOrDie(StoreDir("not_found"));
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->CreateJob(MakeJob("job"), MakeItems(1)).ok());
  EXPECT_EQ(store->GetJob("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Items("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Item("nope", 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Item("job", 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->SetPlan("job", 1, "{}").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->SetFailures("nope", 0, 1).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->CommitResult("nope", 0, ItemState::kDone, "{}", 0, 0).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(JobStoreTest, ReopenedStoreHasEverything) {
  const std::string dir = StoreDir("reopen");
  {
    auto store = OpenOrDie(dir);
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->CreateJob(MakeJob("old", "req-old"), MakeItems(2)).ok());
    ASSERT_TRUE(store->CreateJob(MakeJob("done"), MakeItems(1)).ok());
    ASSERT_TRUE(store->CreateJob(MakeJob("new"), MakeItems(3)).ok());
    ASSERT_TRUE(store->CreateJob(MakeJob("gone"), {}).ok());
    ASSERT_TRUE(store->SetJobStatus("old", kJobInProgress).ok());
    ASSERT_TRUE(store->SetJobStatus("done", kJobCompleted).ok());
    ASSERT_TRUE(store->SetJobStatus("new", kJobCancelling).ok());
    ASSERT_TRUE(store->SetJobStatus("gone", kJobCancelled).ok());
    ASSERT_TRUE(store->SetPlan("old", 1, R"({"p":1})").ok());
    auto c = store->CommitResult("old", 0, ItemState::kDone, R"({"ok":true})", 9, 4);
    ASSERT_TRUE(c.ok() && *c);
  }
  auto store = OpenOrDie(dir);
  ASSERT_TRUE(store);
  auto unfinished = store->UnfinishedJobIds();
  ASSERT_TRUE(unfinished.ok()) << unfinished.status();
  EXPECT_EQ(*unfinished, (std::vector<std::string>{"old", "new"}));  // oldest first

  auto old = store->GetJob("old");
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old->status, kJobInProgress);
  EXPECT_EQ(old->request_id, "req-old");
  EXPECT_EQ(old->completed, 1);
  EXPECT_EQ(old->prompt_tokens, 9);
  auto items = store->Items("old");
  ASSERT_TRUE(items.ok());
  ASSERT_EQ(items->size(), 2u);
  EXPECT_EQ((*items)[0].result, R"({"ok":true})");
  EXPECT_EQ((*items)[1].plan_json, R"({"p":1})");
  auto jobs = store->ListJobs(0);
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 4u);
  EXPECT_EQ((*jobs)[0].id, "gone");
  // The request_id still deduplicates after the restart.
  auto again = store->CreateJob(MakeJob("old-2", "req-old"), {});
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->job.id, "old");
  // A new job still lists newest after the restart.
  ASSERT_TRUE(store->CreateJob(MakeJob("newest"), {}).ok());
  auto latest = store->ListJobs(1);
  ASSERT_TRUE(latest.ok());
  ASSERT_EQ(latest->size(), 1u);
  EXPECT_EQ((*latest)[0].id, "newest");
}

// A child process creates a job, commits a result, and is SIGKILLed the moment
// CommitResult returns: no destructor, no close, no checkpoint. The committed result
// must be in the store the parent opens next.
TEST(JobStoreTest, CommittedResultSurvivesAKilledProcess) {
  const std::string dir = StoreDir("crash");
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The child reports by exit code only; gtest assertions do not cross processes.
    auto store = JobStore::Open(dir);
    if (!store.ok()) ::_exit(10);
    if (!(*store)->CreateJob(MakeJob("crash"), MakeItems(3)).ok()) ::_exit(11);
    auto c0 = (*store)->CommitResult("crash", 0, ItemState::kDone, R"({"id":"r0"})", 12, 3);
    if (!c0.ok() || !*c0) ::_exit(12);
    auto c2 = (*store)->CommitResult("crash", 2, ItemState::kFailed, R"({"error":"e"})", 0, 0);
    if (!c2.ok() || !*c2) ::_exit(13);
    ::raise(SIGKILL);
    ::_exit(14);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exited with code " << WEXITSTATUS(wstatus);
  ASSERT_EQ(WTERMSIG(wstatus), SIGKILL);

  auto store = OpenOrDie(dir);
  ASSERT_TRUE(store);
  auto job = store->GetJob("crash");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->total, 3);
  EXPECT_EQ(job->completed, 1);
  EXPECT_EQ(job->failed, 1);
  EXPECT_EQ(job->prompt_tokens, 12);
  auto item = store->Item("crash", 0);
  ASSERT_TRUE(item.ok());
  EXPECT_EQ(item->result, R"({"id":"r0"})");
  auto unfinished = store->UnfinishedJobIds();
  ASSERT_TRUE(unfinished.ok());
  EXPECT_EQ(*unfinished, std::vector<std::string>{"crash"});
}

TEST(JobStoreTest, WalModeAndFileModes) {
  const std::string dir = StoreDir("modes") + "/nested/state";
  auto store = OpenOrDie(dir);
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->CreateJob(MakeJob("job"), MakeItems(1)).ok());  // the WAL now exists
  const std::string db = dir + "/mesa.db";
  EXPECT_EQ(QueryOutside(db, "PRAGMA journal_mode"), "wal");
  EXPECT_EQ(QueryOutside(db, "PRAGMA user_version"), "1");
  EXPECT_EQ(Mode(dir), 0700);
  EXPECT_EQ(Mode(db), 0600);
  ASSERT_TRUE(std::filesystem::exists(db + "-wal"));
  EXPECT_EQ(Mode(db + "-wal"), 0600);
}

TEST(JobStoreTest, LooseDirectoryIsTightened) {
  const std::string dir = StoreDir("loose");
  std::filesystem::create_directories(dir);
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  auto store = OpenOrDie(dir);
  ASSERT_TRUE(store);
  EXPECT_EQ(Mode(dir), 0700);
}

TEST(JobStoreTest, ConcurrentCommitsAndReads) {
  auto store = OpenOrDie(StoreDir("threads"));
  ASSERT_TRUE(store);
  constexpr int kThreads = 8, kPerThread = 25;
  ASSERT_TRUE(store->CreateJob(MakeJob("job"), MakeItems(kThreads * kPerThread)).ok());
  std::atomic<int> errors{0}, wins{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kPerThread; ++k) {
        // Each item is committed by two threads; exactly one must win.
        const int64_t idx = t * kPerThread + k;
        const int64_t twin = (t + 1) % kThreads * kPerThread + k;
        for (int64_t i : {idx, twin}) {
          auto c = store->CommitResult("job", i, ItemState::kDone, absl::StrCat("r", i), 1, 2);
          if (!c.ok()) ++errors;
          else if (*c) ++wins;
        }
        if (!store->GetJob("job").ok()) ++errors;
        if (!store->Item("job", idx).ok()) ++errors;
        if (!store->ListJobs(0).ok()) ++errors;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(wins.load(), kThreads * kPerThread);
  auto job = store->GetJob("job");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->completed, kThreads * kPerThread);
  EXPECT_EQ(job->prompt_tokens, kThreads * kPerThread);
  EXPECT_EQ(job->generated_tokens, 2 * kThreads * kPerThread);
}

TEST(JobStoreTest, GarbageDatabaseFileIsAnError) {
  const std::string dir = StoreDir("garbage");
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir + "/mesa.db", std::ios::binary);
    for (int i = 0; i < 512; ++i) f << "this is not an SQLite database. ";
  }
  auto store = JobStore::Open(dir);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
  EXPECT_NE(store.status().message().find("mesa.db"), std::string::npos) << store.status();
  EXPECT_NE(store.status().message().find("not a database"), std::string::npos)
      << store.status();
}

TEST(JobStoreTest, NewerSchemaIsRefused) {
  const std::string dir = StoreDir("newer");
  { ASSERT_TRUE(OpenOrDie(dir)); }
  QueryOutside(dir + "/mesa.db", "PRAGMA user_version=99");
  auto store = JobStore::Open(dir);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_NE(store.status().message().find("99"), std::string::npos) << store.status();
}

TEST(JobStoreTest, TerminalStatuses) {
  EXPECT_TRUE(IsTerminalJobStatus(kJobCompleted));
  EXPECT_TRUE(IsTerminalJobStatus(kJobFailed));
  EXPECT_TRUE(IsTerminalJobStatus(kJobCancelled));
  EXPECT_FALSE(IsTerminalJobStatus(kJobValidating));
  EXPECT_FALSE(IsTerminalJobStatus(kJobInProgress));
  EXPECT_FALSE(IsTerminalJobStatus(kJobFinalizing));
  EXPECT_FALSE(IsTerminalJobStatus(kJobCancelling));
}

}  // namespace
}  // namespace mesa::coord
