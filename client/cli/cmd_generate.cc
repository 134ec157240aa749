// Commands that run the model: `mesa generate`, `mesa logits`, `mesa bench`.
#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>

#include "absl/strings/str_cat.h"
#include "client/cli/attention_flags.h"
#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "client/cli/device_flags.h"
#include "kernels/cpu/cpu_backend.h"
#include "engine/generate.h"
#include "engine/long_context.h"
#include "jobs/batch_runner.h"
#include "kernels/matmul.h"
#include "nlohmann/json.hpp"

namespace mesa::cli {
namespace {

// CPU threads the backend computes with (0 for a GPU backend).
int ThreadCount(Backend& backend) {
  auto* cpu = dynamic_cast<CpuBackend*>(&backend);
  return cpu ? cpu->pool().size() : 0;
}

void AddThreads(CLI::App* cmd, int* threads, DeviceFlags* device) {
  cmd->add_option("--threads", *threads, "CPU threads (default: all hardware threads)")
      ->check(CLI::NonNegativeNumber);
  AddDeviceFlags(cmd, device);
}

// ---------------------------------------------------------------- generate
struct GenerateArgs {
  std::string model, prompt, tokens;
  int64_t n = 64;
  float temperature = 0.0f, top_p = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  int threads = 0;
  DeviceFlags device;
  bool json = false, ignore_eos = false;
  LongContextFlags lc;
};

int RunGenerate(const GenerateArgs& a, bool have_prompt) {
  auto model_or = LoadModelForCli(a.model, /*compute=*/true, a.device.device);
  if (!model_or.ok()) return Fail(model_or.status());
  const Model& model = **model_or;
  std::vector<int32_t> prompt;
  if (have_prompt) {
    if (!model.tokenizer) return Fail(absl::FailedPreconditionError("the model has no tokenizer: use --tokens"));
    auto ids = model.tokenizer->Encode(a.prompt, {});
    if (!ids.ok()) return Fail(ids.status());
    prompt = *std::move(ids);
  } else {
    auto ids = ParseTokenList(a.tokens);
    if (!ids.ok()) return Fail(ids.status());
    prompt = *std::move(ids);
  }
  if (prompt.empty()) return Fail(absl::InvalidArgumentError("the prompt is empty"));
  auto lc_options = ToLongContextOptions(a.lc);
  if (!lc_options.ok()) return Fail(lc_options.status());
  auto backend = OpenDevice(a.device, a.threads);
  if (!backend.ok()) return Fail(backend.status());
  LongContextRunner runner(model, **backend, *lc_options);
  GenerateOptions opts;
  opts.max_new_tokens = a.n;
  opts.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  opts.stop_at_eos = !a.ignore_eos;
  const Tokenizer* tok = model.tokenizer.get();
  // Stream text as it is generated (decoding the whole continuation each time keeps
  // multi-byte characters split across byte tokens intact).
  std::vector<int32_t> generated;
  size_t printed = 0;
  auto continuation = [&](const std::vector<int32_t>& gen) -> std::string {
    return tok ? jobs::DecodeContinuation(*tok, prompt, gen) : "";
  };
  if (!a.json && tok) {
    std::cout << tok->Decode(prompt) << std::flush;
    opts.on_token = [&](int32_t id) {
      generated.push_back(id);
      std::string text = continuation(generated);
      // Hold back an incomplete UTF-8 tail until its last byte arrives.
      size_t end = text.size();
      while (end > printed && (static_cast<unsigned char>(text[end - 1]) & 0xC0) == 0x80) --end;
      if (end > printed && static_cast<unsigned char>(text[end - 1]) >= 0xC0) --end;
      if (end > printed) {
        std::cout << text.substr(printed, end - printed) << std::flush;
        printed = end;
      }
      return true;
    };
  }
  auto long_result = GenerateLong(runner, prompt, opts);
  if (!long_result.ok()) return Fail(long_result.status());
  const GenerateResult* r = &long_result->generation;
  if (a.json) {
    nlohmann::json j = {{"tokens", r->tokens},
                        {"text", continuation(r->tokens)},
                        {"prompt_tokens", r->prompt_tokens},
                        {"stop_reason", r->stop_reason},
                        {"prefill_tokens_per_s", r->prefill_tokens_per_s()},
                        {"decode_tokens_per_s", r->decode_tokens_per_s()},
                        {"attention", long_result->prefill.ToJson()}};
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::string text = continuation(r->tokens);
    if (text.size() > printed) std::cout << text.substr(printed);
    std::cout << std::endl;
    const PrefillInfo& info = long_result->prefill;
    std::string how = AttentionMethodName(info.method);
    if (info.method == AttentionMethod::kMesa) {
      how += info.plan.chunked ? absl::StrCat(", ", info.plan.middle.size(), " middle chunks")
                               : ", fits: plain attention";
    }
    std::fprintf(stderr, "[%zu prompt tokens (%s): %.1f tok/s prefill; %zu generated: %.1f tok/s decode; stop: %s]\n",
                 prompt.size(), how.c_str(), r->prefill_tokens_per_s(), r->tokens.size(),
                 r->decode_tokens_per_s(), r->stop_reason.c_str());
  }
  return 0;
}

// ---------------------------------------------------------------- logits
struct LogitsArgs {
  std::string model, tokens, tokens_file, out;
  int64_t max_tokens = 0, max_new = 0;
  bool all = false;
  int threads = 0;
  DeviceFlags device;
  LongContextFlags lc;
};

int RunLogits(const LogitsArgs& a) {
  auto ids_or = a.tokens_file.empty() ? ParseTokenList(a.tokens) : ReadTokenFile(a.tokens_file);
  if (!ids_or.ok()) return Fail(ids_or.status());
  std::vector<int32_t> ids = *std::move(ids_or);
  if (a.max_tokens > 0 && static_cast<int64_t>(ids.size()) > a.max_tokens) ids.resize(a.max_tokens);
  if (ids.empty()) return Fail(absl::InvalidArgumentError("no token ids given"));
  auto model_or = LoadModelForCli(a.model, /*compute=*/true, a.device.device);
  if (!model_or.ok()) return Fail(model_or.status());
  auto lc_options = ToLongContextOptions(a.lc);
  if (!lc_options.ok()) return Fail(lc_options.status());
  auto backend = OpenDevice(a.device, a.threads);
  if (!backend.ok()) return Fail(backend.status());
  LongContextRunner runner(**model_or, **backend, *lc_options);
  std::vector<float> logits;
  auto info = runner.Prefill(ids, a.max_new, a.all ? LogitsMode::kAll : LogitsMode::kLast, &logits);
  if (!info.ok()) return Fail(info.status());
  std::ofstream out(a.out, std::ios::binary);
  // Little-endian float32 rows: x86-64 and every platform we build for are little-endian.
  static_assert(std::endian::native == std::endian::little);
  out.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!out) return Fail(absl::PermissionDeniedError(absl::StrCat("cannot write '", a.out, "'")));
  std::fprintf(stderr, "wrote %zu x %lld logits to %s\n", a.all ? ids.size() : size_t{1},
               static_cast<long long>((*model_or)->config.n_vocab), a.out.c_str());
  return 0;
}

// ---------------------------------------------------------------- bench
struct BenchArgs {
  std::string model;
  int64_t prompt_tokens = 128, gen_tokens = 32;
  int threads = 0, reps = 1;
  DeviceFlags device;
  uint64_t seed = 1;
  bool json = false;
  LongContextFlags lc;
};

int RunBench(const BenchArgs& a) {
  auto model_or = LoadModelForCli(a.model, /*compute=*/true, a.device.device);
  if (!model_or.ok()) return Fail(model_or.status());
  const Model& model = **model_or;
  if (a.prompt_tokens < 1) return Fail(absl::InvalidArgumentError("--prompt-tokens must be >= 1"));
  std::mt19937 rng(static_cast<uint32_t>(a.seed));
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(model.config.n_vocab - 1));
  std::vector<int32_t> prompt(a.prompt_tokens);
  for (auto& t : prompt) t = dist(rng);
  auto lc_options = ToLongContextOptions(a.lc);
  if (!lc_options.ok()) return Fail(lc_options.status());
  auto backend = OpenDevice(a.device, a.threads);
  if (!backend.ok()) return Fail(backend.status());
  LongContextRunner runner(model, **backend, *lc_options);
  GenerateOptions opts;
  opts.max_new_tokens = a.gen_tokens + 1;  // the first token comes from the prefill
  opts.stop_at_eos = false;
  std::vector<double> prefill, decode;
  {  // warm-up: page in the weights, size the buffers
    GenerateOptions w = opts;
    w.max_new_tokens = std::min<int64_t>(2, opts.max_new_tokens);
    auto r = GenerateLong(runner, absl::MakeSpan(prompt).subspan(0, std::min<size_t>(prompt.size(), 8)), w);
    if (!r.ok()) return Fail(r.status());
  }
  nlohmann::json attention;
  for (int rep = 0; rep < std::max(1, a.reps); ++rep) {
    auto r = GenerateLong(runner, prompt, opts);
    if (!r.ok()) return Fail(r.status());
    prefill.push_back(r->generation.prefill_tokens_per_s());
    if (a.gen_tokens > 0) decode.push_back(r->generation.decode_tokens_per_s());
    attention = r->prefill.ToJson();
  }
  auto median = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  nlohmann::json j = {{"prefill_tokens_per_s", median(prefill)},
                      {"decode_tokens_per_s", median(decode)},
                      {"peak_rss_bytes", PeakRssBytes()},
                      {"peak_device_bytes", (*backend)->PeakMemoryBytes()},
                      {"prompt_tokens", a.prompt_tokens},
                      {"gen_tokens", a.gen_tokens},
                      {"threads", ThreadCount(**backend)},
                      {"device", (*backend)->Name()},
                      {"repetitions", std::max(1, a.reps)},
                      {"weights", model.weights_in_own_memory ? "own" : "mapped"},
                      {"cpu_isa", cpu::ActiveIsaName()},
                      {"attention", attention}};
  if (a.json) {
    std::cout << j.dump() << "\n";
  } else {
    std::printf("prefill: %.1f tokens/s (%lld tokens)\ndecode:  %.1f tokens/s (%lld tokens)\npeak RSS: %.1f MiB\n"
                "CPU kernels: %s\n",
                median(prefill), static_cast<long long>(a.prompt_tokens), median(decode),
                static_cast<long long>(a.gen_tokens), PeakRssBytes() / 1048576.0, cpu::ActiveIsaName());
    if ((*backend)->PeakMemoryBytes() > 0) {
      std::printf("peak device memory: %.1f MiB (%s)\n", (*backend)->PeakMemoryBytes() / 1048576.0,
                  (*backend)->Name().c_str());
    }
  }
  return 0;
}

}  // namespace

void RegisterGenerate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt (greedy by default)");
  cmd->add_option("--model,-m", a->model, "GGUF file or Hugging Face model directory")->required();
  auto* prompt = cmd->add_option("--prompt,-p", a->prompt, "Prompt text (tokenized with the model's tokenizer, BOS as the model wants)");
  auto* tokens = cmd->add_option("--tokens", a->tokens, "Prompt as token ids, e.g. 1,2,3 (used as given, no BOS added)");
  prompt->excludes(tokens);
  cmd->add_option("-n,--max-new", a->n, "Tokens to generate at most")->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", a->temperature, "Sampling temperature; 0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", a->top_k, "Keep the k most likely tokens (0 = off)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", a->top_p, "Nucleus sampling threshold (1 = off)")->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", a->seed, "Random seed for sampling");
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Keep generating past the end-of-sequence token");
  AddThreads(cmd, &a->threads, &a->device);
  AddLongContextFlags(cmd, &a->lc);
  cmd->add_flag("--json", a->json, "Print {\"tokens\", \"text\", \"prefill_tokens_per_s\", \"decode_tokens_per_s\"}");
  cmd->callback([a, prompt, tokens] {
    if (prompt->count() == 0 && tokens->count() == 0) {
      ExitCode() = Fail(absl::InvalidArgumentError("give --prompt or --tokens"));
      return;
    }
    ExitCode() = RunGenerate(*a, prompt->count() > 0);
  });
}

void RegisterLogits(CLI::App& app) {
  auto a = std::make_shared<LogitsArgs>();
  CLI::App* cmd = app.add_subcommand("logits", "Write the logits of a token sequence as little-endian float32");
  cmd->add_option("--model,-m", a->model, "GGUF file or Hugging Face model directory")->required();
  auto* tokens = cmd->add_option("--tokens", a->tokens, "Token ids, e.g. 1,2,3 (used as given, no BOS added)");
  auto* file = cmd->add_option("--tokens-file", a->tokens_file, "File of whitespace- or comma-separated ids");
  tokens->excludes(file);
  cmd->add_option("--max-tokens", a->max_tokens, "Use only the first K ids")->check(CLI::NonNegativeNumber);
  cmd->add_option("--out,-o", a->out, "Output file: row-major rows of n_vocab floats")->required();
  cmd->add_flag("--all", a->all, "Write every token's logits (default: the last token's only)");
  cmd->add_option("--max-new", a->max_new, "Tokens the plan leaves room for after the prompt (mesa)")
      ->check(CLI::NonNegativeNumber);
  AddThreads(cmd, &a->threads, &a->device);
  AddLongContextFlags(cmd, &a->lc);
  cmd->callback([a, tokens, file] {
    if (tokens->count() == 0 && file->count() == 0) {
      ExitCode() = Fail(absl::InvalidArgumentError("give --tokens or --tokens-file"));
      return;
    }
    ExitCode() = RunLogits(*a);
  });
}

void RegisterBench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure prefill and decode speed on random prompt ids");
  cmd->add_option("--model,-m", a->model, "GGUF file or Hugging Face model directory")->required();
  cmd->add_option("--prompt-tokens,-p", a->prompt_tokens, "Prompt length (prefill)")->check(CLI::PositiveNumber);
  cmd->add_option("--gen-tokens,-g", a->gen_tokens, "Tokens to decode (may be 0)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--reps,-r", a->reps, "Repetitions; the median is reported")->check(CLI::PositiveNumber);
  cmd->add_option("--seed", a->seed, "Seed of the random prompt ids");
  AddThreads(cmd, &a->threads, &a->device);
  AddLongContextFlags(cmd, &a->lc);
  cmd->add_flag("--json", a->json, "Print {\"prefill_tokens_per_s\", \"decode_tokens_per_s\", \"peak_rss_bytes\", \"peak_device_bytes\", \"cpu_isa\", ...}");
  cmd->callback([a] { ExitCode() = RunBench(*a); });
}

}  // namespace mesa::cli
