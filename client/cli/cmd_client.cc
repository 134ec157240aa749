// `mesa submit|status|wait|results|cancel|list`: the client side of a Mesa cluster, thin
// commands over client/lib's Client. Exit codes: 0 ok, 1 failed/cancelled/error, 2 bad
// usage, 3 timeout (wait, submit --wait).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "client/cli/security_flags.h"
#include "client/lib/client.h"
#include "client/lib/grpc_connection.h"
#include "jobs/progress.h"
#include "nlohmann/json.hpp"

namespace mesa::cli {
namespace {

namespace mc = mesa::client;

// Fail() returns 1: failed or cancelled jobs and errors.
constexpr int kExitUsage = 2;
constexpr int kExitTimeout = 3;

constexpr const char* kExitCodesHelp =
    "Exit codes: 0 ok; 1 the job failed or was cancelled, or an error (unreachable coordinator, unknown job);\n"
    "2 bad usage (a missing or malformed option, no coordinator given);\n"
    "3 timed out (--timeout) before the job finished.";
constexpr const char* kJobObjectHelp =
    "Job object (--json): {\"id\", \"object\": \"batch\", \"status\", \"request_counts\": {\"total\", \"completed\", "
    "\"failed\"}, \"created_at\", \"in_progress_at\", \"finalizing_at\", \"completed_at\", \"failed_at\", "
    "\"cancelling_at\", \"cancelled_at\" (unix seconds or null), \"model\", \"task\", \"prompt_tokens\", "
    "\"generated_tokens\", \"throughput_tokens_per_s\", \"error\", \"request_id\", \"placement\"}.\n"
    "Statuses: validating, in_progress, finalizing, completed, failed, cancelling, cancelled.";

// Flags every command has.
struct Target {
  std::string coordinator;
  ClientTlsFlags tls;
};

void AddCoordinatorOption(CLI::App* cmd, Target* t) {
  cmd->add_option("--coordinator", t->coordinator, "HOST:PORT of the coordinator (default: $MESA_COORDINATOR)");
  AddTlsClientFlags(cmd, &t->tls);
}

// The Client for --coordinator or $MESA_COORDINATOR; on failure prints the error and
// sets *exit_code.
std::unique_ptr<mc::Client> Connect(const Target& t, int* exit_code) {
  std::string address = t.coordinator;
  if (address.empty()) {
    const char* env = std::getenv("MESA_COORDINATOR");
    if (env != nullptr) address = env;
  }
  if (address.empty()) {
    Fail(absl::InvalidArgumentError("no coordinator: pass --coordinator HOST:PORT or set MESA_COORDINATOR"));
    *exit_code = kExitUsage;
    return nullptr;
  }
  mc::ConnectionOptions options;
  if (absl::Status s = ApplyClientSecurity(t.tls, &options); !s.ok()) {
    *exit_code = Fail(s);
    return nullptr;
  }
  auto connection = mc::MakeGrpcConnection(address, options);
  if (!connection.ok()) {
    *exit_code = Fail(connection.status());
    return nullptr;
  }
  return std::make_unique<mc::Client>(*std::move(connection));
}

int64_t Done(const mc::JobInfo& j) { return j.request_counts.completed + j.request_counts.failed; }

std::string Counts(const mc::JobInfo& j) {
  return absl::StrFormat("%d total, %d completed, %d failed", j.request_counts.total, j.request_counts.completed,
                         j.request_counts.failed);
}

std::string FormatUnixTime(int64_t t) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixSeconds(t), absl::UTCTimeZone());
}

// Seconds left at the job's pace so far (0 when unknown).
double EtaSeconds(const mc::JobInfo& j) {
  const int64_t done = Done(j);
  if (done <= 0 || j.in_progress_at <= 0 || done >= j.request_counts.total) return 0;
  const double elapsed = static_cast<double>(absl::ToUnixSeconds(absl::Now()) - j.in_progress_at);
  return std::max(0.0, elapsed / static_cast<double>(done) * static_cast<double>(j.request_counts.total - done));
}

// Progress of a job on stderr: the bar of jobs/progress.h redrawn on a terminal,
// otherwise a line when the status changes and at most every 30 s while counts move.
class JobProgress {
 public:
  explicit JobProgress(bool tty) : tty_(tty) {}

  void Update(const mc::JobInfo& j) {
    const std::string bar =
        jobs::FormatProgressBar(Done(j), j.request_counts.total, j.throughput_tokens_per_s, EtaSeconds(j));
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s %s", j.status.c_str(), bar.c_str());
      drawn_ = true;
    } else {
      const absl::Time now = absl::Now();
      const bool moved = Done(j) != last_done_;
      if (j.status != last_status_ || (moved && now - last_line_ >= absl::Seconds(30))) {
        std::fprintf(stderr, "mesa: %s %s %s\n", j.id.c_str(), j.status.c_str(), bar.c_str());
        last_line_ = now;
        last_done_ = Done(j);
      }
    }
    last_status_ = j.status;
    std::fflush(stderr);
  }

  // Ends the bar's line.
  void Finish() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }

 private:
  bool tty_;
  bool drawn_ = false;
  std::string last_status_;
  int64_t last_done_ = -1;
  absl::Time last_line_ = absl::InfinitePast();
};

absl::Duration TimeoutFromSeconds(double seconds) {
  return seconds > 0 ? absl::Seconds(seconds) : absl::InfiniteDuration();
}

// Waits for the job with a progress display and turns the outcome into the exit code.
int WaitAndReport(mc::Client& client, const std::string& job_id, double timeout_s) {
  JobProgress progress(isatty(fileno(stderr)) != 0);
  auto r = client.Wait(job_id, TimeoutFromSeconds(timeout_s), [&](const mc::JobInfo& j) { progress.Update(j); });
  progress.Finish();
  if (!r.ok()) return Fail(r.status());
  const mc::JobInfo& j = r->job;
  if (r->timed_out) {
    Fail(absl::DeadlineExceededError(absl::StrFormat("timed out after %s waiting for job %s (%s; %s)",
                                                     jobs::FormatDuration(timeout_s), job_id,
                                                     j.status.empty() ? "status unknown" : j.status, Counts(j))));
    return kExitTimeout;
  }
  if (j.status == "completed") {
    std::fprintf(stderr, "mesa: job %s completed: %s\n", j.id.c_str(), Counts(j).c_str());
    return 0;
  }
  if (j.status == "failed") {
    return Fail(absl::AbortedError(absl::StrCat("job ", j.id, " failed: ",
                                                j.error.empty() ? "no reason given" : j.error, " (", Counts(j),
                                                ")")));
  }
  return Fail(absl::CancelledError(absl::StrCat("job ", j.id, " was ", j.status, " (", Counts(j), ")")));
}

// ---------------------------------------------------------------- submit

struct SubmitArgs {
  Target target;
  std::string input, task, chat_template, request_id, placement;
  int64_t max_tokens = 0;
  bool wait = false, json = false;
  double timeout_s = 0;
};

int RunSubmit(const SubmitArgs& a) {
  int code = 0;
  auto client = Connect(a.target, &code);
  if (!client) return code;
  mc::JobOptions options;
  options.task = a.task;
  options.max_tokens = a.max_tokens;
  options.chat_template = a.chat_template;
  options.request_id = a.request_id;
  options.placement = a.placement;
  auto job = client->SubmitFile(a.input, options);
  if (!job.ok()) return Fail(job.status());
  if (a.json) {
    std::printf("%s\n", nlohmann::json{{"job_id", job->id}}.dump().c_str());
  } else {
    std::printf("%s\n", job->id.c_str());
  }
  std::fflush(stdout);
  if (!a.wait) return 0;
  return WaitAndReport(*client, job->id, a.timeout_s);
}

// ---------------------------------------------------------------- status, wait, cancel

struct JobArgs {
  Target target;
  std::string job_id;
  bool json = false;
  double timeout_s = 0;
};

void PrintSummary(const mc::JobInfo& j) {
  std::printf("%s: %s\n", j.id.c_str(), j.status.c_str());
  auto row = [](const char* name, const std::string& value) {
    if (!value.empty()) std::printf("  %-13s %s\n", name, value.c_str());
  };
  auto time_row = [&](const char* name, int64_t t) {
    if (t != 0) row(name, FormatUnixTime(t));
  };
  row("requests", Counts(j));
  row("model", j.model);
  row("task", j.task);
  row("placement", j.placement);
  row("tokens", absl::StrFormat("%d prompt, %d generated, %.0f tok/s", j.prompt_tokens, j.generated_tokens,
                                j.throughput_tokens_per_s));
  time_row("created", j.created_at);
  time_row("in progress", j.in_progress_at);
  time_row("finalizing", j.finalizing_at);
  time_row("completed", j.completed_at);
  time_row("failed", j.failed_at);
  time_row("cancelling", j.cancelling_at);
  time_row("cancelled", j.cancelled_at);
  row("request id", j.request_id);
  row("error", j.error);
}

int RunStatus(const JobArgs& a) {
  int code = 0;
  auto client = Connect(a.target, &code);
  if (!client) return code;
  auto job = client->Get(a.job_id);
  if (!job.ok()) return Fail(job.status());
  if (a.json) {
    std::printf("%s\n", mc::JobInfoToJson(*job).c_str());
  } else {
    PrintSummary(*job);
  }
  return 0;
}

int RunWait(const JobArgs& a) {
  int code = 0;
  auto client = Connect(a.target, &code);
  if (!client) return code;
  return WaitAndReport(*client, a.job_id, a.timeout_s);
}

int RunCancel(const JobArgs& a) {
  int code = 0;
  auto client = Connect(a.target, &code);
  if (!client) return code;
  auto job = client->Cancel(a.job_id);
  if (!job.ok()) return Fail(job.status());
  std::printf("%s %s\n", job->id.c_str(), job->status.c_str());
  return 0;
}

// ---------------------------------------------------------------- results

struct ResultsArgs {
  Target target;
  std::string job_id, output, format = "mesa";
};

int RunResults(const ResultsArgs& a) {
  int code = 0;
  auto client = Connect(a.target, &code);
  if (!client) return code;
  auto lines = client->Results(a.job_id, a.format, a.output);
  if (!lines.ok()) return Fail(lines.status());
  std::fprintf(stderr, "mesa: %lld result line%s of job %s in %s\n", static_cast<long long>(*lines),
               *lines == 1 ? "" : "s", a.job_id.c_str(), a.output.c_str());
  return 0;
}

// ---------------------------------------------------------------- list

struct ListArgs {
  Target target;
  bool json = false;
};

int RunList(const ListArgs& a) {
  int code = 0;
  auto client = Connect(a.target, &code);
  if (!client) return code;
  auto jobs = client->List();
  if (!jobs.ok()) return Fail(jobs.status());
  if (a.json) {
    std::printf("%s\n", mc::JobListToJson(*jobs).c_str());
    return 0;
  }
  size_t id_width = 2;
  for (const mc::JobInfo& j : *jobs) id_width = std::max(id_width, j.id.size());
  const int w = static_cast<int>(id_width);
  std::printf("%-*s  %-11s  %11s  %6s  %-23s  %-9s  %s\n", w, "ID", "STATUS", "DONE/TOTAL", "FAILED", "CREATED",
              "TASK", "MODEL");
  for (const mc::JobInfo& j : *jobs) {
    const std::string done = absl::StrCat(Done(j), "/", j.request_counts.total);
    std::printf("%-*s  %-11s  %11s  %6lld  %-23s  %-9s  %s\n", w, j.id.c_str(), j.status.c_str(), done.c_str(),
                static_cast<long long>(j.request_counts.failed),
                j.created_at != 0 ? FormatUnixTime(j.created_at).c_str() : "-", j.task.c_str(), j.model.c_str());
  }
  return 0;
}

// ---------------------------------------------------------------- workers

struct WorkersArgs {
  Target target;
  bool json = false;
};

// "1.5G", "512M", "0": a byte count for a table.
std::string ShortBytes(int64_t bytes) {
  const char* units[] = {"", "K", "M", "G", "T"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(bytes) : absl::StrFormat(v < 10 ? "%.1f%s" : "%.0f%s", v, units[u]);
}

int RunWorkers(const WorkersArgs& a) {
  int code = 0;
  auto client = Connect(a.target, &code);
  if (!client) return code;
  auto workers = client->Workers();
  if (!workers.ok()) return Fail(workers.status());
  if (a.json) {
    std::printf("%s\n", mc::WorkerListToJson(*workers).c_str());
    return 0;
  }
  if (workers->empty()) {
    std::fprintf(stderr, "mesa: no worker is registered with this coordinator\n");
    return 0;
  }
  size_t id_width = 2, device_width = 6;
  for (const mc::WorkerInfo& w : *workers) {
    id_width = std::max(id_width, w.id.size());
    device_width = std::max(device_width, w.device.size());
  }
  const int iw = static_cast<int>(id_width), dw = static_cast<int>(device_width);
  std::printf("%-*s  %-8s  %-*s  %-6s  %-6s  %-13s  %6s  %s\n", iw, "ID", "STATE", dw, "DEVICE", "KV", "LINKS",
              "K/V HELD/MAX", "BEAT", "TASK");
  for (const mc::WorkerInfo& w : *workers) {
    const std::string kv = absl::StrCat(ShortBytes(w.kv_bytes_held), "/",
                                        w.kv_budget_bytes > 0 ? ShortBytes(w.kv_budget_bytes) : "-");
    const bool linked = w.kv_transport == "socket" || w.kv_transport == "nccl";
    const std::string links =
        linked ? absl::StrCat(w.peer_links, "/", w.peer_links_max > 0 ? absl::StrCat(w.peer_links_max) : "-") : "-";
    std::string task = "-";
    if (w.busy) {
      task = absl::StrCat(w.task.job_id, " item ", w.task.item, " ",
                          w.task.kind == "chunk" ? absl::StrCat("chunk ", w.task.chunk)
                                                 : (w.task.whole ? "final (whole)" : "final"),
                          absl::StrFormat(" for %.1fs", static_cast<double>(w.task.running_ms) / 1000));
    }
    std::printf("%-*s  %-8s  %-*s  %-6s  %-6s  %-13s  %5.1fs  %s\n", iw, w.id.c_str(), w.state.c_str(), dw,
                w.device.empty() ? "-" : w.device.c_str(), w.kv_transport.empty() ? "-" : w.kv_transport.c_str(),
                links.c_str(), kv.c_str(), static_cast<double>(w.heartbeat_age_ms) / 1000, task.c_str());
  }
  return 0;
}

}  // namespace

void RegisterClientCommands(CLI::App& app) {
  {
    auto a = std::make_shared<SubmitArgs>();
    CLI::App* cmd = app.add_subcommand("submit", "Submit a JSONL file of documents as a job to a Mesa coordinator");
    cmd->footer(absl::StrCat(
        "Input lines: as for `mesa run` ({\"custom_id\", \"document\" (or \"text\"), \"question\", \"prompt\", "
        "\"max_tokens\", \"task\"}) or OpenAI batch lines; every line is sent, in order.\n"
        "Output (stdout): the job id, or with --json {\"job_id\": \"...\"}. With --wait, progress follows on stderr "
        "(a bar on a terminal, periodic lines otherwise) and the command exits like `mesa wait`.\n"
        "Submitting again with the same --request-id returns the first job instead of a new one (and lets the "
        "upload be retried safely when the connection drops).\n",
        kExitCodesHelp,
        "\nExamples:\n"
        "  mesa submit --coordinator host:50051 --input docs.jsonl --task qa\n"
        "  JOB=$(mesa submit --input docs.jsonl --request-id $(uuidgen))   # MESA_COORDINATOR set\n"
        "  JOB=$(mesa submit --input docs.jsonl --wait --timeout 3600) && mesa results $JOB --output out.jsonl"));
    AddCoordinatorOption(cmd, &a->target);
    cmd->add_option("--input,-i", a->input, "Input JSONL, one document per line")
        ->required()
        ->check(CLI::ExistingFile);
    cmd->add_option("--task", a->task,
                    "summarize, qa (answer each line's \"question\") or prompt (follow each line's \"prompt\"); "
                    "default: summarize (a line's \"task\" wins)")
        ->check(CLI::IsMember({"summarize", "qa", "prompt"}));
    cmd->add_option("--max-tokens", a->max_tokens,
                    "Tokens to generate at most per document (a line's max_tokens wins; default: the "
                    "coordinator's, 256)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--template", a->chat_template,
                    "Chat template: auto (default: from the model), llama2, llama3, chatml, mistral, or raw")
        ->check(CLI::IsMember({"auto", "llama2", "llama3", "chatml", "mistral", "raw"}));
    cmd->add_option("--request-id", a->request_id,
                    "Idempotency key (e.g. a UUID): a repeat with the same id returns the first job");
    cmd->add_option("--placement", a->placement,
                    "auto, whole (each document on one worker) or spread (a long document's chunks over all "
                    "workers); default: the coordinator's --placement")
        ->check(CLI::IsMember({"auto", "whole", "spread"}));
    cmd->add_flag("--wait", a->wait, "Follow the job until it finishes (exit codes as `mesa wait`)");
    cmd->add_option("--timeout", a->timeout_s, "With --wait: give up after this many seconds (0 = never; exit 3)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_flag("--json", a->json, "Print {\"job_id\": \"...\"} instead of the bare id");
    cmd->callback([a] { ExitCode() = RunSubmit(*a); });
  }
  {
    auto a = std::make_shared<JobArgs>();
    CLI::App* cmd = app.add_subcommand("status", "Show a job: status, counts, tokens, times");
    cmd->footer(absl::StrCat(
        "Output: a summary (\"JOB: STATUS\" then one indented line per known field), or with --json the job "
        "object on one line.\n",
        kJobObjectHelp,
        "\nExamples:\n"
        "  mesa status --coordinator host:50051 JOB\n"
        "  mesa status JOB --json | jq .request_counts"));
    AddCoordinatorOption(cmd, &a->target);
    cmd->add_option("job", a->job_id, "Job id (from `mesa submit` or `mesa list`)")->required();
    cmd->add_flag("--json", a->json, "Print the job object as JSON");
    cmd->callback([a] { ExitCode() = RunStatus(*a); });
  }
  {
    auto a = std::make_shared<JobArgs>();
    CLI::App* cmd = app.add_subcommand("wait", "Wait until a job finishes, showing its progress");
    cmd->footer(absl::StrCat(
        "Progress goes to stderr (a bar on a terminal, periodic lines otherwise), then \"mesa: job JOB completed: "
        "N total, C completed, F failed\". A completed job may hold failed items (see its results); a failed or "
        "cancelled job is an error. Interrupting the wait does not cancel the job.\n",
        kExitCodesHelp,
        "\nExamples:\n"
        "  mesa wait --coordinator host:50051 JOB\n"
        "  mesa wait JOB --timeout 600 || echo \"not done: $?\""));
    AddCoordinatorOption(cmd, &a->target);
    cmd->add_option("job", a->job_id, "Job id")->required();
    cmd->add_option("--timeout", a->timeout_s, "Give up after this many seconds (0 = never; exit 3)")
        ->check(CLI::NonNegativeNumber);
    cmd->callback([a] { ExitCode() = RunWait(*a); });
  }
  {
    auto a = std::make_shared<ResultsArgs>();
    CLI::App* cmd = app.add_subcommand("results", "Download a finished job's results, one line per input line");
    cmd->footer(
        "Results come in input order. --format mesa: the lines of `mesa run` ({\"custom_id\", \"line\", "
        "\"status\": \"ok\"|\"error\", \"text\", \"prompt_tokens\", \"generated_tokens\", \"stop_reason\", ...}); "
        "openai: OpenAI batch output lines ({\"id\", \"custom_id\", \"response\": {\"status_code\", "
        "\"request_id\", \"body\"} | null, \"error\": {\"code\", \"message\"} | null}).\n"
        "The file is written whole or not at all (a temporary file beside it is renamed at the end); an existing "
        "file is replaced.\n"
        "Example: mesa results --coordinator host:50051 JOB --output results.jsonl --format openai");
    AddCoordinatorOption(cmd, &a->target);
    cmd->add_option("job", a->job_id, "Job id")->required();
    cmd->add_option("--output,-o", a->output, "Output JSONL file")->required();
    cmd->add_option("--format", a->format, "mesa or openai")
        ->check(CLI::IsMember({"mesa", "openai"}))
        ->capture_default_str();
    cmd->callback([a] { ExitCode() = RunResults(*a); });
  }
  {
    auto a = std::make_shared<JobArgs>();
    CLI::App* cmd = app.add_subcommand("cancel", "Cancel a job (best effort; finished items are kept)");
    cmd->footer(
        "Output: \"JOB STATUS\" after the request (usually cancelling; then cancelled once running items stop). "
        "A cancelled job stays readable: `mesa results` returns what finished.\n"
        "Example: mesa cancel --coordinator host:50051 JOB");
    AddCoordinatorOption(cmd, &a->target);
    cmd->add_option("job", a->job_id, "Job id")->required();
    cmd->callback([a] { ExitCode() = RunCancel(*a); });
  }
  {
    auto a = std::make_shared<ListArgs>();
    CLI::App* cmd = app.add_subcommand("list", "List the coordinator's jobs, newest first");
    cmd->footer(absl::StrCat(
        "Output: a table (ID, STATUS, DONE/TOTAL, FAILED, CREATED, TASK, MODEL), or with --json a JSON array "
        "of job objects on one line.\n",
        kJobObjectHelp,
        "\nExamples:\n"
        "  mesa list --coordinator host:50051\n"
        "  mesa list --json | jq -r '.[] | select(.status == \"in_progress\") | .id'"));
    AddCoordinatorOption(cmd, &a->target);
    cmd->add_flag("--json", a->json, "Print a JSON array of job objects");
    cmd->callback([a] { ExitCode() = RunList(*a); });
  }
  {
    auto a = std::make_shared<WorkersArgs>();
    CLI::App* cmd = app.add_subcommand("workers", "List the workers registered with a coordinator and what they do");
    cmd->footer(
        "Output: a table (ID, STATE idle|busy|draining, DEVICE the worker computes on, KV its K/V transport "
        "grpc|socket|nccl, LINKS its peer links now / its --kv-links (socket and nccl), K/V HELD/MAX chunk K/V "
        "the coordinator counts on it against its --kv-memory, BEAT "
        "seconds since its last heartbeat, TASK the task it runs), or with --json a JSON array on one line: "
        "{\"id\", \"name\", \"address\", \"device\", \"kv_transport\", \"threads\", \"state\", "
        "\"kv_bytes_held\", \"kv_budget_bytes\", \"kv_bytes_reported\" (by the worker's own count), "
        "\"peer_links\", \"peer_links_max\", \"heartbeat_age_ms\", \"joined_at\", \"task\": null | "
        "{\"job_id\", \"item\", \"kind\", \"chunk\", \"attempt\", \"whole\", \"running_ms\"}}.\n"
        "A worker silent for longer than the coordinator's --heartbeat-timeout is dropped from the list.\n"
        "Examples:\n"
        "  mesa workers --coordinator host:50051\n"
        "  mesa workers --json | jq -r '.[] | select(.state == \"idle\") | .id'");
    AddCoordinatorOption(cmd, &a->target);
    cmd->add_flag("--json", a->json, "Print a JSON array of workers");
    cmd->callback([a] { ExitCode() = RunWorkers(*a); });
  }
  RegisterHealthCommand(app);  // `mesa health` (security_flags.cc)
}

}  // namespace mesa::cli
