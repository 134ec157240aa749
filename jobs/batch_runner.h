// The transport-free loop of `mesa run`: read an input JSONL, build each document's
// prompt (task + chat template), generate, and append one result record per input line,
// flushed as each finishes. Resumable: records already in the output with status "ok"
// are kept and their lines skipped; error records are retried unless told otherwise.
// The model call is behind DocumentGenerator so the loop is testable without a model
// (jobs/long_generator.h has the engine's implementation).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer.h"
#include "jobs/job_format.h"
#include "jobs/templates.h"
#include "nlohmann/json.hpp"

namespace mesa::jobs {

struct GenerationOutput {
  std::vector<int32_t> tokens;  // generated ids (EOS included when it stopped there)
  std::string stop_reason;      // "eos", "length", ...
  std::string attention;        // the method actually used, e.g. "mesa"
  nlohmann::json plan = nlohmann::json::object();  // PrefillInfo::ToJson()
  double prefill_s = 0, decode_s = 0;
};

// Runs one prompt. Implementations need not be thread-safe: RunBatch calls them from
// one thread.
class DocumentGenerator {
 public:
  virtual ~DocumentGenerator() = default;
  virtual absl::StatusOr<GenerationOutput> Generate(absl::Span<const int32_t> prompt,
                                                    int64_t max_new_tokens) = 0;
};

struct BatchOptions {
  TaskKind task = TaskKind::kSummarize;  // lines may name their own
  ChatTemplate chat_template = ChatTemplate::kRaw;  // resolved (not kAuto)
  int64_t max_tokens = 256;                         // per line unless the line says
  InputLimits limits;
  bool retry_errors = true;
};

// Told about progress; called on RunBatch's thread.
class BatchObserver {
 public:
  virtual ~BatchObserver() = default;
  // `todo` lines will be processed; `skipped` are already done in the output.
  virtual void OnStart(int64_t /*todo*/, int64_t /*skipped*/, const ExistingOutput& /*existing*/) {}
  // After each processed line's record is written; `done` counts up to `todo`.
  virtual void OnRecord(const JobResult& /*result*/, int64_t /*done*/, int64_t /*todo*/) {}
};

struct BatchSummary {
  int64_t processed = 0;  // records written by this run
  int64_t ok = 0;
  int64_t errors = 0;
  int64_t skipped = 0;    // lines already done
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
};

// Fails only for problems with the run as a whole (unreadable input, unwritable output);
// a bad line or a failed generation becomes that line's error record.
absl::StatusOr<BatchSummary> RunBatch(const std::string& input_path, const std::string& output_path,
                                      const Tokenizer& tokenizer, DocumentGenerator& generator,
                                      const BatchOptions& options, BatchObserver* observer = nullptr);

// Whether a line of the input is already settled by an existing output (resume).
bool AlreadyDone(const ParsedLine& line, const ExistingOutput& existing, bool retry_errors);

// The token ids of one valid line's prompt: its task instruction and document inside
// the chat template (the same prompt for `mesa run` and the coordinator).
absl::StatusOr<std::vector<int32_t>> LinePrompt(const Tokenizer& tokenizer, ChatTemplate chat_template,
                                                const JobInput& input);
// The record of a finished generation for `line` (EOS ends the text but is not part of
// it), exactly as `mesa run` writes it.
JobResult MakeResult(const Tokenizer& tokenizer, const ParsedLine& line, absl::Span<const int32_t> prompt,
                     GenerationOutput gen);

// The text of `generated` as it continues `prompt` (decoding them together keeps
// word-initial spaces and characters split across byte tokens intact).
std::string DecodeContinuation(const Tokenizer& tokenizer, absl::Span<const int32_t> prompt,
                               absl::Span<const int32_t> generated);

}  // namespace mesa::jobs
