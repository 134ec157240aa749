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
}

}  // namespace
}  // namespace mesa::jobs
