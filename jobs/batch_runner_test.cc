// Tests of the batch loop with a scripted generator (no model): one record per line in
// input order, bad lines as error records without stopping the run, resume after a
// crash (no finished line redone, the truncated one redone), error retry policy, and
// the progress formatting.
#include "jobs/batch_runner.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jobs/progress.h"

namespace mesa::jobs {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

// Bytes as tokens (id = byte + 3), BOS 1, EOS 2.
class ByteTokenizer : public Tokenizer {
 public:
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, const EncodeOptions& o) const override {
    std::vector<int32_t> out;
    if (o.add_bos.value_or(true)) out.push_back(1);
    for (char c : text) out.push_back(3 + static_cast<uint8_t>(c));
    return out;
  }
  std::string Decode(absl::Span<const int32_t> ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (id >= 3) s.push_back(static_cast<char>(id - 3));
    }
    return s;
  }
  std::string TokenToPiece(int32_t id) const override { return Decode({id}); }
  int32_t vocab_size() const override { return 259; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
  bool IsEndOfGeneration(int32_t id) const override { return id == 2; }
  std::string kind() const override { return "bytes"; }
};

// "Generates" " summary of N" (N: the prompt length) then EOS, within max_new tokens.
// Fails on prompts containing "FAIL". Records its calls.
class ScriptedGenerator : public DocumentGenerator {
 public:
  absl::StatusOr<GenerationOutput> Generate(absl::Span<const int32_t> prompt, int64_t max_new) override {
    ByteTokenizer tok;
    const std::string text = tok.Decode(prompt);
    calls.push_back(text);
    max_new_seen.push_back(max_new);
    if (text.find("FAIL") != std::string::npos) return absl::ResourceExhaustedError("out of memory (scripted)");
    GenerationOutput out;
    auto ids = *tok.Encode(absl::StrCat(" summary of ", prompt.size()), {.add_bos = false});
    if (static_cast<int64_t>(ids.size()) > max_new) {
      ids.resize(max_new);
      out.stop_reason = "length";
    } else {
      ids.push_back(2);
      out.stop_reason = "eos";
    }
    out.tokens = ids;
    out.attention = "mesa";
    out.plan = {{"attention", "mesa"}, {"train_length", 512}};
    out.prefill_s = 0.5;
    out.decode_s = 0.25;
    return out;
  }
  std::vector<std::string> calls;
  std::vector<int64_t> max_new_seen;
};

class BatchRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("mesa_batch_", ::getpid(), "_", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    in_ = (dir_ / "in.jsonl").string();
    out_ = (dir_ / "out.jsonl").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void WriteInput(const std::string& data) {
    std::ofstream f(in_, std::ios::binary | std::ios::trunc);
    f << data;
  }
  std::string ReadOutput() {
    std::ifstream f(out_, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  std::vector<json> Records() {
    std::vector<json> r;
    std::istringstream ss(ReadOutput());
    std::string line;
    while (std::getline(ss, line)) r.push_back(json::parse(line));
    return r;
  }
  // The records without `created` (the Unix second a record was made: a redone line
  // legitimately gets a later one, and a run can straddle a second).
  std::vector<json> RecordsWithoutCreated() {
    std::vector<json> r = Records();
    for (json& j : r) j.erase("created");
    return r;
  }
  absl::StatusOr<BatchSummary> Run(ScriptedGenerator& gen, BatchOptions o = {}) {
    return RunBatch(in_, out_, tok_, gen, o);
  }

  std::filesystem::path dir_;
  std::string in_, out_;
  ByteTokenizer tok_;
};

const char* kInput =
    "{\"custom_id\": \"d1\", \"document\": \"The cat sat.\"}\n"
    "{\"custom_id\": \"d2\", \"document\": \"\"}\n"
    "not json\n"
    "{\"custom_id\": \"d3\", \"text\": \"A dog ran.\", \"max_tokens\": 4}\n"
    "{\"custom_id\": \"d1\", \"document\": \"Again.\"}\n"
    "{\"custom_id\": \"d4\", \"document\": \"Please FAIL here.\"}\n"
    "{\"custom_id\": \"d5\", \"document\": \"Last one.\"}\n";

TEST_F(BatchRunnerTest, OneRecordPerLineAndBadLinesDoNotStopTheRun) {
  WriteInput(kInput);
  ScriptedGenerator gen;
  auto s = Run(gen);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->processed, 7);
  EXPECT_EQ(s->ok, 3);
  EXPECT_EQ(s->errors, 4);
  auto r = Records();
  ASSERT_EQ(r.size(), 7u);
  std::vector<std::string> ids, statuses;
  for (const json& j : r) {
    ids.push_back(j["custom_id"].is_null() ? "null" : j["custom_id"].get<std::string>());
    statuses.push_back(j["status"]);
  }
  EXPECT_THAT(ids, ElementsAre("d1", "d2", "null", "d3", "d1", "d4", "d5"));
  EXPECT_THAT(statuses, ElementsAre("ok", "error", "error", "ok", "error", "error", "ok"));
  EXPECT_THAT(r[1]["error"].get<std::string>(), HasSubstr("line 2: empty document"));
  EXPECT_THAT(r[2]["error"].get<std::string>(), HasSubstr("line 3: invalid JSON"));
  EXPECT_THAT(r[4]["error"].get<std::string>(), HasSubstr("duplicate custom_id 'd1'"));
  EXPECT_THAT(r[5]["error"].get<std::string>(), HasSubstr("line 6: out of memory (scripted)"));
  // The ok record: prompt = BOS + raw-template text; EOS not in the text.
  const std::string prompt = "Summarize the following document.\n\nThe cat sat.\n\nSummarize the document above.";
  EXPECT_EQ(gen.calls[0], prompt);
  EXPECT_EQ(r[0]["prompt_tokens"], prompt.size() + 1);
  EXPECT_EQ(r[0]["text"], absl::StrCat(" summary of ", prompt.size() + 1));
  EXPECT_EQ(r[0]["stop_reason"], "eos");
  EXPECT_EQ(r[0]["attention"], "mesa");
  EXPECT_EQ(r[0]["plan"]["train_length"], 512);
  EXPECT_EQ(r[0]["timings"]["prefill_s"], 0.5);
  EXPECT_EQ(r[0]["generated_tokens"], r[0]["text"].get<std::string>().size() + 1);
  // Per-line max_tokens overrides the run's.
  EXPECT_THAT(gen.max_new_seen, ElementsAre(256, 4, 256, 256));
  EXPECT_EQ(r[3]["stop_reason"], "length");
  EXPECT_EQ(r[3]["text"], " sum");  // cut at 4 tokens
}

TEST_F(BatchRunnerTest, ResumeAfterACrashRedoesOnlyTheBrokenLine) {
  WriteInput(kInput);
  ScriptedGenerator first;
  ASSERT_TRUE(Run(first).ok());
  const std::string full = ReadOutput();
  const auto before = RecordsWithoutCreated();
  // Simulate a crash while writing the record of d3 (the 4th line): keep the first
  // three records and half of the fourth.
  size_t cut = 0;
  for (int i = 0; i < 3; ++i) cut = full.find('\n', cut) + 1;
  const size_t fourth_end = full.find('\n', cut);
  {
    std::ofstream f(out_, std::ios::binary | std::ios::trunc);
    f << full.substr(0, cut + (fourth_end - cut) / 2);
  }
  BatchOptions no_retry;
  no_retry.retry_errors = false;
  ScriptedGenerator second;
  auto s = Run(second, no_retry);
  ASSERT_TRUE(s.ok()) << s.status();
  // d1 (ok) and the two error lines before the cut are not redone; d3 (cut) and
  // everything after it are.
  EXPECT_EQ(s->skipped, 3);
  ASSERT_EQ(second.calls.size(), 3u);
  EXPECT_THAT(second.calls[0], HasSubstr("A dog ran."));
  EXPECT_THAT(second.calls[1], HasSubstr("FAIL"));
  EXPECT_THAT(second.calls[2], HasSubstr("Last one."));
  // The output is whole again: same records as the uninterrupted run, no partial line.
  const std::string after = ReadOutput();
  EXPECT_EQ(after.back(), '\n');
  EXPECT_EQ(RecordsWithoutCreated(), before);
  // Running again does nothing.
  ScriptedGenerator third;
  auto s3 = Run(third, no_retry);
  ASSERT_TRUE(s3.ok());
  EXPECT_EQ(s3->processed, 0);
  EXPECT_TRUE(third.calls.empty());
  EXPECT_EQ(ReadOutput(), after);
}

TEST_F(BatchRunnerTest, ErrorsAreRetriedByDefault) {
  WriteInput(kInput);
  ScriptedGenerator first;
  ASSERT_TRUE(Run(first).ok());
  // Fix d4 in the input; the rerun retries every error line, keeps the ok ones.
  std::string fixed = kInput;
  fixed.replace(fixed.find("Please FAIL here."), 17, "Please work now.");
  WriteInput(fixed);
  ScriptedGenerator second;
  auto s = Run(second);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->skipped, 3);    // d1, d3, d5
  EXPECT_EQ(s->processed, 4);  // d2, line 3, duplicate d1, d4
  ASSERT_EQ(second.calls.size(), 1u);
  EXPECT_THAT(second.calls[0], HasSubstr("Please work now."));
  auto r = Records();
  ASSERT_EQ(r.size(), 7u);  // old error records replaced, not accumulated
  int ok = 0;
  for (const json& j : r) ok += j["status"] == "ok";
  EXPECT_EQ(ok, 4);
}

TEST_F(BatchRunnerTest, MissingInputFailsTheRun) {
  ScriptedGenerator gen;
  auto s = Run(gen);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("cannot read input"));
}

TEST(ProgressTest, Formatting) {
  EXPECT_EQ(FormatDuration(42), "42s");
  EXPECT_EQ(FormatDuration(65), "1m05s");
  EXPECT_EQ(FormatDuration(7380), "2h03m");
  EXPECT_EQ(FormatProgressBar(3, 12, 1234.4, 65, 12), "[###.........] 3/12 docs  1234 tok/s  ETA 1m05s");
  EXPECT_EQ(FormatProgressBar(12, 12, 10, 0, 4), "[####] 12/12 docs  10 tok/s");
  JobResult r;
  r.custom_id = "doc-7";
  r.prompt_tokens = 4123;
  r.generated_tokens = 256;
  r.attention = "mesa";
  r.plan = json::parse(R"({"attention": "mesa", "plan": {"chunked": true, "middle": [[100, 400], [400, 700]]}})");
  r.prefill_s = 10;
  r.decode_s = 2.3;
  EXPECT_EQ(FormatRecordLine(r, 3, 10, 1234, 65),
            "[3/10] doc-7 ok: 4123 prompt + 256 generated tokens (mesa, 2 middle chunks) in 12.3s; 1234 tok/s, "
            "ETA 1m05s");
  JobResult e;
  e.line = 4;
  e.status = absl::InvalidArgumentError("line 4: invalid JSON");
  EXPECT_EQ(FormatRecordLine(e, 10, 10, 5, 0), "[10/10] line 4 error: line 4: invalid JSON; 5 tok/s");
}

}  // namespace
}  // namespace mesa::jobs
