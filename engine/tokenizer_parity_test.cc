// Parity with llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf with .inp
// inputs and .out expected ids, the format of llama.cpp's tests/test-tokenizer-0.cpp).
// The vectors are looked up under $MESA_LLAMACPP_DIR/src/models, then
// $MESA_LLAMACPP_VOCAB_DIR, then the configured MESA_LLAMACPP_DIR/src/models; the
// test skips, naming each place it looked, when none has them.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/testing/linear_time.h"

namespace mesa {
namespace {

std::string ReadAll(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Returns the directory holding `file`, or "" after recording where it looked.
std::filesystem::path FindVocabDir(const std::string& file, std::string* looked) {
  std::vector<std::filesystem::path> dirs;
  if (const char* d = std::getenv("MESA_LLAMACPP_DIR"); d != nullptr && *d) {
    dirs.push_back(std::filesystem::path(d) / "src" / "models");
  }
  if (const char* d = std::getenv("MESA_LLAMACPP_VOCAB_DIR"); d != nullptr && *d) {
    dirs.push_back(d);
  }
#ifdef MESA_CONFIGURED_LLAMACPP_DIR
  if (*MESA_CONFIGURED_LLAMACPP_DIR) {
    dirs.push_back(std::filesystem::path(MESA_CONFIGURED_LLAMACPP_DIR) / "src" / "models");
  }
#endif
  for (const auto& dir : dirs) {
    std::error_code ec;
    if (std::filesystem::exists(dir / file, ec)) return dir;
    *looked += (looked->empty() ? "" : ", ") + (dir / file).string();
  }
  if (dirs.empty()) *looked = "(neither MESA_LLAMACPP_DIR nor MESA_LLAMACPP_VOCAB_DIR is set)";
  *looked += "; set MESA_LLAMACPP_DIR (with src/models) or MESA_LLAMACPP_VOCAB_DIR";
  return {};
}

struct Case {
  std::string input;
  std::vector<int32_t> expected;
};

std::vector<Case> ReadCases(const std::filesystem::path& inp, const std::filesystem::path& out) {
  const std::string raw = ReadAll(inp);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0; pos < raw.size();) {
    const size_t next = raw.find(sep, pos);
    if (next == std::string::npos) {
      inputs.push_back(raw.substr(pos));
      break;
    }
    inputs.push_back(raw.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::vector<Case> cases;
  std::istringstream lines(ReadAll(out));
  std::string line;
  for (size_t i = 0; std::getline(lines, line); ++i) {
    if (i >= inputs.size()) break;
    Case c{inputs[i], {}};
    for (absl::string_view tok : absl::StrSplit(line, ' ', absl::SkipWhitespace())) {
      c.expected.push_back(std::stoi(std::string(tok)));
    }
    cases.push_back(std::move(c));
  }
  EXPECT_EQ(cases.size(), inputs.size()) << "input and output files disagree: " << inp;
  return cases;
}

class LlamaCppVocabTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LlamaCppVocabTest, MatchesReferenceIds) {
  const std::string name = "ggml-vocab-" + GetParam() + ".gguf";
  std::string looked;
  const std::filesystem::path dir = FindVocabDir(name, &looked);
  if (dir.empty()) GTEST_SKIP() << "llama.cpp vocab files not found; looked for " << looked;

  auto file = GgufFile::Open((dir / name).string());
  ASSERT_TRUE(file.ok()) << file.status();
  auto tok = CreateTokenizerFromGguf(**file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<Case> cases = ReadCases(dir / (name + ".inp"), dir / (name + ".out"));
  ASSERT_FALSE(cases.empty());

  int passed = 0;
  int reported = 0;
  for (const Case& c : cases) {
    EncodeOptions options;
    options.add_bos = false;
    auto ids = (*tok)->Encode(c.input, options);
    ASSERT_TRUE(ids.ok()) << ids.status();
    // Byte-level BPE is lossless; SPM adds (and Decode removes) one leading space.
    EXPECT_EQ((*tok)->Decode(*ids), c.input) << GetParam() << ": round trip";
    if (*ids == c.expected) {
      ++passed;
    } else if (reported++ < 5) {
      ADD_FAILURE() << GetParam() << ": input '" << c.input << "'\n  expected "
                    << absl::StrJoin(c.expected, " ") << "\n  got      "
                    << absl::StrJoin(*ids, " ");
    }
  }
  std::printf("[ PARITY   ] %s (%s): %d/%zu cases match llama.cpp\n", GetParam().c_str(),
              (*tok)->kind().c_str(), passed, cases.size());
  EXPECT_EQ(passed, static_cast<int>(cases.size()));

  // Speed: a 1 MiB document (a novel from ../shared, else the test inputs repeated)
  // tokenizes in time linear in its length.
  std::string doc;
  if (const char* shared = std::getenv("MESA_SHARED_DIR"); shared != nullptr && *shared) {
    doc = ReadAll(std::filesystem::path(shared) / "text" / "pride_and_prejudice.txt");
  }
  if (doc.empty()) {
    for (const Case& c : cases) doc += c.input + "\n";
  }
  while (doc.size() < (1u << 20)) doc += doc;
  doc.resize(1u << 20);
  while (!doc.empty() && static_cast<uint8_t>(doc.back()) >= 0x80) doc.pop_back();
  testing::ExpectLinearTime(doc, GetParam(), [&](const std::string& text) {
    auto ids = (*tok)->Encode(text, {});
    ASSERT_TRUE(ids.ok()) << ids.status();
  });
}

INSTANTIATE_TEST_SUITE_P(Vocabs, LlamaCppVocabTest,
                         ::testing::Values("llama-spm", "llama-bpe", "qwen2", "mpt", "gpt-2"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

}  // namespace
}  // namespace mesa
