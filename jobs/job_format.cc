// JSONL input/output formats of batch jobs: line validation, result records, resume.
#include "jobs/job_format.h"

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/unicode.h"

namespace mesa::jobs {
namespace {

using json = nlohmann::json;

// Debian's abseil has its own string_view type.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::Status LineError(int64_t line, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", message));
}

// Best effort, for error records: the custom_id of a line that failed validation.
std::string FindCustomId(const json& j) {
  if (!j.is_object()) return "";
  auto it = j.find("custom_id");
  if (it == j.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

// A required non-empty string field. `what` names it in messages.
absl::Status GetString(const json& j, const char* key, const std::string& what, std::string* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::InvalidArgumentError(absl::StrCat("missing field ", what));
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("field '", key, "' must be a string, not ", it->type_name()));
  }
  *out = it->get<std::string>();
  if (absl::StripAsciiWhitespace(*out).empty()) {
    return absl::InvalidArgumentError(absl::StrCat("field '", key, "' is empty"));
  }
  return absl::OkStatus();
}

}  // namespace

const char* TaskKindName(TaskKind task) {
  switch (task) {
    case TaskKind::kSummarize: return "summarize";
    case TaskKind::kQa: return "qa";
    case TaskKind::kPrompt: return "prompt";
  }
  return "?";
}

absl::StatusOr<TaskKind> ParseTaskKind(std::string_view name) {
  for (TaskKind t : {TaskKind::kSummarize, TaskKind::kQa, TaskKind::kPrompt}) {
    if (name == TaskKindName(t)) return t;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown task '", Av(name), "' (choose summarize, qa or prompt)"));
}

ParsedLine ParseJobLine(std::string_view text, int64_t line, TaskKind task, const InputLimits& limits) {
  ParsedLine r;
  r.line = line;
  auto fail = [&](absl::string_view message) {
    r.error = LineError(line, message);
    return r;
  };
  if (size_t bad = FindInvalidUtf8(text); bad != std::string_view::npos) {
    // Recover the custom_id for the error record from a copy with the bad bytes replaced.
    std::string clean;
    clean.reserve(text.size());
    size_t pos = 0;
    while (pos < text.size()) {
      const size_t start = pos;
      const uint32_t cp = DecodeUtf8(text, &pos);
      if (cp == 0xFFFD && FindInvalidUtf8(text.substr(start, pos - start)) != std::string_view::npos) {
        clean.push_back('?');
      } else {
        clean.append(text.substr(start, pos - start));
      }
    }
    r.custom_id = FindCustomId(json::parse(clean, nullptr, /*allow_exceptions=*/false));
    return fail(absl::StrCat("invalid UTF-8 at byte offset ", bad, " of the line"));
  }
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Parse again with exceptions for the parser's message (where and what).
    try {
      json ignored = json::parse(text);
    (void)ignored;
    } catch (const json::parse_error& e) {
      return fail(absl::StrCat("invalid JSON: ", e.what()));
    }
    return fail("invalid JSON");
  }
  if (!j.is_object()) return fail(absl::StrCat("expected a JSON object, not ", j.type_name()));
  // custom_id
  auto id = j.find("custom_id");
  if (id == j.end() || id->is_null()) return fail("missing field 'custom_id'");
  if (!id->is_string()) return fail(absl::StrCat("field 'custom_id' must be a string, not ", id->type_name()));
  r.custom_id = id->get<std::string>();
  if (r.custom_id.empty()) return fail("field 'custom_id' is empty");
  JobInput& in = r.input;
  in.custom_id = r.custom_id;
  in.line = line;
  in.task = task;
  if (auto t = j.find("task"); t != j.end() && !t->is_null()) {
    if (!t->is_string()) return fail(absl::StrCat("field 'task' must be a string, not ", t->type_name()));
    auto parsed = ParseTaskKind(t->get<std::string>());
    if (!parsed.ok()) return fail(parsed.status().message());
    in.task = task = *parsed;
  }
  // document, or its alias text
  const bool has_doc = j.contains("document"), has_text = j.contains("text");
  if (has_doc && has_text) return fail("give 'document' or its alias 'text', not both");
  const char* doc_key = has_text ? "text" : "document";
  if (absl::Status s = GetString(j, doc_key, "'document' (or its alias 'text')", &in.document); !s.ok()) {
    return fail(s.message() == absl::StrCat("field '", doc_key, "' is empty") ? "empty document" : s.message());
  }
  if (limits.max_doc_bytes > 0 && static_cast<int64_t>(in.document.size()) > limits.max_doc_bytes) {
    return fail(absl::StrCat("document is ", in.document.size(), " bytes, over the limit of ",
                             limits.max_doc_bytes, " (--max-doc-bytes)"));
  }
  if (task == TaskKind::kQa) {
    if (absl::Status s = GetString(j, "question", "'question' (task qa)", &in.question); !s.ok()) {
      return fail(s.message());
    }
  }
  if (task == TaskKind::kPrompt) {
    if (absl::Status s = GetString(j, "prompt", "'prompt' (task prompt: the instruction)", &in.prompt); !s.ok()) {
      return fail(s.message());
    }
  }
  if (auto mt = j.find("max_tokens"); mt != j.end() && !mt->is_null()) {
    if (!mt->is_number_integer() || mt->get<int64_t>() < 0) {
      return fail(absl::StrCat("field 'max_tokens' must be a non-negative integer, not ", mt->dump()));
    }
    in.max_tokens = mt->get<int64_t>();
  }
  return r;
}

// ---------------------------------------------------------------- InputReader

InputReader::InputReader(std::ifstream in, std::string path, TaskKind task, InputLimits limits)
    : in_(std::move(in)), path_(std::move(path)), task_(task), limits_(limits) {}

absl::StatusOr<InputReader> InputReader::Open(const std::string& path, TaskKind task, InputLimits limits) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read input '", path, "'"));
  return InputReader(std::move(in), path, task, limits);
}

std::optional<ParsedLine> InputReader::Next() {
  std::string text;
  while (std::getline(in_, text)) {
    ++line_;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (absl::StripAsciiWhitespace(text).empty()) continue;
    ParsedLine r = ParseJobLine(text, line_, task_, limits_);
    if (!r.custom_id.empty()) {
      auto [it, inserted] = seen_.try_emplace(r.custom_id, line_);
      if (!inserted && r.ok()) {
        r.error = LineError(line_, absl::StrCat("duplicate custom_id '", r.custom_id, "' (first on line ",
                                                it->second, ")"));
      }
    }
    return r;
  }
  if (in_.bad()) status_ = absl::DataLossError(absl::StrCat("error reading '", path_, "'"));
  return std::nullopt;
}

// ---------------------------------------------------------------- results

json ResultToJson(const JobResult& r) {
  json j;
  j["custom_id"] = r.custom_id.empty() ? json(nullptr) : json(r.custom_id);
  j["line"] = r.line;
  if (!r.status.ok()) {
    j["status"] = "error";
    j["error"] = std::string(r.status.message());
    return j;
  }
  j["status"] = "ok";
  j["text"] = r.text;
  j["prompt_tokens"] = r.prompt_tokens;
  j["generated_tokens"] = r.generated_tokens;
  j["stop_reason"] = r.stop_reason;
  j["attention"] = r.attention;
  j["plan"] = r.plan;
  auto rate = [](int64_t tokens, double s) { return s > 0 ? tokens / s : 0.0; };
  j["timings"] = {{"prefill_s", r.prefill_s},
                  {"decode_s", r.decode_s},
                  {"prefill_tokens_per_s", rate(r.prompt_tokens, r.prefill_s)},
                  {"decode_tokens_per_s", rate(r.generated_tokens, r.decode_s)}};
  return j;
}

std::string ResultToLine(const JobResult& r) {
  return ResultToJson(r).dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

// ---------------------------------------------------------------- resume

absl::StatusOr<ExistingOutput> ReadExistingOutput(const std::string& path, bool retry_errors) {
  ExistingOutput out;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return out;
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat("cannot read existing output '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string data = ss.str();
  size_t pos = 0;
  while (pos < data.size()) {
    const size_t nl = data.find('\n', pos);
    if (nl == std::string::npos) {  // no newline: the write was cut short
      ++out.dropped_partial;
      break;
    }
    std::string_view text(data.data() + pos, nl - pos);
    pos = nl + 1;
    if (absl::StripAsciiWhitespace(Av(text)).empty()) continue;
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("status") || !j["status"].is_string()) {
      ++out.dropped_invalid;
      continue;
    }
    const bool ok = j["status"] == "ok";
    const std::string id = FindCustomId(j);
    if (ok) {
      if (id.empty()) {  // an ok record always has an id: not one of ours
        ++out.dropped_invalid;
        continue;
      }
      if (!out.done_ids.insert(id).second) continue;  // keep the first per custom_id
    } else {
      if (retry_errors) {
        ++out.dropped_errors;
        continue;
      }
      if (!id.empty()) out.error_ids.insert(id);
      if (j.contains("line") && j["line"].is_number_integer()) out.error_lines.insert(j["line"].get<int64_t>());
    }
    out.kept_lines.push_back(absl::StrCat(Av(text), "\n"));
  }
  return out;
}

absl::Status RewriteFile(const std::string& path, const std::vector<std::string>& lines) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write '", tmp, "'"));
    for (const std::string& l : lines) out << l;
    out.flush();
    if (!out) return absl::DataLossError(absl::StrCat("error writing '", tmp, "'"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot rename '", tmp, "' to '", path, "': ", ec.message()));
  return absl::OkStatus();
}

}  // namespace mesa::jobs
