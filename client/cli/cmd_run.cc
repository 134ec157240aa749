// `mesa run`: a batch of documents (JSONL, one per line) through a task template and
// the model with long-context attention (Mesa by default), one result line per input
// line. A thin shell over jobs::RunBatch; see jobs/batch_runner.h.
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"
#include "client/cli/attention_flags.h"
#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "client/cli/device_flags.h"
#include "coordinator/local_run.h"
#include "jobs/batch_runner.h"
#include "jobs/progress.h"
#include "ops/log.h"

namespace mesa::cli {
namespace {

struct RunArgs {
  std::string model, input, output;
  std::string task = "summarize";
  std::string chat_template = "auto";
  int64_t max_tokens = 256;
  int64_t max_doc_bytes = 16 << 20;
  bool no_retry_errors = false;
  int threads = 0;
  DeviceFlags device;
  int workers = 1;
  std::string placement = "auto";
  LongContextFlags lc;
};

int RunRun(const RunArgs& a) {
  auto task = jobs::ParseTaskKind(a.task);
  if (!task.ok()) return Fail(task.status());
  auto requested = jobs::ParseChatTemplate(a.chat_template);
  if (!requested.ok()) return Fail(requested.status());
  auto lc = ToLongContextOptions(a.lc);
  if (!lc.ok()) return Fail(lc.status());
  if (a.input == a.output) return Fail(absl::InvalidArgumentError("--input and --output must differ"));
  auto model = LoadModelForCli(a.model, /*compute=*/true, a.device.device);
  if (!model.ok()) return Fail(model.status());
  if (!(*model)->tokenizer) return Fail(absl::FailedPreconditionError("the model has no tokenizer"));

  jobs::BatchOptions options;
  options.task = *task;
  options.chat_template = jobs::ResolveChatTemplate(*requested, (*model)->chat_template);
  options.max_tokens = a.max_tokens;
  options.limits.max_doc_bytes = a.max_doc_bytes;
  options.retry_errors = !a.no_retry_errors;
  std::string why = *requested != jobs::ChatTemplate::kAuto ? "as asked"
                    : (*model)->chat_template.empty() ? "the model has no chat template"
                                                      : "from the model's chat template";
  std::fprintf(stderr, "mesa run: task %s, template %s (%s), attention %s, up to %lld new tokens per document\n",
               jobs::TaskKindName(options.task), jobs::ChatTemplateName(options.chat_template), why.c_str(),
               a.lc.attention.c_str(), static_cast<long long>(a.max_tokens));

  jobs::ProgressPrinter progress(stderr, isatty(fileno(stderr)) != 0);
  // The coordinator core with K in-process workers: the scheduling path of a cluster.
  coord::LocalRunOptions local;
  local.workers = a.workers;
  local.threads = a.threads;
  local.device = a.device.device;
  local.kv_type = a.device.kv_type;
  coord::ParsePlacement(a.placement, &local.placement);
  local.task = options.task;
  local.chat_template = a.chat_template;
  local.max_tokens = options.max_tokens;
  local.limits = options.limits;
  local.retry_errors = options.retry_errors;
  local.attention = *lc;
  // `mesa run` prints its own progress: of the core's event log (ops/log.h: job and item
  // lines, meant for servers) only warnings and errors.
  ops::ConfigureLog(ops::LogLevel::kWarn, ops::LogFormat::kText);
  auto summary = coord::RunBatchLocal(a.input, a.output, **model, local, &progress);
  progress.Finish();
  if (!summary.ok()) return Fail(summary.status());
  std::fprintf(stderr, "mesa run: %lld ok, %lld error%s", static_cast<long long>(summary->ok),
               static_cast<long long>(summary->errors), summary->errors == 1 ? "" : "s");
  if (summary->skipped > 0) {
    std::fprintf(stderr, ", %lld already done", static_cast<long long>(summary->skipped));
  }
  std::fprintf(stderr, "; results in %s\n", a.output.c_str());
  return 0;
}

}  // namespace

void RegisterRun(CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand(
      "run",
      "Run a task on every document of a JSONL file, one result line per input line (resumable)");
  cmd->footer(
      "Input lines: {\"custom_id\": \"...\", \"document\": \"...\" (or \"text\"), \"question\": \"...\" (qa), "
      "\"prompt\": \"...\" (task prompt), \"max_tokens\": N (optional), \"task\": \"qa\" (optional: this line's "
      "task)}.\n"
      "Output lines: {\"custom_id\", \"line\", \"status\": \"ok\"|\"error\", \"text\", \"prompt_tokens\", "
      "\"generated_tokens\", \"stop_reason\", \"attention\", \"plan\", \"timings\", \"error\"}.\n"
      "A bad line gives an error record and the run goes on. Rerunning with the same --output skips "
      "lines already done (status ok) and retries errors.");
  cmd->add_option("--model,-m", a->model, "GGUF file or Hugging Face model directory")->required();
  cmd->add_option("--input,-i", a->input, "Input JSONL, one document per line")->required()->check(CLI::ExistingFile);
  cmd->add_option("--output,-o", a->output, "Output JSONL; if it exists, the run resumes")->required();
  cmd->add_option("--task", a->task,
                  "summarize, qa (answer each line's \"question\") or prompt (follow each line's \"prompt\"); the "
                  "instruction goes before the document and again after it")
      ->check(CLI::IsMember({"summarize", "qa", "prompt"}))
      ->capture_default_str();
  cmd->add_option("--max-tokens", a->max_tokens, "Tokens to generate at most per document (a line's max_tokens wins)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--template", a->chat_template,
                  "Chat template: auto (from the model's tokenizer.chat_template; raw when it has none), llama2, "
                  "llama3, chatml, mistral, or raw (no template, for base models)")
      ->check(CLI::IsMember({"auto", "llama2", "llama3", "chatml", "mistral", "raw"}))
      ->capture_default_str();
  cmd->add_option("--max-doc-bytes", a->max_doc_bytes, "Longer documents get an error record (0 = no limit)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--no-retry-errors", a->no_retry_errors,
                "When resuming, keep earlier error records instead of retrying those lines");
  cmd->add_option("--threads", a->threads, "CPU threads (default: all hardware threads)")
      ->check(CLI::NonNegativeNumber);
  AddDeviceFlags(cmd, &a->device);
  cmd->add_option("--workers", a->workers,
                  "In-process workers sharing the model and the --threads (the same coordinator core and "
                  "scheduler as a cluster): documents run in parallel, or one long document's chunks do")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--placement", a->placement,
                  "How documents use the workers: whole (one worker each), spread (a long document's middle "
                  "chunks on every worker), auto (whole while documents queue, spread when workers would idle)")
      ->check(CLI::IsMember({"auto", "whole", "spread"}))
      ->capture_default_str();
  AddLongContextFlags(cmd, &a->lc);
  cmd->callback([a] { ExitCode() = RunRun(*a); });
}

}  // namespace mesa::cli
