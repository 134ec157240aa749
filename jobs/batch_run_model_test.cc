// End to end: RunBatch with the engine's LongContextGenerator on the shared stories260K
// model (T = 512): a short document that fits (plain attention, equal to the base
// model's greedy output), a long one that Mesa chunks, and a bad line. Skips visibly
// without ../shared.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/thread_pool.h"
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
  ThreadPool pool(2);
  LongContextGenerator gen(**model, pool, LongContextOptions{});
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
  ModelRunner runner(**model, pool);
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

}  // namespace
}  // namespace mesa::jobs
