// The batch loop of `mesa run`: resume, per-line prompts, generation, result records.
#include "jobs/batch_runner.h"

#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <memory>

#include "absl/strings/str_cat.h"

namespace mesa::jobs {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};

}  // namespace

std::string DecodeContinuation(const Tokenizer& tokenizer, absl::Span<const int32_t> prompt,
                               absl::Span<const int32_t> generated) {
  // A bounded tail of the prompt is enough context for the join.
  const size_t keep = std::min<size_t>(prompt.size(), 16);
  std::vector<int32_t> all(prompt.end() - keep, prompt.end());
  const std::string head = tokenizer.Decode(all);
  all.insert(all.end(), generated.begin(), generated.end());
  const std::string full = tokenizer.Decode(all);
  if (full.compare(0, head.size(), head) == 0) return full.substr(head.size());
  return tokenizer.Decode(generated);
}

bool AlreadyDone(const ParsedLine& line, const ExistingOutput& existing, bool retry_errors) {
  if (line.ok()) {
    if (existing.done_ids.contains(line.custom_id)) return true;
    return !retry_errors && existing.error_ids.contains(line.custom_id);
  }
  return !retry_errors && existing.error_lines.contains(line.line);
}

absl::StatusOr<std::vector<int32_t>> LinePrompt(const Tokenizer& tokenizer, ChatTemplate chat_template,
                                                const JobInput& input) {
  const std::vector<PromptPiece> pieces = BuildPrompt(chat_template, input.task, input);
  return TokenizePrompt(tokenizer, pieces);
}

JobResult MakeResult(const Tokenizer& tokenizer, const ParsedLine& line, absl::Span<const int32_t> prompt,
                     GenerationOutput gen) {
  JobResult result;
  result.custom_id = line.custom_id;
  result.line = line.line;
  std::vector<int32_t> text_ids = gen.tokens;
  while (!text_ids.empty() && tokenizer.IsEndOfGeneration(text_ids.back())) text_ids.pop_back();
  result.text = DecodeContinuation(tokenizer, prompt, text_ids);
  result.prompt_tokens = static_cast<int64_t>(prompt.size());
  result.generated_tokens = static_cast<int64_t>(gen.tokens.size());
  result.stop_reason = std::move(gen.stop_reason);
  result.attention = std::move(gen.attention);
  result.plan = std::move(gen.plan);
  result.prefill_s = gen.prefill_s;
  result.decode_s = gen.decode_s;
  result.created = static_cast<int64_t>(std::time(nullptr));
  return result;
}

absl::StatusOr<BatchSummary> RunBatch(const std::string& input_path, const std::string& output_path,
                                      const Tokenizer& tokenizer, DocumentGenerator& generator,
                                      const BatchOptions& options, BatchObserver* observer) {
  auto existing = ReadExistingOutput(output_path, options.retry_errors);
  if (!existing.ok()) return existing.status();

  // Pass 1: how many lines are left (for progress), and that the input is readable.
  BatchSummary summary;
  int64_t todo = 0;
  {
    auto reader = InputReader::Open(input_path, options.task, options.limits);
    if (!reader.ok()) return reader.status();
    while (auto line = reader->Next()) {
      if (AlreadyDone(*line, *existing, options.retry_errors)) {
        ++summary.skipped;
      } else {
        ++todo;
      }
    }
    if (!reader->status().ok()) return reader->status();
  }

  // The kept records, without the dropped partial line and retried errors, then append.
  if (absl::Status s = RewriteFile(output_path, existing->kept_lines); !s.ok()) return s;
  std::unique_ptr<std::FILE, FileCloser> out(std::fopen(output_path.c_str(), "ab"));
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot append to '", output_path, "'"));
  if (observer) observer->OnStart(todo, summary.skipped, *existing);

  auto reader = InputReader::Open(input_path, options.task, options.limits);
  if (!reader.ok()) return reader.status();
  while (auto line = reader->Next()) {
    if (AlreadyDone(*line, *existing, options.retry_errors)) continue;
    JobResult result;
    result.custom_id = line->custom_id;
    result.line = line->line;
    result.status = line->error;
    if (line->ok()) {
      const JobInput& in = line->input;
      auto prompt = LinePrompt(tokenizer, options.chat_template, in);
      if (!prompt.ok()) {
        result.status = absl::Status(prompt.status().code(),
                                     absl::StrCat("line ", in.line, ": ", prompt.status().message()));
      } else {
        const int64_t max_new = in.max_tokens.value_or(options.max_tokens);
        auto gen = generator.Generate(*prompt, max_new);
        if (!gen.ok()) {
          result.status = absl::Status(gen.status().code(),
                                       absl::StrCat("line ", in.line, ": ", gen.status().message()));
        } else {
          result = MakeResult(tokenizer, *line, *prompt, *std::move(gen));
        }
      }
    }
    const std::string record = ResultToLine(result);
    if (std::fwrite(record.data(), 1, record.size(), out.get()) != record.size() || std::fflush(out.get()) != 0) {
      return absl::DataLossError(absl::StrCat("error writing '", output_path, "'"));
    }
    fsync(fileno(out.get()));  // a finished document survives a crash of the machine too
    ++summary.processed;
    if (result.status.ok()) {
      ++summary.ok;
      summary.prompt_tokens += result.prompt_tokens;
      summary.generated_tokens += result.generated_tokens;
    } else {
      ++summary.errors;
    }
    if (observer) observer->OnRecord(result, summary.processed, todo);
  }
  if (!reader->status().ok()) return reader->status();
  if (std::fclose(out.release()) != 0) return absl::DataLossError(absl::StrCat("error closing '", output_path, "'"));
  return summary;
}

}  // namespace mesa::jobs
