// Parity of Mesa's CPU forward pass and tokenizer with llama.cpp.
//
// Runs `mesa` (client/cli) and `mesa_llama_ref` (tests/llamacpp/llama_ref.cc,
// llama.cpp from npm) as subprocesses on the same inputs and compares:
//   - logits of every prompt position: relative L2 error per row <= 1e-4 for
//     F32 files, same argmax; greedy generations identical;
//   - quantized files (made by llama.cpp itself): same argmax at every prompt
//     position (up to near-ties the measured error explains), and a relative
//     error below llama.cpp's own quantized-vs-F32 error; both reported;
//   - token ids of `mesa tokenize` against llama.cpp's tokenizer.
// Models: the two trained models in $MESA_SHARED_DIR/models and random-weight
// GGUFs written by mesa_make_random_model (llama GQA with head dims 64 and 128,
// qwen2 with biases, mpt with ALiBi). Every measured error is printed as a
// "[ MEASURED ]" line and recorded as a test property.
// Each test skips with a message when the reference, a binary or a data file
// is absent (see scripts/setup_reference.sh).

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace {

constexpr double kF32Tolerance = 1e-4;

std::string Env(const char* name) {
  const char* v = getenv(name);
  return v ? v : "";
}

bool IsFile(const std::string& path) {
  struct stat st;
  return !path.empty() && stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsExecutable(const std::string& path) { return IsFile(path) && access(path.c_str(), X_OK) == 0; }

std::string SharedDir() {
  const std::string dir = Env("MESA_SHARED_DIR");
  return dir.empty() ? "../shared" : dir;
}

std::string RefTool() {
#ifdef MESA_LLAMA_REF_PATH
  if (IsExecutable(MESA_LLAMA_REF_PATH)) return MESA_LLAMA_REF_PATH;
#endif
  const std::string p = Env("MESA_BINARY_DIR") + "/tests/llamacpp/mesa_llama_ref";
  return IsExecutable(p) ? p : "";
}

std::string MesaTool() {
  const std::string p = Env("MESA_BINARY_DIR") + "/client/cli/mesa";
  return IsExecutable(p) ? p : "";
}

std::string RandomModelTool() {
  const std::string bin = Env("MESA_BINARY_DIR");
  for (const char* rel : {"/tests/testing/mesa_make_random_model", "/tests/mesa_make_random_model",
                          "/mesa_make_random_model"}) {
    if (IsExecutable(bin + rel)) return bin + rel;
  }
  return "";
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string JoinIds(const std::vector<int>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

std::vector<int> ParseIds(const std::string& text) {
  std::vector<int> ids;
  std::istringstream in(text);
  int v;
  while (in >> v) ids.push_back(v);
  return ids;
}

// A scratch folder per test binary run, removed at exit unless
// MESA_KEEP_TEST_FILES is set.
const std::string& ScratchDir() {
  static const std::string dir = [] {
    std::string base = Env("TMPDIR").empty() ? "/tmp" : Env("TMPDIR");
    std::string tmpl = base + "/mesa_reference_test.XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) return std::string("/tmp");
    std::string made = buf.data();
    if (Env("MESA_KEEP_TEST_FILES").empty()) {
      static std::string to_remove = made;
      atexit([] { (void)!system(("rm -rf " + Quote(to_remove)).c_str()); });
    }
    return made;
  }();
  return dir;
}

struct RunResult {
  int rc = -1;
  std::string out;
  std::string err;
};

// Runs a shell command; stdout captured, stderr kept for failure messages.
RunResult RunCommand(const std::string& cmd) {
  static int counter = 0;
  const std::string err_path = ScratchDir() + "/stderr." + std::to_string(counter++);
  RunResult r;
  FILE* pipe = popen((cmd + " 2>" + Quote(err_path)).c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) r.out.append(buf, n);
  const int status = pclose(pipe);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_path);
  std::stringstream ss;
  ss << err.rdbuf();
  r.err = ss.str();
  if (r.err.size() > 4000) r.err = "..." + r.err.substr(r.err.size() - 4000);
  return r;
}

std::string Describe(const std::string& cmd, const RunResult& r) {
  return "command: " + cmd + "\nexit: " + std::to_string(r.rc) + "\nstderr:\n" + r.err;
}

std::vector<float> ReadFloats(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> v(bytes.size() / sizeof(float));
  std::copy(bytes.begin(), bytes.begin() + v.size() * sizeof(float),
            reinterpret_cast<char*>(v.data()));
  return v;
}

void Measured(const std::string& key, const std::string& value) {
  printf("[ MEASURED ] %s = %s\n", key.c_str(), value.c_str());
  fflush(stdout);
  ::testing::Test::RecordProperty(key, value);
}

std::string Fmt(double v) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.3g", v);
  return buf;
}

// --- the two engines -------------------------------------------------------

// Token ids from llama.cpp's tokenizer.
std::vector<int> RefTokenize(const std::string& model, const std::string& text, bool bos) {
  const std::string cmd = Quote(RefTool()) + " tokenize --model " + Quote(model) + " --text " +
                          Quote(text) + (bos ? "" : " --no-bos");
  RunResult r = RunCommand(cmd);
  EXPECT_EQ(r.rc, 0) << Describe(cmd, r);
  return ParseIds(r.out);
}

// Writes the logits of `tokens` (all rows) with `tool` ("mesa" or the ref).
std::vector<float> Logits(const std::string& tool, const std::string& model,
                          const std::vector<int>& tokens, const std::string& out) {
  const std::string cmd = Quote(tool) + " logits --model " + Quote(model) + " --tokens " +
                          JoinIds(tokens) + " --out " + Quote(out) + " --all";
  RunResult r = RunCommand(cmd);
  EXPECT_EQ(r.rc, 0) << Describe(cmd, r);
  if (r.rc != 0) return {};
  return ReadFloats(out);
}

std::vector<int> RefGenerate(const std::string& model, const std::vector<int>& prompt, int n,
                             bool ignore_eos) {
  const std::string cmd = Quote(RefTool()) + " generate --model " + Quote(model) + " --tokens " +
                          JoinIds(prompt) + " -n " + std::to_string(n) +
                          (ignore_eos ? " --ignore-eos" : "");
  RunResult r = RunCommand(cmd);
  EXPECT_EQ(r.rc, 0) << Describe(cmd, r);
  return ParseIds(r.out);
}

// Runs a `mesa ... --json` command and returns the "tokens" list of its output.
std::vector<int> MesaJsonTokens(const std::string& cmd, const char* what) {
  RunResult r = RunCommand(cmd);
  EXPECT_EQ(r.rc, 0) << Describe(cmd, r);
  if (r.rc != 0) return {};
  try {
    return nlohmann::json::parse(r.out).at("tokens").get<std::vector<int>>();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "bad JSON from mesa " << what << " (" << e.what() << "): " << r.out;
    return {};
  }
}

std::vector<int> MesaGenerate(const std::string& model, const std::vector<int>& prompt, int n) {
  const std::string cmd = Quote(MesaTool()) + " generate --model " + Quote(model) + " --tokens " +
                          JoinIds(prompt) + " -n " + std::to_string(n) + " --json";
  return MesaJsonTokens(cmd, "generate");
}

std::vector<int> MesaTokenize(const std::string& model, const std::string& text, bool bos) {
  const std::string cmd = Quote(MesaTool()) + " tokenize --model " + Quote(model) + " --text " +
                          Quote(text) + (bos ? "" : " --no-bos") + " --json";
  return MesaJsonTokens(cmd, "tokenize");
}

// --- comparison -------------------------------------------------------------

struct RowStats {
  double max_rel = 0;         // max over rows of ||a-b|| / ||b||
  int argmax_equal = 0;       // rows with identical argmax
  int argmax_near_tie = 0;    // rows that differ, but only within a near-tie of b
  int rows = 0;
};

int Argmax(const float* row, size_t n) {
  return static_cast<int>(std::max_element(row, row + n) - row);
}

// Compares `a` (mesa) with `b` (reference), row by row. A differing argmax
// counts as a near-tie when b's logits at both indices differ by less than
// max(`tie`, 3 x the row's relative error) times b's row RMS: a flip that the
// measured error can explain. `tie` = 0 makes every flip count.
RowStats CompareRows(const std::vector<float>& a, const std::vector<float>& b, size_t n_vocab,
                     double tie) {
  RowStats s;
  s.rows = static_cast<int>(b.size() / n_vocab);
  for (int r = 0; r < s.rows; ++r) {
    const float* x = a.data() + r * n_vocab;
    const float* y = b.data() + r * n_vocab;
    double diff = 0, norm = 0;
    for (size_t i = 0; i < n_vocab; ++i) {
      diff += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      norm += double(y[i]) * y[i];
    }
    const double rel = std::sqrt(diff / std::max(norm, 1e-30));
    s.max_rel = std::max(s.max_rel, rel);
    const int ia = Argmax(x, n_vocab), ib = Argmax(y, n_vocab);
    if (ia == ib) {
      ++s.argmax_equal;
    } else if (tie > 0 && y[ib] - y[ia] <= std::max(tie, 3 * rel) * std::sqrt(norm / n_vocab)) {
      ++s.argmax_near_tie;
    }
  }
  return s;
}

// Greedy generations agree under any of the usual stop conventions: mesa
// stops before an end-of-generation token, emits it then stops, or ignores it.
void ExpectSameGeneration(const std::string& model, const std::vector<int>& prompt, int n,
                          const std::string& label) {
  const std::vector<int> ref_stop = RefGenerate(model, prompt, n, /*ignore_eos=*/false);
  const std::vector<int> ref_all = RefGenerate(model, prompt, n, /*ignore_eos=*/true);
  const std::vector<int> mesa = MesaGenerate(model, prompt, n);
  std::vector<int> ref_with_eog(ref_all.begin(),
                                ref_all.begin() + std::min(ref_all.size(), ref_stop.size() + 1));
  const bool same = mesa == ref_stop || mesa == ref_with_eog || mesa == ref_all;
  Measured(label + ".greedy_generation_identical", same ? "yes" : "no");
  EXPECT_TRUE(same) << label << ": greedy generations differ\n  mesa:      " << JoinIds(mesa)
                    << "\n  llama.cpp: " << JoinIds(ref_all);
}

// Logit parity for `tokens` on `model`: per-row relative error and argmax.
// For F32 files `tolerance` bounds the error; quantized files only report it
// and require the same argmax (near-ties of the reference allowed).
// `f32_model`, when given, is the file `model` was quantized from: llama.cpp's
// own quantization error is then reported beside Mesa's, for scale.
void ExpectSameLogits(const std::string& model, const std::vector<int>& tokens,
                      const std::string& label, double tolerance,
                      const std::string& f32_model = "") {
  const std::string base = ScratchDir() + "/" + label;
  const std::vector<float> ref = Logits(RefTool(), model, tokens, base + ".ref.f32");
  const std::vector<float> mesa = Logits(MesaTool(), model, tokens, base + ".mesa.f32");
  ASSERT_FALSE(ref.empty());
  ASSERT_EQ(ref.size() % tokens.size(), 0u);
  const size_t n_vocab = ref.size() / tokens.size();
  ASSERT_EQ(mesa.size(), ref.size()) << label << ": mesa wrote " << mesa.size()
                                     << " floats, llama.cpp " << ref.size();
  const RowStats s = CompareRows(mesa, ref, n_vocab, /*tie=*/tolerance > 0 ? 0.0 : 0.05);
  Measured(label + ".max_rel_error", Fmt(s.max_rel));
  Measured(label + ".argmax_equal_rows",
           std::to_string(s.argmax_equal) + "/" + std::to_string(s.rows));
  if (tolerance > 0) {
    EXPECT_LE(s.max_rel, tolerance) << label;
    EXPECT_EQ(s.argmax_equal, s.rows) << label;
    return;
  }
  EXPECT_EQ(s.argmax_equal + s.argmax_near_tie, s.rows)
      << label << ": argmax differs beyond near-ties of llama.cpp's logits";
  // Mesa's distance from llama.cpp must stay below llama.cpp's own distance
  // from the F32 model: a wrongly decoded block format lands far above it.
  if (!f32_model.empty()) {
    const std::vector<float> ref_f32 = Logits(RefTool(), f32_model, tokens, base + ".reff32.f32");
    ASSERT_EQ(ref_f32.size(), ref.size());
    const RowStats q = CompareRows(ref, ref_f32, n_vocab, 0.0);
    Measured(label + ".llamacpp_quantized_vs_f32_rel_error", Fmt(q.max_rel));
    EXPECT_LT(s.max_rel, q.max_rel)
        << label << ": Mesa differs from llama.cpp more than quantization itself does";
  }
}

// --- inputs -----------------------------------------------------------------

// The start of the TinyStories validation text, ASCII only (the 656k model's
// vocab has no byte tokens, and llama.cpp aborts on what it cannot encode).
std::string StoryText(size_t chars) {
  std::ifstream in(SharedDir() + "/text/tinystories_valid_part1.txt");
  std::string text, line;
  while (text.size() < chars && std::getline(in, line)) {
    for (char c : line) {
      if (static_cast<unsigned char>(c) < 128) text += c;
    }
    text += ' ';
  }
  if (text.size() > chars) text.resize(chars);
  return text;
}

#define REQUIRE_REF()                                                                  \
  if (RefTool().empty())                                                               \
  GTEST_SKIP() << "llama.cpp reference absent: run scripts/setup_reference.sh, then "  \
                  "reconfigure with -DMESA_LLAMACPP_DIR (now '"                        \
               << Env("MESA_LLAMACPP_DIR") << "')"
#define REQUIRE_MESA() \
  if (MesaTool().empty()) GTEST_SKIP() << "mesa CLI not built at $MESA_BINARY_DIR/client/cli/mesa"
#define REQUIRE_FILE(path) \
  if (!IsFile(path)) GTEST_SKIP() << "data file absent: " << (path)

// --- the trained models -----------------------------------------------------

std::string Stories260K() { return SharedDir() + "/models/stories260K-f32.gguf"; }
std::string Tiny656K() { return SharedDir() + "/models/tinystories-656k-f32.gguf"; }

// Checks the reference tool alone against TESTDATA.md's documented output.
TEST(LlamaRefTool, Stories260KGreedyStory) {
  REQUIRE_REF();
  REQUIRE_FILE(Stories260K());
  const std::vector<int> prompt = RefTokenize(Stories260K(), "Once upon a time", true);
  ASSERT_FALSE(prompt.empty());
  const std::string cmd = Quote(RefTool()) + " generate --model " + Quote(Stories260K()) +
                          " --tokens " + JoinIds(prompt) + " -n 40 --print-text";
  RunResult r = RunCommand(cmd);
  ASSERT_EQ(r.rc, 0) << Describe(cmd, r);
  const std::string expected =
      ", there was a little girl named Lily. She loved to play outside in the park. One day, "
      "she saw a big, red ball.";
  EXPECT_NE(r.out.find(expected), std::string::npos) << r.out;
}

struct TrainedCase {
  const char* label;
  std::string (*path)();
};

void PrintTo(const TrainedCase& c, std::ostream* os) { *os << c.label; }

class TrainedModelTest : public ::testing::TestWithParam<TrainedCase> {};

TEST_P(TrainedModelTest, LogitsMatchOnStoryText) {
  REQUIRE_REF();
  REQUIRE_MESA();
  const std::string model = GetParam().path();
  REQUIRE_FILE(model);
  REQUIRE_FILE(SharedDir() + "/text/tinystories_valid_part1.txt");
  std::vector<int> tokens = RefTokenize(model, StoryText(600), true);
  ASSERT_GE(tokens.size(), 64u);
  tokens.resize(96);
  ExpectSameLogits(model, tokens, std::string(GetParam().label) + ".f32", kF32Tolerance);
}

TEST_P(TrainedModelTest, GreedyGenerationMatches) {
  REQUIRE_REF();
  REQUIRE_MESA();
  const std::string model = GetParam().path();
  REQUIRE_FILE(model);
  for (const char* text : {"Once upon a time", "Tom and his dog went to the"}) {
    const std::vector<int> prompt = RefTokenize(model, text, true);
    ExpectSameGeneration(model, prompt, 48, std::string(GetParam().label) + ".f32");
  }
}

INSTANTIATE_TEST_SUITE_P(Shared, TrainedModelTest,
                         ::testing::Values(TrainedCase{"stories260K", &Stories260K},
                                           TrainedCase{"tinystories656k", &Tiny656K}),
                         [](const auto& info) { return std::string(info.param.label); });

TEST(TokenizerParity, Stories260K) {
  REQUIRE_REF();
  REQUIRE_MESA();
  REQUIRE_FILE(Stories260K());
  std::vector<std::string> texts = {
      "Once upon a time",
      "Hello world",
      " leading space and  double  spaces",
      "Lily said, \"Mom, can I have 3 cookies?\"\nMom said: no!",
      "unbelievable! supercalifragilistic 12345 ...",
      "caf\xc3\xa9 na\xc3\xafve \xe2\x9c\x93",  // needs byte fallback
  };
  if (IsFile(SharedDir() + "/text/tinystories_valid_part1.txt")) texts.push_back(StoryText(400));
  int identical = 0, total = 0;
  for (const std::string& text : texts) {
    for (bool bos : {true, false}) {
      const std::vector<int> ref = RefTokenize(Stories260K(), text, bos);
      const std::vector<int> mesa = MesaTokenize(Stories260K(), text, bos);
      ++total;
      identical += ref == mesa;
      EXPECT_EQ(mesa, ref) << "text: \"" << text << "\" bos=" << bos;
    }
  }
  Measured("stories260K.tokenizer_identical", std::to_string(identical) + "/" +
                                                  std::to_string(total));
}

// --- random-weight models ---------------------------------------------------

struct RandomCase {
  const char* label;
  const char* spec_args;  // arguments for mesa_make_random_model
  int n_vocab;            // the tokenizer's (stories260K by default)
  double f32_tolerance = kF32Tolerance;
};

// ggml's CPU GELU rounds its input to f16 and reads an f16 table
// (GGML_GELU_FP16 in ggml-cpu/vec.h): outputs carry ~5e-4 relative error, which
// reaches the logits as ~3e-4 against an exact GELU.
constexpr double kGeluTolerance = 1e-3;

void PrintTo(const RandomCase& c, std::ostream* os) { *os << c.label; }

const RandomCase kRandomCases[] = {
    {"llama_gqa_hd64",
     "--arch llama --n-embd 256 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 512",
     512},
    {"llama_gqa_hd128",
     "--arch llama --n-embd 256 --n-layer 2 --n-head 2 --n-head-kv 1 --n-ff 512",
     512},
    {"qwen2_bias",
     "--arch qwen2 --n-embd 256 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 512",
     512},
    {"mpt_alibi", "--arch mpt --n-embd 256 --n-layer 2 --n-head 4 --n-ff 1024", 512,
     kGeluTolerance},
};

// Random models and their quantized versions are cached across test processes
// (ctest runs each test alone) in $MESA_BINARY_DIR/tests/llamacpp/models, and
// rebuilt when older than the tool that makes them. Writes go to a temporary
// name and are renamed, so parallel tests never read half a file.
std::string CacheDir() {
  std::string dir = Env("MESA_BINARY_DIR");
  if (dir.empty()) return ScratchDir();
  dir += "/tests/llamacpp/models";
  (void)!system(("mkdir -p " + Quote(dir)).c_str());
  return dir;
}

bool FreshFile(const std::string& path, const std::string& source) {
  struct stat a, b;
  if (stat(path.c_str(), &a) != 0) return false;
  return stat(source.c_str(), &b) != 0 || a.st_mtime >= b.st_mtime;
}

// Runs `cmd_prefix + tmp` to produce `path` atomically; "" on success.
std::string MakeFile(const std::string& cmd_prefix, const std::string& path) {
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  const std::string cmd = cmd_prefix + Quote(tmp);
  RunResult r = RunCommand(cmd);
  if (r.rc != 0 || !IsFile(tmp) || rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    return Describe(cmd, r);
  }
  return "";
}

// The F32 random model of `c`, or "" with the reason in `why`.
std::string RandomModel(const RandomCase& c, std::string* why) {
  const std::string tool = RandomModelTool();
  if (tool.empty()) {
    *why = "mesa_make_random_model not built under $MESA_BINARY_DIR";
    return "";
  }
  const std::string path = CacheDir() + "/" + c.label + ".f32.gguf";
  if (FreshFile(path, tool)) return path;
  const std::string error =
      MakeFile(Quote(tool) + " " + c.spec_args + " --seed 1234 --out ", path);
  if (!error.empty()) {
    *why = "could not write the random model\n" + error;
    return "";
  }
  return path;
}

// `f32` quantized by llama.cpp to `type`.
std::string Quantized(const std::string& f32, const std::string& label, const std::string& type) {
  const std::string path = CacheDir() + "/" + label + "." + type + ".gguf";
  if (FreshFile(path, f32)) return path;
  const std::string error = MakeFile(Quote(RefTool()) + " quantize --quiet --type " + type +
                                         " --in " + Quote(f32) + " --out ",
                                     path);
  EXPECT_EQ(error, "");
  return error.empty() ? path : "";
}

std::vector<int> RandomPrompt(int n_vocab, int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(3, n_vocab - 1);
  std::vector<int> ids(n);
  for (int& id : ids) id = dist(rng);
  return ids;
}

class RandomModelTest : public ::testing::TestWithParam<std::tuple<RandomCase, std::string>> {};

TEST_P(RandomModelTest, LogitsMatch) {
  REQUIRE_REF();
  REQUIRE_MESA();
  const auto& [c, type] = GetParam();
  std::string why;
  const std::string f32 = RandomModel(c, &why);
  if (f32.empty()) GTEST_SKIP() << why;
  const std::string model = type == "f32" ? f32 : Quantized(f32, c.label, type);
  ASSERT_FALSE(model.empty());
  for (unsigned seed : {1u, 2u}) {
    const std::vector<int> prompt = RandomPrompt(c.n_vocab, 40, seed);
    ExpectSameLogits(model, prompt,
                     std::string(c.label) + "." + type + ".prompt" + std::to_string(seed),
                     type == "f32" ? c.f32_tolerance : 0.0, type == "f32" ? "" : f32);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Random, RandomModelTest,
    ::testing::Combine(::testing::ValuesIn(kRandomCases),
                       ::testing::Values("f32", "q8_0", "q4_0", "q4_k", "q5_k", "q6_k")),
    [](const auto& info) {
      return std::string(std::get<0>(info.param).label) + "_" + std::get<1>(info.param);
    });

class RandomGenerationTest : public ::testing::TestWithParam<RandomCase> {};

TEST_P(RandomGenerationTest, GreedyGenerationMatches) {
  REQUIRE_REF();
  REQUIRE_MESA();
  std::string why;
  const std::string model = RandomModel(GetParam(), &why);
  if (model.empty()) GTEST_SKIP() << why;
  ExpectSameGeneration(model, RandomPrompt(GetParam().n_vocab, 12, 7), 24,
                       std::string(GetParam().label) + ".f32");
}

INSTANTIATE_TEST_SUITE_P(Random, RandomGenerationTest, ::testing::ValuesIn(kRandomCases),
                         [](const auto& info) { return std::string(info.param.label); });

}  // namespace
