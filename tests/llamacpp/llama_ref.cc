// mesa_llama_ref: the outside reference for Mesa's CPU forward pass.
//
// A thin command-line driver over llama.cpp's public C API (headers from the
// node-llama-cpp@3.22.1 source bundle, prebuilt libllama/libggml from npm; see
// scripts/setup_reference.sh). It speaks the same file contracts as `mesa`, so
// tests can run both on the same inputs and compare:
//   tokenize --model M --text T [--no-bos] [--parse-special]
//       -> token ids on stdout, space separated
//   logits   --model M (--tokens 1,2,3 | --tokens-file F) --out FILE [--all]
//            [--threads N]
//       -> little-endian float32 logits of the last token (or of every token
//          with --all), row-major rows of n_vocab floats
//   generate --model M (--tokens 1,2,3 | --tokens-file F) -n N [--ignore-eos]
//            [--print-text] [--threads N]
//       -> greedy (argmax, lowest id on ties) generated ids on stdout; stops
//          after an end-of-generation token (not printed) unless --ignore-eos;
//          --print-text prints the detokenized generation on a second line
//   quantize --in F --out G --type q8_0|q4_0|q4_k|q5_k|q6_k|f16 [--threads N]
//       -> llama_model_quantize (Q4_K / Q5_K mean llama.cpp's _M mixes); llama.cpp's
//          per-tensor log on stderr (unless --quiet), then "tensor types: ..."
//          counts of the written file on stdout
// Numerics are pinned for tight comparisons: F32 K/V cache, flash attention
// off, the whole prompt in one batch and one ubatch. --threads defaults to 1:
// ggml's spinning thread pool slows down by orders of magnitude when the
// cores are shared with other work (a parallel test run), and the tiny test
// models gain nothing from threads.
// --verbose forwards llama.cpp's own log to stderr (silent otherwise, except
// errors).

#include <dlfcn.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"

#ifndef MESA_LLAMACPP_LIB_DIR
#define MESA_LLAMACPP_LIB_DIR ""
#endif

namespace {

bool g_verbose = false;

void LogCallback(ggml_log_level level, const char* text, void* /*user*/) {
  if (g_verbose || level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

[[noreturn]] void Die(const std::string& message) {
  fprintf(stderr, "mesa_llama_ref: %s\n", message.c_str());
  exit(1);
}

// Parsed "--key value" / "--flag" arguments after the subcommand.
class Args {
 public:
  Args(int argc, char** argv, const std::vector<std::string>& flags) {
    for (int i = 2; i < argc; ++i) {
      std::string key = argv[i];
      if (key.rfind("--", 0) != 0 && key != "-n") Die("unexpected argument: " + key);
      if (std::find(flags.begin(), flags.end(), key) != flags.end()) {
        values_[key] = "1";
        continue;
      }
      if (i + 1 >= argc) Die("missing value for " + key);
      values_[key] = argv[++i];
    }
  }
  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  std::string Get(const std::string& key) const {
    auto it = values_.find(key);
    if (it == values_.end()) Die("missing required option " + key);
    return it->second;
  }
  std::string GetOr(const std::string& key, const std::string& fallback) const {
    auto it = values_.find(key);
    return it == values_.end() ? fallback : it->second;
  }
  int GetInt(const std::string& key, int fallback) const {
    if (!Has(key)) return fallback;
    const std::string text = Get(key);  // `end` points into it: keep it alive
    char* end = nullptr;
    long v = strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0') Die("not an integer for " + key + ": " + text);
    return static_cast<int>(v);
  }

 private:
  std::map<std::string, std::string> values_;
};

// Parses "1,2,3" (commas and/or whitespace as separators).
std::vector<llama_token> ParseTokens(const std::string& text) {
  std::vector<llama_token> tokens;
  std::string cleaned = text;
  std::replace(cleaned.begin(), cleaned.end(), ',', ' ');
  std::istringstream in(cleaned);
  std::string item;
  while (in >> item) {
    char* end = nullptr;
    long v = strtol(item.c_str(), &end, 10);
    if (*end != '\0') Die("bad token id: " + item);
    tokens.push_back(static_cast<llama_token>(v));
  }
  return tokens;
}

std::vector<llama_token> ReadPromptTokens(const Args& args) {
  std::vector<llama_token> tokens;
  if (args.Has("--tokens")) {
    tokens = ParseTokens(args.Get("--tokens"));
  } else if (args.Has("--tokens-file")) {
    std::ifstream in(args.Get("--tokens-file"));
    if (!in) Die("cannot read " + args.Get("--tokens-file"));
    std::stringstream buffer;
    buffer << in.rdbuf();
    tokens = ParseTokens(buffer.str());
  } else {
    Die("need --tokens or --tokens-file");
  }
  if (tokens.empty()) Die("empty token list");
  return tokens;
}

// Loads the CPU backend variants (libggml-cpu-<arch>.so): GGML_BACKEND_DIR from
// the environment wins, then the library folder known at build time, then the
// folder that holds libllama itself.
void LoadBackends() {
  std::string dir;
  if (const char* env = getenv("GGML_BACKEND_DIR"); env && *env) {
    dir = env;
  } else if (*MESA_LLAMACPP_LIB_DIR) {
    dir = MESA_LLAMACPP_LIB_DIR;
  } else {
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&llama_backend_init), &info) && info.dli_fname) {
      dir = info.dli_fname;
      dir = dir.substr(0, dir.find_last_of('/'));
    }
  }
  ggml_backend_load_all_from_path(dir.empty() ? nullptr : dir.c_str());
  if (ggml_backend_dev_count() == 0) {
    Die("no ggml backend could be loaded from '" + dir +
        "' (set GGML_BACKEND_DIR to the folder with libggml-cpu-*.so)");
  }
  if (g_verbose) {
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
      ggml_backend_dev_t dev = ggml_backend_dev_get(i);
      fprintf(stderr, "mesa_llama_ref: backend device %s (%s)\n",
              ggml_backend_dev_name(dev), ggml_backend_dev_description(dev));
    }
  }
}

llama_model* LoadModel(const std::string& path, bool vocab_only) {
  llama_model_params params = llama_model_default_params();
  params.n_gpu_layers = 0;
  params.vocab_only = vocab_only;
  params.use_extra_bufts = false;  // no weight repacking: plain ggml kernels
  llama_model* model = llama_model_load_from_file(path.c_str(), params);
  if (!model) Die("cannot load model " + path);
  return model;
}

llama_context* MakeContext(llama_model* model, int n_tokens, int threads) {
  llama_context_params params = llama_context_default_params();
  const uint32_t n = static_cast<uint32_t>(std::max(n_tokens, 32));
  params.n_ctx = n;
  params.n_batch = n;
  params.n_ubatch = n;
  params.n_seq_max = 1;
  params.n_threads = threads;
  params.n_threads_batch = threads;
  params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  params.type_k = GGML_TYPE_F32;
  params.type_v = GGML_TYPE_F32;
  params.offload_kqv = false;
  params.no_perf = true;
  llama_context* ctx = llama_init_from_model(model, params);
  if (!ctx) Die("cannot create a llama context");
  return ctx;
}

// Decodes `tokens` at positions [pos0, pos0 + n); logits requested for every
// token when `all`, else for the last only.
void Decode(llama_context* ctx, const std::vector<llama_token>& tokens, int pos0, bool all) {
  llama_batch batch = llama_batch_init(static_cast<int32_t>(tokens.size()), 0, 1);
  for (size_t i = 0; i < tokens.size(); ++i) {
    batch.token[i] = tokens[i];
    batch.pos[i] = pos0 + static_cast<int32_t>(i);
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = all || i + 1 == tokens.size();
  }
  batch.n_tokens = static_cast<int32_t>(tokens.size());
  const int32_t rc = llama_decode(ctx, batch);
  llama_batch_free(batch);
  if (rc != 0) Die("llama_decode failed with " + std::to_string(rc));
}

void CheckTokens(const llama_vocab* vocab, const std::vector<llama_token>& tokens) {
  const int n_vocab = llama_vocab_n_tokens(vocab);
  for (llama_token t : tokens) {
    if (t < 0 || t >= n_vocab) {
      Die("token id " + std::to_string(t) + " outside the vocabulary of " +
          std::to_string(n_vocab));
    }
  }
}

int Tokenize(const Args& args) {
  llama_model* model = LoadModel(args.Get("--model"), /*vocab_only=*/true);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const std::string text = args.Get("--text");
  const bool add_special = !args.Has("--no-bos");
  const bool parse_special = args.Has("--parse-special");
  std::vector<llama_token> ids(text.size() + 8);
  int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                             static_cast<int32_t>(ids.size()), add_special, parse_special);
  if (n < 0) {
    ids.resize(-n);
    n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                       static_cast<int32_t>(ids.size()), add_special, parse_special);
  }
  if (n < 0) Die("tokenization failed");
  for (int32_t i = 0; i < n; ++i) printf(i ? " %d" : "%d", ids[i]);
  printf("\n");
  llama_model_free(model);
  return 0;
}

int Logits(const Args& args) {
  const std::vector<llama_token> tokens = ReadPromptTokens(args);
  const bool all = args.Has("--all");
  llama_model* model = LoadModel(args.Get("--model"), /*vocab_only=*/false);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  CheckTokens(vocab, tokens);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  llama_context* ctx =
      MakeContext(model, static_cast<int>(tokens.size()), args.GetInt("--threads", 1));
  Decode(ctx, tokens, 0, all);

  const std::string out_path = args.Get("--out");
  FILE* out = fopen(out_path.c_str(), "wb");
  if (!out) Die("cannot write " + out_path + ": " + strerror(errno));
  const int rows = all ? static_cast<int>(tokens.size()) : 1;
  for (int r = 0; r < rows; ++r) {
    const int index = all ? r : static_cast<int>(tokens.size()) - 1;
    const float* row = llama_get_logits_ith(ctx, index);
    if (!row) Die("no logits for token " + std::to_string(index));
    // x86-64 is little-endian: the in-memory floats are the file format.
    if (fwrite(row, sizeof(float), n_vocab, out) != static_cast<size_t>(n_vocab)) {
      Die("short write to " + out_path);
    }
  }
  fclose(out);
  fprintf(stderr, "mesa_llama_ref: wrote %d x %d logits to %s\n", rows, n_vocab,
          out_path.c_str());
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}

llama_token Argmax(const float* row, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i) {
    if (row[i] > row[best]) best = i;
  }
  return best;
}

int Generate(const Args& args) {
  const std::vector<llama_token> prompt = ReadPromptTokens(args);
  const int n_gen = args.GetInt("-n", args.GetInt("--n", 16));
  const bool ignore_eos = args.Has("--ignore-eos");
  llama_model* model = LoadModel(args.Get("--model"), /*vocab_only=*/false);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  CheckTokens(vocab, prompt);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  llama_context* ctx = MakeContext(model, static_cast<int>(prompt.size()) + n_gen,
                                   args.GetInt("--threads", 1));

  std::vector<llama_token> generated;
  Decode(ctx, prompt, 0, /*all=*/false);
  int pos = static_cast<int>(prompt.size());
  for (int step = 0; step < n_gen; ++step) {
    const llama_token next = Argmax(llama_get_logits_ith(ctx, -1), n_vocab);
    if (!ignore_eos && llama_vocab_is_eog(vocab, next)) break;
    generated.push_back(next);
    if (step + 1 < n_gen) Decode(ctx, {next}, pos++, /*all=*/false);
  }
  for (size_t i = 0; i < generated.size(); ++i) printf(i ? " %d" : "%d", generated[i]);
  printf("\n");
  if (args.Has("--print-text")) {
    std::vector<char> text(generated.size() * 64 + 64);
    int32_t n = llama_detokenize(vocab, generated.data(), static_cast<int32_t>(generated.size()),
                                 text.data(), static_cast<int32_t>(text.size()),
                                 /*remove_special=*/false, /*unparse_special=*/false);
    if (n < 0) Die("detokenize failed");
    printf("%.*s\n", n, text.data());
  }
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}

// Prints how many tensors of each type a GGUF holds: K-quant files of small
// models mix in fallback types (q5_0, q8_0, f16) for rows not divisible by 256.
void PrintTensorTypes(const std::string& path) {
  gguf_init_params params = {/*no_alloc=*/true, /*ctx=*/nullptr};
  gguf_context* gguf = gguf_init_from_file(path.c_str(), params);
  if (!gguf) Die("cannot read back " + path);
  std::map<std::string, int> counts;
  for (int64_t i = 0; i < gguf_get_n_tensors(gguf); ++i) {
    ++counts[ggml_type_name(gguf_get_tensor_type(gguf, i))];
  }
  gguf_free(gguf);
  std::string summary;
  for (const auto& [name, n] : counts) {
    summary += (summary.empty() ? "" : ", ") + name + " x" + std::to_string(n);
  }
  printf("tensor types: %s\n", summary.c_str());
}

int Quantize(const Args& args) {
  static const std::map<std::string, llama_ftype> kTypes = {
      {"f16", LLAMA_FTYPE_MOSTLY_F16},    {"q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},
      {"q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},  {"q4_k", LLAMA_FTYPE_MOSTLY_Q4_K_M},
      {"q5_k", LLAMA_FTYPE_MOSTLY_Q5_K_M}, {"q6_k", LLAMA_FTYPE_MOSTLY_Q6_K},
  };
  std::string type = args.Get("--type");
  std::transform(type.begin(), type.end(), type.begin(), ::tolower);
  auto it = kTypes.find(type);
  if (it == kTypes.end()) Die("unknown --type " + type + " (q8_0|q4_0|q4_k|q5_k|q6_k|f16)");
  llama_model_quantize_params params = llama_model_quantize_default_params();
  params.ftype = it->second;
  params.nthread = args.GetInt("--threads", 1);
  const std::string in = args.Get("--in");
  const std::string out = args.Get("--out");
  // llama.cpp reports per-tensor choices (and K-quant fallbacks for rows that
  // are not a multiple of 256) through its log; show them unless asked not to.
  if (!args.Has("--quiet")) g_verbose = true;
  const uint32_t rc = llama_model_quantize(in.c_str(), out.c_str(), &params);
  g_verbose = false;
  if (rc != 0) Die("llama_model_quantize failed (" + std::to_string(rc) + ")");
  fprintf(stderr, "mesa_llama_ref: quantized %s -> %s as %s\n", in.c_str(), out.c_str(),
          type.c_str());
  PrintTensorTypes(out);
  return 0;
}

void Usage() {
  fprintf(stderr,
          "usage: mesa_llama_ref tokenize --model M --text T [--no-bos] [--parse-special]\n"
          "       mesa_llama_ref logits --model M (--tokens 1,2,3 | --tokens-file F) "
          "--out FILE [--all] [--threads N]\n"
          "       mesa_llama_ref generate --model M (--tokens ... | --tokens-file F) -n N "
          "[--ignore-eos] [--print-text] [--threads N]\n"
          "       mesa_llama_ref quantize --in F --out G --type q8_0|q4_0|q4_k|q5_k|q6_k|f16 "
          "[--threads N] [--quiet]\n"
          "common: --verbose (llama.cpp log to stderr)\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    Usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const Args args(argc, argv,
                  {"--no-bos", "--parse-special", "--all", "--ignore-eos", "--print-text",
                   "--verbose", "--quiet"});
  g_verbose = args.Has("--verbose");
  llama_log_set(LogCallback, nullptr);
  LoadBackends();
  llama_backend_init();
  int rc = 2;
  if (command == "tokenize") {
    rc = Tokenize(args);
  } else if (command == "logits") {
    rc = Logits(args);
  } else if (command == "generate") {
    rc = Generate(args);
  } else if (command == "quantize") {
    rc = Quantize(args);
  } else {
    Usage();
  }
  llama_backend_free();
  return rc;
}
