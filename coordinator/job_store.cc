// JobStore over the sqlite3 C API: DIR (0700) holds mesa.db (0600; SQLite gives its -wal
// and -shm files the database's mode). One connection, opened with
//   journal_mode=WAL, busy_timeout=5000 ms, foreign_keys=ON, synchronous=FULL.
// synchronous=FULL holds for every write, not only CommitResult: results are the product
// and must survive power loss, and the other writes (create, status, plan, failures) are
// rare next to them, so one setting keeps the durability rule simple to state.
//
// Schema version 1 (PRAGMA user_version; kMigrations[v] moves a store from v to v + 1):
//   jobs(id TEXT PRIMARY KEY, request_id TEXT UNIQUE (NULL = none), status, model, task,
//        options_json, created_at .. cancelled_at INTEGER (0 = not yet), error TEXT,
//        seq INTEGER UNIQUE (insertion order, for listing))
//   items(job_id -> jobs.id, idx, line, state, failures, prompt_tokens, generated_tokens,
//         custom_id, plan_json, result, input, PRIMARY KEY(job_id, idx))
// Item columns run small to large: a row's large text spills onto overflow pages, and
// SQLite reaches a column by walking the record in order. The derived counts
// (total = items, completed = state kDone, failed = state kFailed, token sums) are
// computed on every read from the covering index items_counts.
#include "coordinator/job_store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"

namespace mesa::coord {
namespace {

constexpr int kBusyTimeoutMs = 5000;

static_assert(static_cast<int>(ItemState::kPending) == 0 &&
                  static_cast<int>(ItemState::kDone) == 1 &&
                  static_cast<int>(ItemState::kFailed) == 2,
              "the schema's CHECK and the count queries spell item states as 0, 1, 2");

// kMigrations[v] takes a store at user_version v to v + 1, inside one transaction.
constexpr const char* kMigrations[] = {
    R"sql(
CREATE TABLE jobs (
  id             TEXT PRIMARY KEY NOT NULL,
  request_id     TEXT UNIQUE,
  status         TEXT NOT NULL,
  model          TEXT NOT NULL,
  task           TEXT NOT NULL,
  options_json   TEXT NOT NULL,
  created_at     INTEGER NOT NULL,
  in_progress_at INTEGER NOT NULL DEFAULT 0,
  finalizing_at  INTEGER NOT NULL DEFAULT 0,
  completed_at   INTEGER NOT NULL DEFAULT 0,
  failed_at      INTEGER NOT NULL DEFAULT 0,
  cancelling_at  INTEGER NOT NULL DEFAULT 0,
  cancelled_at   INTEGER NOT NULL DEFAULT 0,
  error          TEXT NOT NULL DEFAULT '',
  seq            INTEGER NOT NULL UNIQUE
);
CREATE TABLE items (
  job_id           TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  idx              INTEGER NOT NULL,
  line             INTEGER NOT NULL,
  state            INTEGER NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
  failures         INTEGER NOT NULL DEFAULT 0,
  prompt_tokens    INTEGER NOT NULL DEFAULT 0,
  generated_tokens INTEGER NOT NULL DEFAULT 0,
  custom_id        TEXT NOT NULL DEFAULT '',
  plan_json        TEXT NOT NULL DEFAULT '',
  result           TEXT NOT NULL DEFAULT '',
  input            TEXT NOT NULL,
  PRIMARY KEY (job_id, idx)
);
CREATE INDEX items_counts ON items(job_id, state, prompt_tokens, generated_tokens);
)sql",
};
constexpr int kSchemaVersion = static_cast<int>(std::size(kMigrations));

int64_t NowUnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The status for a failed sqlite3 call `rc` during `op`. The caller holds the store's
// mutex (or owns the only handle), so errmsg is this call's message.
absl::Status SqlError(sqlite3* db, int rc, absl::string_view op) {
  const char* what = (db != nullptr && sqlite3_extended_errcode(db) == rc) ? sqlite3_errmsg(db)
                                                                           : sqlite3_errstr(rc);
  std::string msg = absl::StrCat("job store: ", op, ": ", what);
  switch (rc) {
    case SQLITE_CONSTRAINT_PRIMARYKEY:
    case SQLITE_CONSTRAINT_UNIQUE:
      return absl::AlreadyExistsError(msg);
    default:
      break;
  }
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(msg);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(msg);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(msg);
    case SQLITE_CONSTRAINT:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
      return absl::InvalidArgumentError(msg);
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  return absl::FailedPreconditionError(
      absl::StrCat("job store: ", what, " ", path, ": ", std::strerror(errno)));
}

// A prepared statement. Bind errors are kept and reported by the next Step, so that call
// sites bind without checking each parameter.
class Stmt {
 public:
  Stmt(sqlite3* db, absl::string_view op) : db_(db), op_(op) {}
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() { sqlite3_finalize(stmt_); }

  absl::Status Prepare(absl::string_view sql) {
    const int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt_,
                                      nullptr);
    return rc == SQLITE_OK ? absl::OkStatus() : SqlError(db_, rc, op_);
  }

  // Text is bound with its explicit length (documents may hold any byte, up to 16 MiB).
  // A null data() would bind SQL NULL, so an empty view binds "".
  Stmt& Bind(int i, absl::string_view v) {
    const char* data = v.data() != nullptr ? v.data() : "";
    return Check(sqlite3_bind_text64(stmt_, i, data, v.size(), SQLITE_STATIC, SQLITE_UTF8));
  }
  Stmt& Bind(int i, int64_t v) { return Check(sqlite3_bind_int64(stmt_, i, v)); }
  // request_id: NULL when empty, so that UNIQUE only applies to real ones.
  Stmt& BindNullIfEmpty(int i, absl::string_view v) {
    return v.empty() ? Check(sqlite3_bind_null(stmt_, i)) : Bind(i, v);
  }

  // true: a row is ready; false: done.
  absl::StatusOr<bool> Step() {
    if (bind_rc_ != SQLITE_OK) return SqlError(db_, bind_rc_, op_);
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqlError(db_, rc, op_);
  }
  // Steps to the end, ignoring rows; returns the rows changed.
  absl::StatusOr<int64_t> Run() {
    for (;;) {
      MESA_ASSIGN_OR_RETURN(const bool row, Step());
      if (!row) return sqlite3_changes64(db_);
    }
  }

  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    return p == nullptr ? std::string() : std::string(p, sqlite3_column_bytes(stmt_, col));
  }

 private:
  Stmt& Check(int rc) {
    if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
    return *this;
  }

  sqlite3* db_;
  absl::string_view op_;
  sqlite3_stmt* stmt_ = nullptr;
  int bind_rc_ = SQLITE_OK;
};

// Runs SQL that takes no parameters (it may hold several statements).
absl::Status Exec(sqlite3* db, const char* sql, absl::string_view op) {
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  return rc == SQLITE_OK ? absl::OkStatus() : SqlError(db, rc, op);
}

// BEGIN IMMEDIATE ... COMMIT; rolled back when it goes out of scope uncommitted.
// IMMEDIATE takes the write lock up front, so a read-then-write transaction waits out
// busy_timeout instead of failing with BUSY at its first write.
class Transaction {
 public:
  Transaction(sqlite3* db, absl::string_view op) : db_(db), op_(op) {}
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction() {
    if (open_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  absl::Status Begin() {
    MESA_RETURN_IF_ERROR(Exec(db_, "BEGIN IMMEDIATE", op_));
    open_ = true;
    return absl::OkStatus();
  }
  absl::Status Commit() {
    MESA_RETURN_IF_ERROR(Exec(db_, "COMMIT", op_));
    open_ = false;
    return absl::OkStatus();
  }

 private:
  sqlite3* db_;
  absl::string_view op_;
  bool open_ = false;
};

// The status each *_at column records; validating has none (created_at is the
// job's own).
struct StatusStamp {
  const char* status;
  const char* column;  // nullptr: no timestamp
};
constexpr StatusStamp kStatusStamps[] = {
    {kJobValidating, nullptr},         {kJobInProgress, "in_progress_at"},
    {kJobFinalizing, "finalizing_at"}, {kJobCompleted, "completed_at"},
    {kJobFailed, "failed_at"},         {kJobCancelling, "cancelling_at"},
    {kJobCancelled, "cancelled_at"},
};

const StatusStamp* FindStatus(const std::string& status) {
  for (const StatusStamp& s : kStatusStamps) {
    if (status == s.status) return &s;
  }
  return nullptr;
}

// A job row with its derived counts; the FROM clause follows.
constexpr absl::string_view kSelectJob = R"sql(
SELECT j.id, j.request_id, j.status, j.model, j.task, j.options_json, j.created_at,
       j.in_progress_at, j.finalizing_at, j.completed_at, j.failed_at, j.cancelling_at,
       j.cancelled_at, j.error, COUNT(i.job_id), COALESCE(SUM(i.state = 1), 0),
       COALESCE(SUM(i.state = 2), 0), COALESCE(SUM(i.prompt_tokens), 0),
       COALESCE(SUM(i.generated_tokens), 0)
FROM )sql";

JobRecord ReadJob(const Stmt& s) {
  JobRecord j;
  j.id = s.Text(0);
  j.request_id = s.Text(1);
  j.status = s.Text(2);
  j.model = s.Text(3);
  j.task = s.Text(4);
  j.options_json = s.Text(5);
  j.created_at = s.Int(6);
  j.in_progress_at = s.Int(7);
  j.finalizing_at = s.Int(8);
  j.completed_at = s.Int(9);
  j.failed_at = s.Int(10);
  j.cancelling_at = s.Int(11);
  j.cancelled_at = s.Int(12);
  j.error = s.Text(13);
  j.total = s.Int(14);
  j.completed = s.Int(15);
  j.failed = s.Int(16);
  j.prompt_tokens = s.Int(17);
  j.generated_tokens = s.Int(18);
  return j;
}

absl::StatusOr<JobRecord> GetJobLocked(sqlite3* db, const std::string& id) {
  const std::string op = absl::StrCat("GetJob(", id, ")");
  Stmt s(db, op);
  MESA_RETURN_IF_ERROR(s.Prepare(absl::StrCat(
      kSelectJob, "jobs j LEFT JOIN items i ON i.job_id = j.id WHERE j.id = ?1 GROUP BY j.id")));
  s.Bind(1, id);
  MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("job store: no job ", id));
  return ReadJob(s);
}

absl::Status JobExistsLocked(sqlite3* db, const std::string& id, absl::string_view op) {
  Stmt s(db, op);
  MESA_RETURN_IF_ERROR(s.Prepare("SELECT 1 FROM jobs WHERE id = ?1"));
  s.Bind(1, id);
  MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
  return row ? absl::OkStatus() : absl::NotFoundError(absl::StrCat("job store: no job ", id));
}

absl::Status NoItem(const std::string& job_id, int64_t idx) {
  return absl::NotFoundError(absl::StrCat("job store: no item ", idx, " in job ", job_id));
}

absl::StatusOr<ItemState> ToItemState(int64_t v, const std::string& job_id, int64_t idx) {
  switch (v) {
    case 0: return ItemState::kPending;
    case 1: return ItemState::kDone;
    case 2: return ItemState::kFailed;
    default:
      return absl::DataLossError(absl::StrCat("job store: item ", idx, " of job ", job_id,
                                              " has unknown state ", v));
  }
}

constexpr absl::string_view kSelectItem =
    "SELECT job_id, idx, line, custom_id, input, state, failures, plan_json, result, "
    "prompt_tokens, generated_tokens FROM items ";

absl::StatusOr<ItemRecord> ReadItem(const Stmt& s) {
  ItemRecord it;
  it.job_id = s.Text(0);
  it.idx = s.Int(1);
  it.line = s.Int(2);
  it.custom_id = s.Text(3);
  it.input = s.Text(4);
  MESA_ASSIGN_OR_RETURN(it.state, ToItemState(s.Int(5), it.job_id, it.idx));
  it.failures = static_cast<int32_t>(s.Int(6));
  it.plan_json = s.Text(7);
  it.result = s.Text(8);
  it.prompt_tokens = s.Int(9);
  it.generated_tokens = s.Int(10);
  return it;
}

// Creates DIR (and its parents) and makes sure DIR itself is a directory with mode 0700.
absl::Status PrepareDir(const std::string& dir) {
  const std::filesystem::path parent = std::filesystem::path(dir).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("job store: creating ", parent.string(), ": ", ec.message()));
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoError("creating", dir);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return ErrnoError("checking", dir);
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("job store: ", dir, " is not a directory"));
  }
  if ((st.st_mode & 07777) != 0700 && ::chmod(dir.c_str(), 0700) != 0) {
    return ErrnoError("restricting to mode 0700", dir);
  }
  return absl::OkStatus();
}

// Creates the database file with mode 0600 before SQLite opens it (SQLite would use
// 0644 less the umask), and tightens it and any -wal/-shm left by an earlier run.
absl::Status PrepareDbFiles(const std::string& db_path) {
  for (const char* suffix : {"", "-wal", "-shm"}) {
    const std::string path = db_path + suffix;
    const int flags = O_RDWR | O_CLOEXEC | O_NOFOLLOW | (*suffix == '\0' ? O_CREAT : 0);
    const int fd = ::open(path.c_str(), flags, 0600);
    if (fd < 0) {
      if (errno == ENOENT) continue;
      return ErrnoError("opening", path);
    }
    struct stat st;
    const bool ok = ::fstat(fd, &st) == 0 &&
                    ((st.st_mode & 07777) == 0600 || ::fchmod(fd, 0600) == 0);
    const int saved_errno = errno;
    ::close(fd);
    errno = saved_errno;
    if (!ok) return ErrnoError("restricting to mode 0600", path);
  }
  return absl::OkStatus();
}

// Sets the connection's pragmas and brings the schema to kSchemaVersion. The first
// statement here is the first to read the file, so a file that is not a database fails
// here (SQLITE_NOTADB) with the path in the message.
absl::Status Configure(sqlite3* db) {
  sqlite3_extended_result_codes(db, 1);
  int rc = sqlite3_busy_timeout(db, kBusyTimeoutMs);
  if (rc != SQLITE_OK) return SqlError(db, rc, "setting busy_timeout");
  {
    Stmt s(db, "setting journal_mode=WAL");
    MESA_RETURN_IF_ERROR(s.Prepare("PRAGMA journal_mode=WAL"));
    MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
    if (!row || s.Text(0) != "wal") {
      return absl::FailedPreconditionError(absl::StrCat(
          "job store: journal_mode stays '", row ? s.Text(0) : "", "', not 'wal'"));
    }
  }
  MESA_RETURN_IF_ERROR(Exec(db, "PRAGMA synchronous=FULL", "setting synchronous=FULL"));
  MESA_RETURN_IF_ERROR(Exec(db, "PRAGMA foreign_keys=ON", "setting foreign_keys=ON"));

  // Another process may be migrating the same file: read the version under the lock.
  Transaction tx(db, "migrating the schema");
  MESA_RETURN_IF_ERROR(tx.Begin());
  int version = 0;
  {
    Stmt s(db, "reading user_version");
    MESA_RETURN_IF_ERROR(s.Prepare("PRAGMA user_version"));
    MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
    if (row) version = static_cast<int>(s.Int(0));
  }
  if (version > kSchemaVersion || version < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("job store: schema version ", version, " is not one this build knows (",
                     kSchemaVersion, "); written by a newer Mesa?"));
  }
  if (version == kSchemaVersion) return absl::OkStatus();  // nothing to write; rolls back
  for (int v = version; v < kSchemaVersion; ++v) {
    MESA_RETURN_IF_ERROR(
        Exec(db, kMigrations[v], absl::StrCat("migrating schema ", v, " -> ", v + 1)));
  }
  // PRAGMA takes no parameters; the value is this build's constant.
  MESA_RETURN_IF_ERROR(Exec(db, absl::StrCat("PRAGMA user_version=", kSchemaVersion).c_str(),
                            "setting user_version"));
  return tx.Commit();
}

}  // namespace

bool IsTerminalJobStatus(const std::string& status) {
  return status == kJobCompleted || status == kJobFailed || status == kJobCancelled;
}

JobStore::JobStore(sqlite3* db) : db_(db) {}

JobStore::~JobStore() { sqlite3_close_v2(db_); }

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("job store: empty directory");
  MESA_RETURN_IF_ERROR(PrepareDir(dir));
  const std::string path = (std::filesystem::path(dir) / "mesa.db").string();
  MESA_RETURN_IF_ERROR(PrepareDbFiles(path));

  sqlite3* db = nullptr;
  // NOMUTEX: the store's own mutex serializes every use of the connection.
  const int rc = sqlite3_open_v2(path.c_str(), &db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  absl::Status status = rc == SQLITE_OK ? Configure(db) : SqlError(db, rc, "opening");
  if (!status.ok()) {
    sqlite3_close_v2(db);
    return absl::Status(status.code(), absl::StrCat(status.message(), " (", path, ")"));
  }
  return std::unique_ptr<JobStore>(new JobStore(db));
}

absl::StatusOr<JobStore::Created> JobStore::CreateJob(const JobRecord& job,
                                                      const std::vector<ItemRecord>& items) {
  if (job.id.empty()) return absl::InvalidArgumentError("job store: CreateJob: empty job id");
  if (FindStatus(job.status) == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("job store: CreateJob(", job.id, "): unknown status '", job.status, "'"));
  }
  const std::string op = absl::StrCat("CreateJob(", job.id, ")");
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_, op);
  MESA_RETURN_IF_ERROR(tx.Begin());

  if (!job.request_id.empty()) {
    Stmt s(db_, op);
    MESA_RETURN_IF_ERROR(s.Prepare("SELECT id FROM jobs WHERE request_id = ?1"));
    s.Bind(1, job.request_id);
    MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
    if (row) {
      MESA_ASSIGN_OR_RETURN(JobRecord existing, GetJobLocked(db_, s.Text(0)));
      return Created{std::move(existing), false};
    }
  }
  {
    Stmt s(db_, op);
    MESA_RETURN_IF_ERROR(s.Prepare(R"sql(
INSERT INTO jobs (id, request_id, status, model, task, options_json, created_at,
                  in_progress_at, finalizing_at, completed_at, failed_at, cancelling_at,
                  cancelled_at, error, seq)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
        (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs)))sql"));
    s.Bind(1, job.id)
        .BindNullIfEmpty(2, job.request_id)
        .Bind(3, job.status)
        .Bind(4, job.model)
        .Bind(5, job.task)
        .Bind(6, job.options_json)
        .Bind(7, job.created_at != 0 ? job.created_at : NowUnixSeconds())
        .Bind(8, job.in_progress_at)
        .Bind(9, job.finalizing_at)
        .Bind(10, job.completed_at)
        .Bind(11, job.failed_at)
        .Bind(12, job.cancelling_at)
        .Bind(13, job.cancelled_at)
        .Bind(14, job.error);
    MESA_RETURN_IF_ERROR(s.Run().status());
  }
  for (const ItemRecord& it : items) {
    Stmt s(db_, op);
    MESA_RETURN_IF_ERROR(s.Prepare(R"sql(
INSERT INTO items (job_id, idx, line, state, failures, prompt_tokens, generated_tokens,
                   custom_id, plan_json, result, input)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11))sql"));
    s.Bind(1, job.id)
        .Bind(2, it.idx)
        .Bind(3, it.line)
        .Bind(4, static_cast<int64_t>(it.state))
        .Bind(5, static_cast<int64_t>(it.failures))
        .Bind(6, it.prompt_tokens)
        .Bind(7, it.generated_tokens)
        .Bind(8, it.custom_id)
        .Bind(9, it.plan_json)
        .Bind(10, it.result)
        .Bind(11, it.input);
    const absl::StatusOr<int64_t> inserted = s.Run();
    if (!inserted.ok()) {
      return absl::Status(inserted.status().code(),
                          absl::StrCat(inserted.status().message(), " (item ", it.idx, ")"));
    }
  }
  MESA_ASSIGN_OR_RETURN(JobRecord created, GetJobLocked(db_, job.id));
  MESA_RETURN_IF_ERROR(tx.Commit());
  return Created{std::move(created), true};
}

absl::StatusOr<JobRecord> JobStore::GetJob(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return GetJobLocked(db_, id);
}

absl::StatusOr<JobStore::JobStatusRecord> JobStore::GetJobStatus(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, absl::StrCat("GetJobStatus(", id, ")"));
  MESA_RETURN_IF_ERROR(s.Prepare("SELECT status, error FROM jobs WHERE id = ?1"));
  s.Bind(1, id);
  MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("job store: no job ", id));
  return JobStatusRecord{s.Text(0), s.Text(1)};
}

absl::StatusOr<std::vector<JobRecord>> JobStore::ListJobs(int limit) {
  if (limit < 0) {
    return absl::InvalidArgumentError(absl::StrCat("job store: ListJobs: limit ", limit, " < 0"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "ListJobs");
  // The newest jobs are picked first, so that only their items are counted.
  MESA_RETURN_IF_ERROR(s.Prepare(absl::StrCat(
      kSelectJob,
      "(SELECT * FROM jobs ORDER BY seq DESC LIMIT ?1) j LEFT JOIN items i ON i.job_id = j.id "
      "GROUP BY j.id ORDER BY j.seq DESC")));
  s.Bind(1, limit == 0 ? int64_t{-1} : int64_t{limit});  // LIMIT -1: no limit
  std::vector<JobRecord> jobs;
  for (;;) {
    MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
    if (!row) return jobs;
    jobs.push_back(ReadJob(s));
  }
}

absl::StatusOr<std::vector<std::string>> JobStore::UnfinishedJobIds() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "UnfinishedJobIds");
  MESA_RETURN_IF_ERROR(
      s.Prepare("SELECT id FROM jobs WHERE status NOT IN (?1, ?2, ?3) ORDER BY seq"));
  s.Bind(1, kJobCompleted).Bind(2, kJobFailed).Bind(3, kJobCancelled);
  std::vector<std::string> ids;
  for (;;) {
    MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
    if (!row) return ids;
    ids.push_back(s.Text(0));
  }
}

absl::StatusOr<std::vector<std::pair<std::string, int64_t>>> JobStore::CountJobsByStatus(bool wait) {
  std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
  if (wait) {
    lock.lock();
  } else if (!lock.try_lock()) {
    return absl::UnavailableError("job store: busy (a write in progress)");
  }
  Stmt s(db_, "CountJobsByStatus");
  MESA_RETURN_IF_ERROR(s.Prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status"));
  std::vector<std::pair<std::string, int64_t>> counts;
  for (;;) {
    MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
    if (!row) return counts;
    counts.emplace_back(s.Text(0), s.Int(1));
  }
}

namespace {

// The items of `job_id` that `sql` (selecting kSelectItem's columns, ?1 = the job)
// returns; NOT_FOUND when there are none because the job does not exist. The caller
// holds the store's lock.
absl::StatusOr<std::vector<ItemRecord>> SelectItems(sqlite3* db, const std::string& op, const std::string& sql,
                                                    const std::string& job_id) {
  Stmt s(db, op);
  MESA_RETURN_IF_ERROR(s.Prepare(sql));
  s.Bind(1, job_id);
  std::vector<ItemRecord> items;
  for (;;) {
    MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
    if (!row) break;
    MESA_ASSIGN_OR_RETURN(ItemRecord it, ReadItem(s));
    items.push_back(std::move(it));
  }
  if (items.empty()) MESA_RETURN_IF_ERROR(JobExistsLocked(db, job_id, op));
  return items;
}

}  // namespace

absl::StatusOr<std::vector<ItemRecord>> JobStore::Items(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  return SelectItems(db_, absl::StrCat("Items(", job_id, ")"),
                     absl::StrCat(kSelectItem, "WHERE job_id = ?1 ORDER BY idx"), job_id);
}

absl::StatusOr<std::vector<ItemRecord>> JobStore::SettledItems(const std::string& job_id, int64_t from_idx) {
  std::lock_guard<std::mutex> lock(mu_);
  // kSelectItem's columns, with '' for the input and the plan (documents can be large).
  return SelectItems(db_, absl::StrCat("SettledItems(", job_id, ", ", from_idx, ")"),
                     absl::StrCat("SELECT job_id, idx, line, custom_id, '', state, failures, '', result, "
                                  "prompt_tokens, generated_tokens FROM items WHERE job_id = ?1 AND idx >= ",
                                  from_idx, " AND state != 0 ORDER BY idx"),
                     job_id);
}

absl::StatusOr<ItemRecord> JobStore::Item(const std::string& job_id, int64_t idx) {
  const std::string op = absl::StrCat("Item(", job_id, ", ", idx, ")");
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, op);
  MESA_RETURN_IF_ERROR(s.Prepare(absl::StrCat(kSelectItem, "WHERE job_id = ?1 AND idx = ?2")));
  s.Bind(1, job_id).Bind(2, idx);
  MESA_ASSIGN_OR_RETURN(const bool row, s.Step());
  if (!row) return NoItem(job_id, idx);
  return ReadItem(s);
}

absl::Status JobStore::SetJobStatus(const std::string& id, const std::string& status,
                                    const std::string& error) {
  const std::string op = absl::StrCat("SetJobStatus(", id, ", ", status, ")");
  const StatusStamp* stamp = FindStatus(status);
  if (stamp == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("job store: ", op, ": unknown status"));
  }
  // The column name comes from kStatusStamps, never from the caller.
  std::string sql = "UPDATE jobs SET status = ?1, error = CASE WHEN ?2 = '' THEN error ELSE ?2 END";
  if (stamp->column != nullptr) {
    absl::StrAppend(&sql, ", ", stamp->column, " = CASE WHEN ", stamp->column, " = 0 THEN ?3 ELSE ",
                    stamp->column, " END");
  }
  absl::StrAppend(&sql, " WHERE id = ?4");

  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, op);
  MESA_RETURN_IF_ERROR(s.Prepare(sql));
  s.Bind(1, status).Bind(2, error).Bind(3, NowUnixSeconds()).Bind(4, id);
  MESA_ASSIGN_OR_RETURN(const int64_t changed, s.Run());
  if (changed == 0) return absl::NotFoundError(absl::StrCat("job store: no job ", id));
  return absl::OkStatus();
}

absl::Status JobStore::SetPlan(const std::string& job_id, int64_t idx,
                               const std::string& plan_json) {
  const std::string op = absl::StrCat("SetPlan(", job_id, ", ", idx, ")");
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, op);
  MESA_RETURN_IF_ERROR(s.Prepare("UPDATE items SET plan_json = ?1 WHERE job_id = ?2 AND idx = ?3"));
  s.Bind(1, plan_json).Bind(2, job_id).Bind(3, idx);
  MESA_ASSIGN_OR_RETURN(const int64_t changed, s.Run());
  return changed == 0 ? NoItem(job_id, idx) : absl::OkStatus();
}

absl::Status JobStore::SetFailures(const std::string& job_id, int64_t idx, int32_t failures) {
  const std::string op = absl::StrCat("SetFailures(", job_id, ", ", idx, ")");
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, op);
  MESA_RETURN_IF_ERROR(s.Prepare("UPDATE items SET failures = ?1 WHERE job_id = ?2 AND idx = ?3"));
  s.Bind(1, static_cast<int64_t>(failures)).Bind(2, job_id).Bind(3, idx);
  MESA_ASSIGN_OR_RETURN(const int64_t changed, s.Run());
  return changed == 0 ? NoItem(job_id, idx) : absl::OkStatus();
}

absl::StatusOr<bool> JobStore::CommitResult(const std::string& job_id, int64_t idx,
                                            ItemState state, const std::string& result,
                                            int64_t prompt_tokens, int64_t generated_tokens) {
  const std::string op = absl::StrCat("CommitResult(", job_id, ", ", idx, ")");
  switch (state) {
    case ItemState::kDone:
    case ItemState::kFailed:
      break;
    case ItemState::kPending:
      return absl::InvalidArgumentError(
          absl::StrCat("job store: ", op, ": a result must be kDone or kFailed"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, op);
  // state = 0: the first commit wins; a repeat (a retried or duplicated result) is a no-op.
  MESA_RETURN_IF_ERROR(s.Prepare(R"sql(
UPDATE items SET state = ?1, result = ?2, prompt_tokens = ?3, generated_tokens = ?4
WHERE job_id = ?5 AND idx = ?6 AND state = 0)sql"));
  s.Bind(1, static_cast<int64_t>(state))
      .Bind(2, result)
      .Bind(3, prompt_tokens)
      .Bind(4, generated_tokens)
      .Bind(5, job_id)
      .Bind(6, idx);
  MESA_ASSIGN_OR_RETURN(const int64_t changed, s.Run());
  if (changed > 0) return true;
  Stmt exists(db_, op);
  MESA_RETURN_IF_ERROR(exists.Prepare("SELECT 1 FROM items WHERE job_id = ?1 AND idx = ?2"));
  exists.Bind(1, job_id).Bind(2, idx);
  MESA_ASSIGN_OR_RETURN(const bool row, exists.Step());
  if (!row) return NoItem(job_id, idx);
  return false;
}

}  // namespace mesa::coord
