// JSONL input/output formats of batch jobs: line validation (Mesa's lines and OpenAI
// batch lines), result records, their OpenAI batch export, resume.
#include "jobs/job_format.h"

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
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

// An optional non-negative integer field; `name` is its path in messages.
absl::Status GetMaxTokens(const json& j, const char* key, const std::string& name, std::optional<int64_t>* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer() || it->get<int64_t>() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("field '", name, "' must be a non-negative integer, not ", it->dump()));
  }
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

// Whether a line is an OpenAI batch line rather than one of Mesa's own.
bool IsOpenAiLine(const json& j) { return j.contains("method") || j.contains("url") || j.contains("body"); }

// One message's content: a string, or an array of {"type": "text", "text": ...} parts
// joined with "\n". `name` is the content's path in messages.
absl::Status GetContent(const json& c, const std::string& name, std::string* out) {
  if (c.is_string()) {
    *out = c.get<std::string>();
    return absl::OkStatus();
  }
  if (!c.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("field '", name, "' must be a string or an array of text parts, not ", c.type_name()));
  }
  std::vector<std::string> texts;
  for (size_t i = 0; i < c.size(); ++i) {
    const json& part = c[i];
    const std::string at = absl::StrCat(name, "[", i, "]");
    if (!part.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("'", at, "' must be an object, not ", part.type_name()));
    }
    auto type = part.find("type");
    if (type == part.end() || !type->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("'", at, "' needs \"type\": \"text\""));
    }
    if (*type != "text") {
      return absl::InvalidArgumentError(absl::StrCat("'", at, "' has type '", type->get<std::string>(),
                                                     "': only text parts are supported"));
    }
    auto text = part.find("text");
    if (text == part.end() || !text->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("field '", at, ".text' must be a string"));
    }
    texts.push_back(text->get<std::string>());
  }
  *out = absl::StrJoin(texts, "\n");
  return absl::OkStatus();
}

// The fields of an OpenAI batch line after custom_id, into `in` (task kChat).
absl::Status ParseOpenAiLine(const json& j, const InputLimits& limits, JobInput* in) {
  for (const char* key : {"document", "text", "question", "prompt", "task", "max_tokens"}) {
    if (j.contains(key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("field '", key, "' is not part of an OpenAI batch line (one with method, url, body): ",
                       "the prompt is body.messages, the limit body.max_tokens"));
    }
  }
  auto missing = [](const char* key) {
    return absl::InvalidArgumentError(
        absl::StrCat("missing field '", key, "' (an OpenAI batch line has method, url and body)"));
  };
  auto method = j.find("method");
  if (method == j.end() || method->is_null()) return missing("method");
  if (*method != "POST") {
    return absl::InvalidArgumentError(absl::StrCat("field 'method' must be \"POST\", not ", method->dump()));
  }
  auto url = j.find("url");
  if (url == j.end() || url->is_null()) return missing("url");
  if (*url != "/v1/chat/completions") {
    return absl::InvalidArgumentError(
        absl::StrCat("field 'url' is ", url->dump(), ": only \"/v1/chat/completions\" is supported"));
  }
  auto body = j.find("body");
  if (body == j.end() || body->is_null()) return missing("body");
  if (!body->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("field 'body' must be an object, not ", body->type_name()));
  }
  auto messages = body->find("messages");
  if (messages == body->end() || messages->is_null()) {
    return absl::InvalidArgumentError("missing field 'body.messages'");
  }
  if (!messages->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("field 'body.messages' must be an array, not ", messages->type_name()));
  }
  if (messages->empty()) return absl::InvalidArgumentError("field 'body.messages' is empty");
  in->task = TaskKind::kChat;
  int64_t bytes = 0;
  bool any_content = false;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string at = absl::StrCat("body.messages[", i, "]");
    if (!m.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("'", at, "' must be an object, not ", m.type_name()));
    }
    ChatMessage message;
    auto role = m.find("role");
    if (role == m.end() || role->is_null()) {
      return absl::InvalidArgumentError(absl::StrCat("missing field '", at, ".role'"));
    }
    if (*role == "system") {
      message.role = ChatRole::kSystem;
    } else if (*role == "user") {
      message.role = ChatRole::kUser;
    } else if (*role == "assistant") {
      message.role = ChatRole::kAssistant;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("field '", at, ".role' is ", role->dump(), " (choose system, user or assistant)"));
    }
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      return absl::InvalidArgumentError(absl::StrCat("missing field '", at, ".content'"));
    }
    if (absl::Status s = GetContent(*content, at + ".content", &message.content); !s.ok()) return s;
    bytes += static_cast<int64_t>(message.content.size());
    any_content |= !absl::StripAsciiWhitespace(message.content).empty();
    in->messages.push_back(std::move(message));
  }
  if (!any_content) return absl::InvalidArgumentError("every message of 'body.messages' is empty");
  if (limits.max_doc_bytes > 0 && bytes > limits.max_doc_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("messages are ", bytes, " bytes, over the limit of ",
                                                   limits.max_doc_bytes, " (--max-doc-bytes)"));
  }
  auto given = [&](const char* key) { return body->contains(key) && !(*body)[key].is_null(); };
  if (given("max_tokens") && given("max_completion_tokens")) {
    return absl::InvalidArgumentError("give 'body.max_tokens' or 'body.max_completion_tokens', not both");
  }
  if (absl::Status s = GetMaxTokens(*body, "max_tokens", "body.max_tokens", &in->max_tokens); !s.ok()) return s;
  return GetMaxTokens(*body, "max_completion_tokens", "body.max_completion_tokens", &in->max_tokens);
}

// "invalid_argument" for INVALID_ARGUMENT, and back.
std::string StatusCodeName(absl::StatusCode code) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(code));
}
absl::StatusCode StatusCodeFromName(const std::string& name) {
  for (int c = 0; c <= static_cast<int>(absl::StatusCode::kUnauthenticated); ++c) {
    if (StatusCodeName(static_cast<absl::StatusCode>(c)) == name) return static_cast<absl::StatusCode>(c);
  }
  return absl::StatusCode::kUnknown;
}

// 64-bit FNV-1a of the parts (with separators), as 16 hex digits: stable across runs
// and builds, unlike absl::Hash.
std::string StableId(std::initializer_list<std::string_view> parts) {
  uint64_t h = 14695981039346656037ull;
  for (std::string_view p : parts) {
    for (unsigned char c : p) h = (h ^ c) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;  // a byte that UTF-8 text never holds
  }
  return absl::StrFormat("%016x", h);
}

}  // namespace

const char* TaskKindName(TaskKind task) {
  switch (task) {
    case TaskKind::kSummarize: return "summarize";
    case TaskKind::kQa: return "qa";
    case TaskKind::kPrompt: return "prompt";
    case TaskKind::kChat: return "chat";
  }
  return "?";
}

absl::StatusOr<TaskKind> ParseTaskKind(std::string_view name) {
  for (TaskKind t : {TaskKind::kSummarize, TaskKind::kQa, TaskKind::kPrompt}) {
    if (name == TaskKindName(t)) return t;
  }
  if (name == TaskKindName(TaskKind::kChat)) {
    return absl::InvalidArgumentError(
        "task 'chat' cannot be named: it is that of OpenAI batch lines (method, url, body with messages)");
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown task '", Av(name), "' (choose summarize, qa or prompt)"));
}

const char* ChatRoleName(ChatRole role) {
  switch (role) {
    case ChatRole::kSystem: return "system";
    case ChatRole::kUser: return "user";
    case ChatRole::kAssistant: return "assistant";
  }
  return "?";
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
  if (IsOpenAiLine(j)) {
    if (absl::Status s = ParseOpenAiLine(j, limits, &in); !s.ok()) return fail(s.message());
    return r;
  }
  if (task == TaskKind::kChat) return fail("task 'chat' needs OpenAI batch lines (method, url, body)");
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
  if (absl::Status s = GetMaxTokens(j, "max_tokens", "max_tokens", &in.max_tokens); !s.ok()) return fail(s.message());
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
    j["error_code"] = StatusCodeName(r.status.code());
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
  if (r.created != 0) j["created"] = r.created;
  return j;
}

std::string ResultToLine(const JobResult& r) {
  return ResultToJson(r).dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

absl::StatusOr<JobResult> ResultFromJson(const json& j) {
  auto bad = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("not a result record: ", what));
  };
  if (!j.is_object()) return bad(absl::StrCat("expected a JSON object, not ", j.type_name()));
  // Field readers: absent (or null) leaves the default unless required.
  auto str = [&](const char* key, bool required, std::string* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return required ? bad(absl::StrCat("missing '", key, "'")) : absl::OkStatus();
    if (!it->is_string()) return bad(absl::StrCat("'", key, "' is not a string"));
    *out = it->get<std::string>();
    return absl::OkStatus();
  };
  auto integer = [&](const json& obj, const char* key, bool required, int64_t* out) -> absl::Status {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return required ? bad(absl::StrCat("missing '", key, "'")) : absl::OkStatus();
    if (!it->is_number_integer()) return bad(absl::StrCat("'", key, "' is not an integer"));
    *out = it->get<int64_t>();
    return absl::OkStatus();
  };
  auto number = [&](const json& obj, const char* key, double* out) -> absl::Status {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_number()) return bad(absl::StrCat("'", key, "' is not a number"));
    *out = it->get<double>();
    return absl::OkStatus();
  };
  JobResult r;
  std::string status;
  for (absl::Status s : {str("custom_id", false, &r.custom_id), integer(j, "line", true, &r.line),
                         str("status", true, &status)}) {
    if (!s.ok()) return s;
  }
  if (status == "error") {
    std::string message, code;
    for (absl::Status s : {str("error", true, &message), str("error_code", false, &code)}) {
      if (!s.ok()) return s;
    }
    const absl::StatusCode c = code.empty() ? absl::StatusCode::kUnknown : StatusCodeFromName(code);
    // An OK code would make this an ok record.
    r.status = absl::Status(c == absl::StatusCode::kOk ? absl::StatusCode::kUnknown : c, message);
    return r;
  }
  if (status != "ok") return bad(absl::StrCat("'status' is '", status, "' (expected ok or error)"));
  for (absl::Status s : {str("text", true, &r.text), integer(j, "prompt_tokens", true, &r.prompt_tokens),
                         integer(j, "generated_tokens", true, &r.generated_tokens),
                         str("stop_reason", false, &r.stop_reason), str("attention", false, &r.attention),
                         integer(j, "created", false, &r.created)}) {
    if (!s.ok()) return s;
  }
  if (auto plan = j.find("plan"); plan != j.end() && !plan->is_null()) r.plan = *plan;
  if (auto t = j.find("timings"); t != j.end() && !t->is_null()) {
    if (!t->is_object()) return bad("'timings' is not an object");
    for (absl::Status s : {number(*t, "prefill_s", &r.prefill_s), number(*t, "decode_s", &r.decode_s)}) {
      if (!s.ok()) return s;
    }
  }
  return r;
}

std::string ResultToOpenAiLine(const JobResult& r, const std::string& model, const std::string& batch_id) {
  const std::string line = absl::StrCat(r.line);
  json j;
  j["id"] = absl::StrCat("batch_req_", StableId({batch_id, line, "batch_req"}));
  j["custom_id"] = r.custom_id.empty() ? json(nullptr) : json(r.custom_id);
  if (!r.status.ok()) {
    j["response"] = nullptr;
    j["error"] = {{"code", StatusCodeName(r.status.code())}, {"message", std::string(r.status.message())}};
  } else {
    json body;
    body["id"] = absl::StrCat("chatcmpl-", StableId({batch_id, line, "chatcmpl"}));
    body["object"] = "chat.completion";
    body["created"] = r.created;
    body["model"] = model;
    body["choices"] = json::array({{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", r.text}}},
                                    {"finish_reason", r.stop_reason == "length" ? "length" : "stop"}}});
    body["usage"] = {{"prompt_tokens", r.prompt_tokens},
                     {"completion_tokens", r.generated_tokens},
                     {"total_tokens", r.prompt_tokens + r.generated_tokens}};
    j["response"] = {{"status_code", 200},
                     {"request_id", absl::StrCat("req_", StableId({batch_id, line, "req"}))},
                     {"body", std::move(body)}};
    j["error"] = nullptr;
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string MesaLineToOpenAiLine(std::string_view mesa_record_line, const std::string& model,
                                 const std::string& batch_id) {
  const json j = json::parse(mesa_record_line, nullptr, /*allow_exceptions=*/false);
  absl::StatusOr<JobResult> r =
      j.is_discarded() ? absl::InvalidArgumentError("not a result record: invalid JSON") : ResultFromJson(j);
  if (r.ok()) return ResultToOpenAiLine(*r, model, batch_id);
  JobResult corrupt;
  corrupt.custom_id = FindCustomId(j);
  if (j.is_object() && j.contains("line") && j["line"].is_number_integer()) corrupt.line = j["line"].get<int64_t>();
  corrupt.status = absl::DataLossError(absl::StrCat("cannot export the stored record: ", r.status().message()));
  return ResultToOpenAiLine(corrupt, model, batch_id);
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
