// Tests of the job JSONL formats: every kind of bad input line, duplicates across
// lines, result records, and reading an existing output for resume.
#include "jobs/job_format.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mesa::jobs {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string base = dir ? dir : std::filesystem::temp_directory_path().string();
  return base + "/mesa_jobs_" + std::to_string(::getpid()) + "_" + name;
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

ParsedLine Parse(const std::string& text, TaskKind task = TaskKind::kSummarize, int64_t max_bytes = 0) {
  return ParseJobLine(text, 7, task, InputLimits{max_bytes});
}

TEST(JobFormatTest, ValidLines) {
  ParsedLine p = Parse(R"({"custom_id": "a", "document": "Hello world.", "max_tokens": 12, "extra": 1})");
  ASSERT_TRUE(p.ok()) << p.error;
  EXPECT_EQ(p.input.custom_id, "a");
  EXPECT_EQ(p.input.document, "Hello world.");
  EXPECT_EQ(p.input.max_tokens, 12);
  EXPECT_EQ(p.input.line, 7);
  // "text" is an alias of "document".
  ParsedLine alias = Parse(R"({"custom_id": "b", "text": "Hi"})");
  ASSERT_TRUE(alias.ok()) << alias.error;
  EXPECT_EQ(alias.input.document, "Hi");
  EXPECT_FALSE(alias.input.max_tokens.has_value());
  ParsedLine qa = Parse(R"({"custom_id": "c", "document": "D", "question": "Who?"})", TaskKind::kQa);
  ASSERT_TRUE(qa.ok()) << qa.error;
  EXPECT_EQ(qa.input.question, "Who?");
  ParsedLine pr = Parse(R"({"custom_id": "d", "document": "D", "prompt": "List the names."})", TaskKind::kPrompt);
  ASSERT_TRUE(pr.ok()) << pr.error;
  EXPECT_EQ(pr.input.prompt, "List the names.");
  EXPECT_EQ(pr.input.task, TaskKind::kPrompt);
  // A line may name its own task.
  ParsedLine own = Parse(R"({"custom_id": "e", "document": "D", "task": "qa", "question": "Q?"})");
  ASSERT_TRUE(own.ok()) << own.error;
  EXPECT_EQ(own.input.task, TaskKind::kQa);
  // Non-ASCII UTF-8 is fine.
  EXPECT_TRUE(Parse("{\"custom_id\": \"\xc3\xa9\", \"document\": \"caf\xc3\xa9 \xe2\x9c\x93\"}").ok());
}

struct BadCase {
  const char* name;
  std::string line;
  TaskKind task;
  int64_t max_bytes;
  const char* message;
  const char* custom_id;  // recovered for the error record ("" when none)
};

TEST(JobFormatTest, EveryBadLineKind) {
  const BadCase cases[] = {
      {"invalid json", R"({"custom_id": "a", "document": )", TaskKind::kSummarize, 0, "invalid JSON", ""},
      {"not an object", R"(["a", "b"])", TaskKind::kSummarize, 0, "expected a JSON object", ""},
      {"missing custom_id", R"({"document": "x"})", TaskKind::kSummarize, 0, "missing field 'custom_id'", ""},
      {"numeric custom_id", R"({"custom_id": 5, "document": "x"})", TaskKind::kSummarize, 0,
       "'custom_id' must be a string", ""},
      {"empty custom_id", R"({"custom_id": "", "document": "x"})", TaskKind::kSummarize, 0, "'custom_id' is empty", ""},
      {"missing document", R"({"custom_id": "a"})", TaskKind::kSummarize, 0, "missing field 'document'", "a"},
      {"document not a string", R"({"custom_id": "a", "document": 3})", TaskKind::kSummarize, 0,
       "'document' must be a string", "a"},
      {"empty document", R"({"custom_id": "a", "document": ""})", TaskKind::kSummarize, 0, "empty document", "a"},
      {"blank document", R"({"custom_id": "a", "text": "  \n "})", TaskKind::kSummarize, 0, "empty document", "a"},
      {"document and text", R"({"custom_id": "a", "document": "x", "text": "y"})", TaskKind::kSummarize, 0,
       "not both", "a"},
      {"invalid utf-8", "{\"custom_id\": \"a\", \"document\": \"ab\xff\xfe\"}", TaskKind::kSummarize, 0,
       "invalid UTF-8 at byte offset 34", "a"},
      {"truncated utf-8", "{\"custom_id\": \"a\", \"document\": \"ab\xe2\x9c\"}", TaskKind::kSummarize, 0,
       "invalid UTF-8", "a"},
      {"too long", R"({"custom_id": "a", "document": "0123456789"})", TaskKind::kSummarize, 9,
       "10 bytes, over the limit of 9", "a"},
      {"qa without question", R"({"custom_id": "a", "document": "x"})", TaskKind::kQa, 0,
       "missing field 'question'", "a"},
      {"qa empty question", R"({"custom_id": "a", "document": "x", "question": ""})", TaskKind::kQa, 0,
       "'question' is empty", "a"},
      {"prompt without prompt", R"({"custom_id": "a", "document": "x"})", TaskKind::kPrompt, 0,
       "missing field 'prompt'", "a"},
      {"negative max_tokens", R"({"custom_id": "a", "document": "x", "max_tokens": -1})", TaskKind::kSummarize, 0,
       "'max_tokens' must be a non-negative integer", "a"},
      {"unknown task", R"({"custom_id": "a", "document": "x", "task": "translate"})", TaskKind::kSummarize, 0,
       "unknown task 'translate'", "a"},
      {"line task qa without question", R"({"custom_id": "a", "document": "x", "task": "qa"})",
       TaskKind::kSummarize, 0, "missing field 'question'", "a"},
      {"fractional max_tokens", R"({"custom_id": "a", "document": "x", "max_tokens": 1.5})", TaskKind::kSummarize,
       0, "'max_tokens' must be a non-negative integer", "a"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    ParsedLine p = Parse(c.line, c.task, c.max_bytes);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.error.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(p.error.message(), HasSubstr("line 7: "));
    EXPECT_THAT(p.error.message(), HasSubstr(c.message));
    EXPECT_EQ(p.custom_id, c.custom_id);
  }
  // A document at the limit is fine.
  EXPECT_TRUE(Parse(R"({"custom_id": "a", "document": "0123456789"})", TaskKind::kSummarize, 10).ok());
}

std::string OpenAi(const std::string& body, const std::string& extra = "") {
  return R"({"custom_id": "r", "method": "POST", "url": "/v1/chat/completions", "body": )" + body + extra + "}";
}

TEST(JobFormatTest, OpenAiBatchLines) {
  ParsedLine p = Parse(OpenAi(R"({"model": "gpt-x", "temperature": 0.5, "max_tokens": 9, "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello."},
      {"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]}]})"),
                       TaskKind::kQa);  // the run's task does not apply
  ASSERT_TRUE(p.ok()) << p.error;
  EXPECT_EQ(p.custom_id, "r");
  EXPECT_EQ(p.input.task, TaskKind::kChat);
  EXPECT_EQ(p.input.max_tokens, 9);
  EXPECT_EQ(p.input.line, 7);
  const std::vector<ChatMessage> want = {{ChatRole::kSystem, "Be brief."},
                                         {ChatRole::kUser, "Hi"},
                                         {ChatRole::kAssistant, "Hello."},
                                         {ChatRole::kUser, "Part one.\nPart two."}};
  EXPECT_EQ(p.input.messages, want);
  EXPECT_TRUE(p.input.document.empty());
  // max_completion_tokens is max_tokens' newer name; neither is needed.
  ParsedLine mct = Parse(OpenAi(R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0})"));
  ASSERT_TRUE(mct.ok()) << mct.error;
  EXPECT_EQ(mct.input.max_tokens, 0);
  ParsedLine none = Parse(OpenAi(R"({"messages": [{"role": "user", "content": "x"}]})"));
  ASSERT_TRUE(none.ok()) << none.error;
  EXPECT_FALSE(none.input.max_tokens.has_value());
  // Empty messages are fine next to one with content.
  EXPECT_TRUE(
      Parse(OpenAi(R"({"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "x"}]})")).ok());
  // The limit counts all contents.
  EXPECT_TRUE(
      Parse(OpenAi(R"({"messages": [{"role": "system", "content": "01234"}, {"role": "user", "content": "56789"}]})"),
            TaskKind::kSummarize, 10)
          .ok());
}

TEST(JobFormatTest, EveryBadOpenAiLineKind) {
  const std::string user = R"({"messages": [{"role": "user", "content": "x"}]})";
  struct Case {
    const char* name;
    std::string line;
    const char* message;
  };
  const Case cases[] = {
      {"missing method", R"({"custom_id": "r", "url": "/v1/chat/completions", "body": )" + user + "}",
       "missing field 'method' (an OpenAI batch line has method, url and body)"},
      {"GET", R"({"custom_id": "r", "method": "GET", "url": "/v1/chat/completions", "body": )" + user + "}",
       "field 'method' must be \"POST\", not \"GET\""},
      {"missing url", R"({"custom_id": "r", "method": "POST", "body": )" + user + "}", "missing field 'url'"},
      {"completions url", R"({"custom_id": "r", "method": "POST", "url": "/v1/completions", "body": )" + user + "}",
       "field 'url' is \"/v1/completions\": only \"/v1/chat/completions\" is supported"},
      {"embeddings url", R"({"custom_id": "r", "method": "POST", "url": "/v1/embeddings", "body": )" + user + "}",
       "only \"/v1/chat/completions\" is supported"},
      {"missing body", R"({"custom_id": "r", "method": "POST", "url": "/v1/chat/completions"})",
       "missing field 'body'"},
      {"body not an object", OpenAi("[1]"), "field 'body' must be an object, not array"},
      {"missing messages", OpenAi(R"({"max_tokens": 3})"), "missing field 'body.messages'"},
      {"messages not an array", OpenAi(R"({"messages": "hi"})"), "field 'body.messages' must be an array, not string"},
      {"no messages", OpenAi(R"({"messages": []})"), "field 'body.messages' is empty"},
      {"message not an object", OpenAi(R"({"messages": ["hi"]})"), "'body.messages[0]' must be an object, not string"},
      {"missing role", OpenAi(R"({"messages": [{"content": "x"}]})"), "missing field 'body.messages[0].role'"},
      {"tool role", OpenAi(R"({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]})"),
       "field 'body.messages[1].role' is \"tool\" (choose system, user or assistant)"},
      {"numeric role", OpenAi(R"({"messages": [{"role": 1, "content": "x"}]})"), "field 'body.messages[0].role' is 1"},
      {"missing content", OpenAi(R"({"messages": [{"role": "user"}]})"), "missing field 'body.messages[0].content'"},
      {"null content", OpenAi(R"({"messages": [{"role": "user", "content": null}]})"),
       "missing field 'body.messages[0].content'"},
      {"numeric content", OpenAi(R"({"messages": [{"role": "user", "content": 5}]})"),
       "field 'body.messages[0].content' must be a string or an array of text parts, not number"},
      {"part not an object", OpenAi(R"({"messages": [{"role": "user", "content": ["x"]}]})"),
       "'body.messages[0].content[0]' must be an object, not string"},
      {"part without type", OpenAi(R"({"messages": [{"role": "user", "content": [{"text": "x"}]}]})"),
       "'body.messages[0].content[0]' needs \"type\": \"text\""},
      {"image part",
       OpenAi(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url"}]}]})"),
       "'body.messages[0].content[1]' has type 'image_url': only text parts are supported"},
      {"part text not a string",
       OpenAi(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]})"),
       "field 'body.messages[0].content[0].text' must be a string"},
      {"all empty", OpenAi(R"({"messages": [{"role": "system", "content": ""}, {"role": "user", "content": " \n"}]})"),
       "every message of 'body.messages' is empty"},
      {"negative max_tokens", OpenAi(R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": -2})"),
       "field 'body.max_tokens' must be a non-negative integer, not -2"},
      {"string max_completion_tokens",
       OpenAi(R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": "5"})"),
       "field 'body.max_completion_tokens' must be a non-negative integer, not \"5\""},
      {"both limits",
       OpenAi(R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "max_completion_tokens": 5})"),
       "give 'body.max_tokens' or 'body.max_completion_tokens', not both"},
      {"with a document", OpenAi(user, R"(, "document": "d")"), "field 'document' is not part of an OpenAI batch line"},
      {"with a task", OpenAi(user, R"(, "task": "qa")"), "field 'task' is not part of an OpenAI batch line"},
      {"with top-level max_tokens", OpenAi(user, R"(, "max_tokens": 3)"),
       "field 'max_tokens' is not part of an OpenAI batch line"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ParsedLine p = Parse(c.line);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.error.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(p.error.message(), HasSubstr("line 7: "));
    EXPECT_THAT(p.error.message(), HasSubstr(c.message));
    EXPECT_EQ(p.custom_id, "r");
  }
  ParsedLine over =
      Parse(OpenAi(R"({"messages": [{"role": "system", "content": "01234"}, {"role": "user", "content": "567890"}]})"),
            TaskKind::kSummarize, 10);
  ASSERT_FALSE(over.ok());
  EXPECT_THAT(over.error.message(), HasSubstr("messages are 11 bytes, over the limit of 10"));
  // custom_id is checked as for Mesa's lines.
  EXPECT_THAT(Parse(R"({"method": "POST", "url": "/v1/chat/completions", "body": )" + user + "}").error.message(),
              HasSubstr("missing field 'custom_id'"));
  // A run whose task is chat needs OpenAI lines.
  EXPECT_THAT(Parse(R"({"custom_id": "a", "document": "x"})", TaskKind::kChat).error.message(),
              HasSubstr("task 'chat' needs OpenAI batch lines"));
}

TEST(JobFormatTest, ReaderSkipsBlankLinesAndFlagsDuplicates) {
  const std::string path = TempPath("reader.jsonl");
  WriteFile(path,
            "{\"custom_id\": \"a\", \"document\": \"x\"}\n"
            "\n"
            "   \r\n"
            "{\"custom_id\": \"b\", \"document\": \"\"}\r\n"
            "{\"custom_id\": \"a\", \"document\": \"y\"}\n"
            "{\"custom_id\": \"b\", \"document\": \"z\"}\n"
            "{\"custom_id\": \"c\", \"document\": \"w\"}");  // no final newline
  auto reader = InputReader::Open(path, TaskKind::kSummarize, {});
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<ParsedLine> lines;
  while (auto l = reader->Next()) lines.push_back(*l);
  EXPECT_TRUE(reader->status().ok());
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_TRUE(lines[0].ok());
  EXPECT_EQ(lines[1].line, 4);
  EXPECT_THAT(lines[1].error.message(), HasSubstr("empty document"));
  EXPECT_EQ(lines[2].line, 5);
  EXPECT_THAT(lines[2].error.message(), HasSubstr("duplicate custom_id 'a' (first on line 1)"));
  EXPECT_THAT(lines[3].error.message(), HasSubstr("duplicate custom_id 'b' (first on line 4)"));
  EXPECT_TRUE(lines[4].ok());
  EXPECT_EQ(lines[4].input.document, "w");
  std::filesystem::remove(path);
  EXPECT_FALSE(InputReader::Open(path, TaskKind::kSummarize, {}).ok());
}

TEST(JobFormatTest, ResultRecords) {
  JobResult ok;
  ok.custom_id = "a";
  ok.line = 3;
  ok.text = "Once upon a time \xff";  // invalid UTF-8 is replaced, not fatal
  ok.prompt_tokens = 100;
  ok.generated_tokens = 10;
  ok.stop_reason = "eos";
  ok.attention = "mesa";
  ok.plan = {{"attention", "mesa"}};
  ok.prefill_s = 2.0;
  ok.decode_s = 0.5;
  const std::string line = ResultToLine(ok);
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["custom_id"], "a");
  EXPECT_EQ(j["status"], "ok");
  EXPECT_EQ(j["line"], 3);
  EXPECT_EQ(j["timings"]["prefill_tokens_per_s"], 50.0);
  EXPECT_EQ(j["timings"]["decode_tokens_per_s"], 20.0);
  EXPECT_EQ(j["plan"]["attention"], "mesa");
  EXPECT_FALSE(j.contains("error"));
  JobResult bad;
  bad.line = 4;
  bad.status = absl::InvalidArgumentError("line 4: invalid JSON");
  auto e = nlohmann::json::parse(ResultToLine(bad));
  EXPECT_TRUE(e["custom_id"].is_null());
  EXPECT_EQ(e["status"], "error");
  EXPECT_EQ(e["error"], "line 4: invalid JSON");
  EXPECT_FALSE(e.contains("text"));
}

TEST(JobFormatTest, ReadExistingOutput) {
  const std::string path = TempPath("existing.jsonl");
  auto missing = ReadExistingOutput(path, true);
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->kept_lines.empty());
  WriteFile(path,
            "{\"custom_id\":\"a\",\"line\":1,\"status\":\"ok\",\"text\":\"x\"}\n"
            "{\"custom_id\":\"b\",\"line\":2,\"status\":\"error\",\"error\":\"boom\"}\n"
            "{\"custom_id\":null,\"line\":3,\"status\":\"error\",\"error\":\"invalid JSON\"}\n"
            "garbage\n"
            "{\"custom_id\":\"a\",\"line\":1,\"status\":\"ok\",\"text\":\"again\"}\n"
            "{\"custom_id\":\"c\",\"line\":4,\"status\":\"ok\",\"te");  // cut short by a crash
  auto retry = ReadExistingOutput(path, true);
  ASSERT_TRUE(retry.ok()) << retry.status();
  ASSERT_EQ(retry->kept_lines.size(), 1u);
  EXPECT_THAT(retry->kept_lines[0], HasSubstr("\"text\":\"x\""));
  EXPECT_TRUE(retry->done_ids.contains("a"));
  EXPECT_FALSE(retry->done_ids.contains("c"));
  EXPECT_EQ(retry->dropped_partial, 1);
  EXPECT_EQ(retry->dropped_errors, 2);
  EXPECT_EQ(retry->dropped_invalid, 1);
  auto keep = ReadExistingOutput(path, false);
  ASSERT_TRUE(keep.ok());
  EXPECT_EQ(keep->kept_lines.size(), 3u);
  EXPECT_TRUE(keep->error_ids.contains("b"));
  EXPECT_TRUE(keep->error_lines.contains(2));
  EXPECT_TRUE(keep->error_lines.contains(3));
  ASSERT_TRUE(RewriteFile(path, keep->kept_lines).ok());
  auto again = ReadExistingOutput(path, false);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->kept_lines, keep->kept_lines);
  EXPECT_EQ(again->dropped_partial, 0);
  std::filesystem::remove(path);
}

TEST(JobFormatTest, TaskNames) {
  EXPECT_EQ(*ParseTaskKind("qa"), TaskKind::kQa);
  EXPECT_EQ(*ParseTaskKind("summarize"), TaskKind::kSummarize);
  EXPECT_EQ(*ParseTaskKind("prompt"), TaskKind::kPrompt);
  EXPECT_THAT(ParseTaskKind("translate").status().message(), HasSubstr("summarize, qa or prompt"));
  EXPECT_STREQ(TaskKindName(TaskKind::kChat), "chat");
  EXPECT_THAT(ParseTaskKind("chat").status().message(), HasSubstr("OpenAI batch lines"));
  // A line cannot name it either.
  EXPECT_THAT(Parse(R"({"custom_id": "a", "document": "x", "task": "chat"})").error.message(),
              HasSubstr("task 'chat' cannot be named"));
  EXPECT_STREQ(ChatRoleName(ChatRole::kSystem), "system");
  EXPECT_STREQ(ChatRoleName(ChatRole::kUser), "user");
  EXPECT_STREQ(ChatRoleName(ChatRole::kAssistant), "assistant");
}

JobResult OkResult() {
  JobResult r;
  r.custom_id = "req-1";
  r.line = 3;
  r.text = "Once upon a time.";
  r.prompt_tokens = 100;
  r.generated_tokens = 10;
  r.stop_reason = "eos";
  r.attention = "mesa";
  r.plan = {{"attention", "mesa"}};
  r.prefill_s = 2.0;
  r.decode_s = 0.5;
  r.created = 1700000000;
  return r;
}

TEST(JobFormatTest, ResultFromJsonRoundTrips) {
  const JobResult ok = OkResult();
  auto back = ResultFromJson(nlohmann::json::parse(ResultToLine(ok)));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->status.ok());
  EXPECT_EQ(back->custom_id, ok.custom_id);
  EXPECT_EQ(back->line, ok.line);
  EXPECT_EQ(back->text, ok.text);
  EXPECT_EQ(back->prompt_tokens, ok.prompt_tokens);
  EXPECT_EQ(back->generated_tokens, ok.generated_tokens);
  EXPECT_EQ(back->stop_reason, ok.stop_reason);
  EXPECT_EQ(back->attention, ok.attention);
  EXPECT_EQ(back->plan, ok.plan);
  EXPECT_EQ(back->prefill_s, ok.prefill_s);
  EXPECT_EQ(back->decode_s, ok.decode_s);
  EXPECT_EQ(back->created, ok.created);
  EXPECT_EQ(ResultToLine(*back), ResultToLine(ok));
  // "created" is written only when known.
  JobResult unknown_time = ok;
  unknown_time.created = 0;
  EXPECT_FALSE(ResultToJson(unknown_time).contains("created"));

  JobResult bad;
  bad.line = 4;
  bad.status = absl::ResourceExhaustedError("line 4: prompt too long");
  EXPECT_EQ(ResultToJson(bad)["error_code"], "resource_exhausted");
  auto bad_back = ResultFromJson(ResultToJson(bad));
  ASSERT_TRUE(bad_back.ok()) << bad_back.status();
  EXPECT_EQ(bad_back->status, bad.status);
  EXPECT_TRUE(bad_back->custom_id.empty());
  EXPECT_EQ(bad_back->line, 4);
  // Records written before error_code existed.
  auto old = ResultFromJson(nlohmann::json::parse(R"({"custom_id":"b","line":2,"status":"error","error":"boom"})"));
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old->status, absl::UnknownError("boom"));
  EXPECT_EQ(old->custom_id, "b");

  for (const char* not_record :
       {R"([1])", R"({"line": 1})", R"({"line": 1, "status": "maybe"})",
        R"({"status": "ok", "text": "x", "prompt_tokens": 1, "generated_tokens": 1})",
        R"({"line": 1, "status": "ok", "prompt_tokens": 1, "generated_tokens": 1})",
        R"({"line": 1, "status": "ok", "text": "x", "prompt_tokens": "1", "generated_tokens": 1})",
        R"({"line": 1, "status": "error"})",
        R"({"line": 1, "status": "ok", "text": "x", "prompt_tokens": 1, "generated_tokens": 1, "timings": 3})"}) {
    SCOPED_TRACE(not_record);
    auto r = ResultFromJson(nlohmann::json::parse(not_record));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr("not a result record"));
  }
}

TEST(JobFormatTest, OpenAiOutputLines) {
  JobResult ok = OkResult();
  const std::string line = ResultToOpenAiLine(ok, "stories260K", "batch_1");
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1);
  const auto j = nlohmann::json::parse(line);
  const nlohmann::json want_body = {
      {"id", j["response"]["body"]["id"]},
      {"object", "chat.completion"},
      {"created", 1700000000},
      {"model", "stories260K"},
      {"choices", {{{"index", 0},
                    {"message", {{"role", "assistant"}, {"content", "Once upon a time."}}},
                    {"finish_reason", "stop"}}}},
      {"usage", {{"prompt_tokens", 100}, {"completion_tokens", 10}, {"total_tokens", 110}}}};
  EXPECT_EQ(j["response"]["body"], want_body);
  EXPECT_EQ(j["custom_id"], "req-1");
  EXPECT_EQ(j["response"]["status_code"], 200);
  EXPECT_TRUE(j["error"].is_null());
  EXPECT_EQ(j.size(), 4u);
  // Ids: fixed prefixes, derived from the batch and the line only.
  const std::string id = j["id"], request_id = j["response"]["request_id"], body_id = j["response"]["body"]["id"];
  EXPECT_THAT(id, ::testing::MatchesRegex("batch_req_[0-9a-f]{16}"));
  EXPECT_THAT(request_id, ::testing::MatchesRegex("req_[0-9a-f]{16}"));
  EXPECT_THAT(body_id, ::testing::MatchesRegex("chatcmpl-[0-9a-f]{16}"));
  EXPECT_EQ(ResultToOpenAiLine(ok, "stories260K", "batch_1"), line);
  JobResult other_text = ok;
  other_text.text = "Something else.";
  EXPECT_EQ(nlohmann::json::parse(ResultToOpenAiLine(other_text, "m", "batch_1"))["id"], id);
  EXPECT_NE(nlohmann::json::parse(ResultToOpenAiLine(ok, "m", "batch_2"))["id"], id);
  JobResult next_line = ok;
  next_line.line = 4;
  EXPECT_NE(nlohmann::json::parse(ResultToOpenAiLine(next_line, "m", "batch_1"))["id"], id);
  // Stopped by the token limit.
  JobResult cut = ok;
  cut.stop_reason = "length";
  EXPECT_EQ(nlohmann::json::parse(ResultToOpenAiLine(cut, "m", "b"))["response"]["body"]["choices"][0]["finish_reason"],
            "length");

  JobResult bad;
  bad.line = 5;
  bad.status = absl::InvalidArgumentError("line 5: invalid JSON");
  const auto e = nlohmann::json::parse(ResultToOpenAiLine(bad, "m", "batch_1"));
  EXPECT_EQ(e, (nlohmann::json{{"id", e["id"]},
                               {"custom_id", nullptr},
                               {"response", nullptr},
                               {"error", {{"code", "invalid_argument"}, {"message", "line 5: invalid JSON"}}}}));
  EXPECT_THAT(e["id"].get<std::string>(), ::testing::StartsWith("batch_req_"));
}

TEST(JobFormatTest, MesaLineToOpenAiLine) {
  const JobResult ok = OkResult();
  const std::string stored = ResultToLine(ok);
  EXPECT_EQ(MesaLineToOpenAiLine(stored, "m", "b"), ResultToOpenAiLine(ok, "m", "b"));
  // Without its newline (as the coordinator stores it).
  EXPECT_EQ(MesaLineToOpenAiLine(stored.substr(0, stored.size() - 1), "m", "b"), ResultToOpenAiLine(ok, "m", "b"));
  JobResult bad;
  bad.custom_id = "x";
  bad.line = 2;
  bad.status = absl::InternalError("line 2: worker lost");
  EXPECT_EQ(MesaLineToOpenAiLine(ResultToLine(bad), "m", "b"), ResultToOpenAiLine(bad, "m", "b"));
  // Corrupt storage: an error line, with what could be recovered.
  const auto c = nlohmann::json::parse(MesaLineToOpenAiLine(R"({"custom_id":"y","line":9,"status":"ok"})", "m", "b"));
  EXPECT_EQ(c["custom_id"], "y");
  EXPECT_TRUE(c["response"].is_null());
  EXPECT_EQ(c["error"]["code"], "data_loss");
  EXPECT_THAT(c["error"]["message"].get<std::string>(),
              HasSubstr("cannot export the stored record: not a result record: missing 'text'"));
  JobResult line9;
  line9.line = 9;
  line9.status = absl::DataLossError("?");
  EXPECT_EQ(c["id"], nlohmann::json::parse(ResultToOpenAiLine(line9, "m", "b"))["id"]);
  const auto g = nlohmann::json::parse(MesaLineToOpenAiLine("garbage", "m", "b"));
  EXPECT_TRUE(g["custom_id"].is_null());
  EXPECT_EQ(g["error"]["code"], "data_loss");
}

}  // namespace
}  // namespace mesa::jobs
