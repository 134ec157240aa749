// The JSONL formats of a batch job (`mesa run`, later the coordinator), after the
// OpenAI batch line shape: one document per input line keyed by a user-chosen
// `custom_id`, one result record per input line. Input lines are Mesa's own (a
// document and a task) or OpenAI batch lines (chat messages); both may be mixed in one
// file. Parsing validates each line on its own so that a bad line fails only itself;
// InputReader adds the cross-line check (duplicate custom_id). Reading an existing
// output file supports resuming a run. Result records convert to OpenAI batch output
// lines for export.
#pragma once

#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace mesa::jobs {

// What to do with each line. kChat is the task of every OpenAI batch line (its
// messages go through the chat template as they are, with no task instruction); it is
// given by the line's shape, never by name (ParseTaskKind refuses "chat").
enum class TaskKind { kSummarize, kQa, kPrompt, kChat };
const char* TaskKindName(TaskKind task);  // "summarize", "qa", "prompt", "chat"
// summarize, qa or prompt (a run's --task or a line's "task").
absl::StatusOr<TaskKind> ParseTaskKind(std::string_view name);

enum class ChatRole { kSystem, kUser, kAssistant };
const char* ChatRoleName(ChatRole role);  // "system", "user", "assistant"

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  std::string content;  // text parts already joined
  bool operator==(const ChatMessage&) const = default;
};

// One valid input line, in one of two shapes.
// Mesa's own:
//   {"custom_id": "doc-1", "document": "...", "question": "..." (qa),
//    "prompt": "..." (task prompt), "max_tokens": 128 (optional),
//    "task": "qa" (optional: this line's task instead of the run's)}
//   "text" is accepted as an alias of "document". Other fields are ignored.
// OpenAI batch (a line with any of method, url, body; task kChat):
//   {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
//    "body": {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...],
//             "max_tokens": 128 (or "max_completion_tokens"; optional)}}
//   content is a string or an array of {"type": "text", "text": "..."} parts (joined
//   with "\n"). Other body fields (model, temperature, ...) are ignored: the run's
//   model and sampling apply.
struct JobInput {
  std::string custom_id;
  TaskKind task = TaskKind::kSummarize;  // the run's task unless the line names one
  std::string document;
  std::string question;               // qa
  std::string prompt;                 // the custom instruction (prompt task)
  std::vector<ChatMessage> messages;  // chat (OpenAI batch lines)
  std::optional<int64_t> max_tokens;  // overrides --max-tokens for this line
  int64_t line = 0;                   // 1-based line number in the input file
};

struct InputLimits {
  int64_t max_doc_bytes = 0;  // 0: no limit (for chat lines: all contents together)
};

// A parsed line: either `input` (ok) or `error` with whatever custom_id could be found
// (empty when the line has none, e.g. invalid JSON).
struct ParsedLine {
  int64_t line = 0;
  std::string custom_id;
  absl::Status error;
  JobInput input;
  bool ok() const { return error.ok(); }
};

// Validates one line (without its newline); `task` is the run's task, which a line's
// "task" field overrides (an OpenAI batch line is always kChat). Never fails the
// caller: errors are in the result.
// Checks: valid UTF-8, valid JSON, an object, a non-empty string custom_id; then for
// Mesa's lines a known task, a non-empty string document (or text, not both), within
// limits, the task's field (question for qa, prompt for prompt) as a non-empty string,
// max_tokens a non-negative integer; for OpenAI batch lines method "POST", url
// "/v1/chat/completions", body an object, body.messages a non-empty array of
// {role: system|user|assistant, content: string or text parts} with some non-blank
// content, within limits, at most one of body.max_tokens and
// body.max_completion_tokens, a non-negative integer, and none of Mesa's line fields
// (document, text, question, prompt, task, max_tokens).
ParsedLine ParseJobLine(std::string_view text, int64_t line, TaskKind task, const InputLimits& limits);

// Reads an input JSONL file line by line, skipping blank lines, and marks repeated
// custom_ids as errors (the first occurrence wins). Not thread-safe.
class InputReader {
 public:
  static absl::StatusOr<InputReader> Open(const std::string& path, TaskKind task, InputLimits limits);
  // The next non-blank line, or nullopt at the end of the file.
  std::optional<ParsedLine> Next();
  // An I/O error met while reading (OK at a clean end of file).
  absl::Status status() const { return status_; }

 private:
  InputReader(std::ifstream in, std::string path, TaskKind task, InputLimits limits);
  std::ifstream in_;
  std::string path_;
  TaskKind task_;
  InputLimits limits_;
  int64_t line_ = 0;
  absl::flat_hash_map<std::string, int64_t> seen_;  // custom_id -> first line
  absl::Status status_;
};

// One output record. Serialized as a single JSON line:
//   ok:    {"custom_id", "line", "status": "ok", "text", "prompt_tokens",
//           "generated_tokens", "stop_reason", "attention", "plan": {...},
//           "timings": {"prefill_s", "decode_s", "prefill_tokens_per_s",
//                       "decode_tokens_per_s"}, "created" (when known)}
//   error: {"custom_id" (null when unknown), "line", "status": "error", "error",
//           "error_code" (the status code in lower case, e.g. "invalid_argument")}
struct JobResult {
  std::string custom_id;  // empty: unknown (serialized as null)
  int64_t line = 0;
  absl::Status status;    // not OK: an error record with status.message()
  std::string text;
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  std::string stop_reason;
  std::string attention;
  nlohmann::json plan = nlohmann::json::object();
  double prefill_s = 0, decode_s = 0;
  int64_t created = 0;    // unix seconds when generated (0: unknown, not serialized)
};
nlohmann::json ResultToJson(const JobResult& result);
// One line, newline included; invalid UTF-8 in generated text is replaced by U+FFFD.
std::string ResultToLine(const JobResult& result);
// The inverse of ResultToJson (rates are not read back: they follow from the rest). An
// error record without "error_code" (older records) gets code UNKNOWN.
// InvalidArgument when `j` is not a record.
absl::StatusOr<JobResult> ResultFromJson(const nlohmann::json& j);

// The OpenAI batch output line of a record, newline included:
//   ok:    {"id": "batch_req_<hex>", "custom_id", "response": {"status_code": 200,
//           "request_id": "req_<hex>", "body": {"id": "chatcmpl-<hex>",
//           "object": "chat.completion", "created", "model", "choices": [{"index": 0,
//           "message": {"role": "assistant", "content": text},
//           "finish_reason": "length" (stop_reason "length") or "stop"}],
//           "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}},
//           "error": null}
//   error: {"id", "custom_id", "response": null,
//           "error": {"code": error_code as in the record, "message"}}
// custom_id is null when unknown. The ids are hashes of `batch_id` and the record's
// line (no randomness), and "created" is result.created, so exporting the same records
// again gives the same bytes.
std::string ResultToOpenAiLine(const JobResult& result, const std::string& model, const std::string& batch_id);
// ResultToOpenAiLine of a stored record line (ResultToLine's output, with or without
// its newline). A line that is not a record (corrupt storage) becomes an OpenAI error
// line with code "data_loss" (and whatever custom_id and line it shows), so that an
// export never stops halfway.
std::string MesaLineToOpenAiLine(std::string_view mesa_record_line, const std::string& model,
                                 const std::string& batch_id);

// What an existing output file already holds, for resuming.
struct ExistingOutput {
  std::vector<std::string> kept_lines;  // complete records to keep, newline included
  absl::flat_hash_set<std::string> done_ids;  // custom_ids with an "ok" record
  // Kept error records (only when not retrying errors): by custom_id, and by input line
  // (for lines that failed validation, which may have no custom_id).
  absl::flat_hash_set<std::string> error_ids;
  absl::flat_hash_set<int64_t> error_lines;
  int64_t dropped_partial = 0;  // a truncated last line (crash) that was dropped
  int64_t dropped_errors = 0;   // error records dropped so that their lines are retried
  int64_t dropped_invalid = 0;  // complete lines that were not records (corruption)
};

// Reads `path` (missing: empty). Keeps every status "ok" record (the first per
// custom_id) and, when !retry_errors, every error record; drops a truncated last line
// and lines that are not records.
absl::StatusOr<ExistingOutput> ReadExistingOutput(const std::string& path, bool retry_errors);

// Replaces `path` with `lines` (via a temporary file and rename, so a crash leaves
// either the old or the new file).
absl::Status RewriteFile(const std::string& path, const std::vector<std::string>& lines);

}  // namespace mesa::jobs
