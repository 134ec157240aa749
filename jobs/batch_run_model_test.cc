// End to end: RunBatch with the engine's LongContextGenerator on the shared stories260K
// model (T = 512): a short document that fits (plain attention, equal to the base
// model's greedy output), a long one that Mesa chunks, and a bad line; then Mesa's and
// OpenAI batch lines mixed in one file, exported as OpenAI output lines. Skips visibly
// without ../shared.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "jobs/batch_runner.h"
#include "jobs/long_generator.h"

namespace mesa::jobs {
namespace {

using json = nlohmann::json;

std::string SharedPath(const std::string& rel) {
  const char* dir = std::getenv("MESA_SHARED_DIR");
  if (!dir) return "";
  std::string p = std::string(dir) + "/" + rel;
  return std::filesystem::exists(p) ? p : "";
}

TEST(BatchRunModelTest, ThreeLinesOnStories260K) {
  const std::string model_path = SharedPath("models/stories260K-f32.gguf");
  const std::string text_path = SharedPath("text/tinystories_valid_part1.txt");
  if (model_path.empty() || text_path.empty()) {
    GTEST_SKIP() << "shared model or text not found (set MESA_SHARED_DIR=../shared)";
  }
  auto model = LoadModel(model_path);
  ASSERT_TRUE(model.ok()) << model.status();
  const Tokenizer& tok = *(*model)->tokenizer;
  std::string stories;
  {
    std::ifstream f(text_path, std::ios::binary);
    stories.resize(7000);
    f.read(stories.data(), static_cast<std::streamsize>(stories.size()));
    stories.resize(f.gcount());
    // Cut at a space so the UTF-8 and words stay whole.
    stories.resize(stories.rfind(' '));
  }
  const std::string short_doc = "Tom had a red ball. He liked to play with it in the park.";
  const std::string dir = (std::filesystem::temp_directory_path() / absl::StrCat("mesa_e2e_", ::getpid())).string();
  std::filesystem::create_directories(dir);
  const std::string in = dir + "/in.jsonl", out = dir + "/out.jsonl";
  {
    std::ofstream f(in, std::ios::binary);
    f << json{{"custom_id", "short"}, {"document", short_doc}}.dump() << "\n"
      << json{{"custom_id", "long"}, {"document", stories}}.dump() << "\n"
      << json{{"custom_id", "empty"}, {"document", ""}}.dump() << "\n";
  }
  CpuBackend backend(2);
  LongContextGenerator gen(**model, backend, LongContextOptions{});
  BatchOptions options;
  options.max_tokens = 24;
  auto summary = RunBatch(in, out, tok, gen, options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->ok, 2);
  EXPECT_EQ(summary->errors, 1);

  std::ifstream f(out);
  std::vector<json> r;
  for (std::string line; std::getline(f, line);) r.push_back(json::parse(line));
  ASSERT_EQ(r.size(), 3u);
  for (const json& j : r) std::cout << j.dump().substr(0, 600) << "\n";
  ASSERT_EQ(r[0]["status"], "ok") << r[0].dump();
  ASSERT_EQ(r[1]["status"], "ok") << r[1].dump();
  EXPECT_EQ(r[2]["status"], "error");
  EXPECT_EQ(r[0]["attention"], "mesa");
  EXPECT_FALSE(r[0]["text"].get<std::string>().empty());
  EXPECT_FALSE(r[1]["text"].get<std::string>().empty());
  EXPECT_GT(r[1]["prompt_tokens"].get<int64_t>(), 2000);
  EXPECT_EQ(r[1]["plan"]["plan"]["chunked"], true) << r[1]["plan"].dump();
  EXPECT_GT(r[1]["plan"]["plan"]["middle"].size(), 3u);
  EXPECT_GT(r[1]["timings"]["prefill_tokens_per_s"].get<double>(), 0);

  // The short document fits: its output is the base model's greedy continuation.
  JobInput short_in;
  short_in.document = short_doc;
  auto prompt = TokenizePrompt(tok, BuildPrompt(ChatTemplate::kRaw, TaskKind::kSummarize, short_in));
  ASSERT_TRUE(prompt.ok());
  EXPECT_EQ(r[0]["prompt_tokens"], prompt->size());
  ModelRunner runner(**model, backend);
  GenerateOptions go;
  go.max_new_tokens = 24;
  auto base = Generate(runner, *prompt, go);
  ASSERT_TRUE(base.ok()) << base.status();
  std::vector<int32_t> ids = base->tokens;
  while (!ids.empty() && tok.IsEndOfGeneration(ids.back())) ids.pop_back();
  EXPECT_EQ(r[0]["text"], DecodeContinuation(tok, *prompt, ids));
  EXPECT_EQ(r[0]["generated_tokens"], base->tokens.size());
  std::filesystem::remove_all(dir);
}

TEST(BatchRunModelTest, MixedNativeAndOpenAiLines) {
  const std::string model_path = SharedPath("models/stories260K-f32.gguf");
  if (model_path.empty()) GTEST_SKIP() << "shared model not found (set MESA_SHARED_DIR=../shared)";
  auto model = LoadModel(model_path);
  ASSERT_TRUE(model.ok()) << model.status();
  const Tokenizer& tok = *(*model)->tokenizer;
  const std::string dir =
      (std::filesystem::temp_directory_path() / absl::StrCat("mesa_e2e_mixed_", ::getpid())).string();
  std::filesystem::create_directories(dir);
  const std::string in = dir + "/in.jsonl", out = dir + "/out.jsonl";
  const json messages = json::array({{{"role", "system"}, {"content", "You tell short stories."}},
                                     {{"role", "user"}, {"content", "Tom had a red ball."}}});
  {
    std::ofstream f(in, std::ios::binary);
    f << json{{"custom_id", "native"}, {"document", "Lily saw a cat."}}.dump() << "\n"
      << json{{"custom_id", "chat"}, {"method", "POST"}, {"url", "/v1/chat/completions"},
              {"body", {{"messages", messages}, {"max_tokens", 5}}}}.dump() << "\n"
      << json{{"custom_id", "bad"}, {"method", "POST"}, {"url", "/v1/completions"},
              {"body", {{"prompt", "x"}}}}.dump() << "\n";
  }
  CpuBackend backend(2);
  LongContextGenerator gen(**model, backend, LongContextOptions{});
  BatchOptions options;
  options.chat_template = ChatTemplate::kChatMl;
  options.max_tokens = 8;
  auto summary = RunBatch(in, out, tok, gen, options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->ok, 2);
  EXPECT_EQ(summary->errors, 1);
  std::ifstream f(out);
  std::vector<std::string> lines;
  for (std::string line; std::getline(f, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 3u);
  std::vector<json> r;
  for (const std::string& l : lines) r.push_back(json::parse(l));
  ASSERT_EQ(r[0]["status"], "ok") << r[0].dump();
  ASSERT_EQ(r[1]["status"], "ok") << r[1].dump();
  EXPECT_EQ(r[0]["generated_tokens"], 8);
  EXPECT_LE(r[1]["generated_tokens"].get<int64_t>(), 5);  // the line's body.max_tokens
  EXPECT_NE(r[2]["error"].get<std::string>().find("only \"/v1/chat/completions\""), std::string::npos) << r[2];
  // The chat line's prompt is its messages in the template, with no task instruction.
  JobInput chat;
  chat.messages = {{ChatRole::kSystem, "You tell short stories."}, {ChatRole::kUser, "Tom had a red ball."}};
  auto prompt = TokenizePrompt(tok, BuildPrompt(ChatTemplate::kChatMl, TaskKind::kChat, chat));
  ASSERT_TRUE(prompt.ok());
  EXPECT_EQ(r[1]["prompt_tokens"], prompt->size());
  // Exported as OpenAI batch output lines.
  const json o = json::parse(MesaLineToOpenAiLine(lines[1], "stories260K", "batch_e2e"));
  EXPECT_EQ(o["custom_id"], "chat");
  EXPECT_EQ(o["response"]["body"]["choices"][0]["message"]["content"], r[1]["text"]);
  EXPECT_EQ(o["response"]["body"]["usage"]["prompt_tokens"], prompt->size());
  const json e = json::parse(MesaLineToOpenAiLine(lines[2], "stories260K", "batch_e2e"));
  EXPECT_EQ(e["error"]["code"], "invalid_argument");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mesa::jobs
