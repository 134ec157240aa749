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
#include "kernels/profiling_backend.h"
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
  bool json = false, profile = false;
  LongContextFlags lc;
};

// The profile of the timed repetitions, per phase and op, per repetition: JSON, and the
// text table `mesa bench --profile` prints.
nlohmann::json ProfileJson(const ProfilingBackend& prof, const double wall[2], int reps) {
  nlohmann::json out;
  const char* phase_names[2] = {"prefill", "decode"};
  for (int ph = 0; ph < ProfilingBackend::kPhases; ++ph) {
    nlohmann::json ops = nlohmann::json::object();
    for (int i = 0; i < ProfilingBackend::kOps; ++i) {
      const auto op = static_cast<ProfilingBackend::Op>(i);
      const ProfilingBackend::Stats& st = prof.stats(ph, op);
      if (st.calls == 0) continue;
      nlohmann::json o = {{"calls", st.calls / reps}, {"seconds", st.seconds / reps}};
      if (st.seconds > 0 && st.flops > 0) o["gflop_per_s"] = st.flops / st.seconds / 1e9;
      if (st.seconds > 0 && st.bytes > 0) o["gbyte_per_s"] = st.bytes / st.seconds / 1e9;
      ops[ProfilingBackend::OpName(op)] = o;
    }
    out[phase_names[ph]] = {{"wall_seconds", wall[ph] / reps},
                            {"op_seconds", prof.OpSeconds(ph) / reps},
                            {"ops", ops}};
  }
  return out;
}

void PrintProfile(const nlohmann::json& profile) {
  for (const char* phase : {"prefill", "decode"}) {
    const nlohmann::json& ph = profile[phase];
    const double wall = ph["wall_seconds"].get<double>();
    if (wall <= 0) continue;
    std::printf("\n%s: %.4f s per repetition (ops %.4f s, outside the ops %.4f s)\n", phase, wall,
                ph["op_seconds"].get<double>(), wall - ph["op_seconds"].get<double>());
    std::printf("  %-12s %8s %10s %7s %11s %10s\n", "op", "calls", "seconds", "share", "GFLOP/s", "GB/s");
    for (int i = 0; i < ProfilingBackend::kOps; ++i) {  // in the enum's order, not the JSON's
      const std::string name = ProfilingBackend::OpName(static_cast<ProfilingBackend::Op>(i));
      if (!ph["ops"].contains(name)) continue;
      const nlohmann::json& o = ph["ops"][name];
      const double sec = o["seconds"].get<double>();
      std::printf("  %-12s %8lld %10.4f %6.1f%% ", name.c_str(), static_cast<long long>(o["calls"].get<int64_t>()),
                  sec, 100.0 * sec / wall);
      if (o.contains("gflop_per_s")) {
        std::printf("%11.1f ", o["gflop_per_s"].get<double>());
      } else {
        std::printf("%11s ", "-");
      }
      if (o.contains("gbyte_per_s")) {
        std::printf("%10.2f\n", o["gbyte_per_s"].get<double>());
      } else {
        std::printf("%10s\n", "-");
      }
    }
  }
}

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
  // --profile: every op goes through the timing wrapper (on the CPU a clock read per op).
  std::unique_ptr<ProfilingBackend> prof;
  if (a.profile) prof = std::make_unique<ProfilingBackend>(**backend);
  Backend& run_on = prof ? static_cast<Backend&>(*prof) : **backend;
  LongContextRunner runner(model, run_on, *lc_options);
  GenerateOptions opts;
  opts.max_new_tokens = a.gen_tokens + 1;  // the first token comes from the prefill
  opts.stop_at_eos = false;
  // The first token ends the prefill: later ops count as decode.
  if (prof) opts.on_token = [&prof](int32_t) { prof->SetPhase(1); return true; };
  std::vector<double> prefill, decode;
  {  // warm-up: page in the weights, size the buffers
    GenerateOptions w = opts;
    w.max_new_tokens = std::min<int64_t>(2, opts.max_new_tokens);
    auto r = GenerateLong(runner, absl::MakeSpan(prompt).subspan(0, std::min<size_t>(prompt.size(), 8)), w);
    if (!r.ok()) return Fail(r.status());
  }
  nlohmann::json attention;
  if (prof) prof->Reset();
  double wall[2] = {0, 0};
  for (int rep = 0; rep < std::max(1, a.reps); ++rep) {
    if (prof) prof->SetPhase(0);
    auto r = GenerateLong(runner, prompt, opts);
    if (!r.ok()) return Fail(r.status());
    prefill.push_back(r->generation.prefill_tokens_per_s());
    if (a.gen_tokens > 0) decode.push_back(r->generation.decode_tokens_per_s());
    wall[0] += r->generation.prefill_seconds;
    wall[1] += r->generation.decode_seconds;
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
  if (prof) j["profile"] = ProfileJson(*prof, wall, std::max(1, a.reps));
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
    if (prof) PrintProfile(j["profile"]);
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
  cmd->add_flag("--profile", a->profile,
                "Also time every op of the forward pass and print, per phase (prefill, decode) and per "
                "repetition, the seconds, share of the phase, GFLOP/s and GB/s of each kind of op (matmul, "
                "attention, norm, rope, ...); JSON: \"profile\". On a GPU every op is synchronized, which "
                "slows the run: read the shares");
  cmd->callback([a] { ExitCode() = RunBench(*a); });
}

}  // namespace mesa::cli
