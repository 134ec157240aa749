// `mesa eval ppl` and `mesa eval passkey`: the paper's length-extrapolation evaluations
// (MESA_SPEC section 6) on one model, comparing attention methods. Tables go to stdout
// (or a JSON list with --json), progress to stderr, plots to PNG through gnuplot.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/cli/attention_flags.h"
#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "client/cli/eval_plot.h"
#include "client/cli/device_flags.h"
#include "jobs/eval_common.h"
#include "jobs/eval_passkey.h"
#include "jobs/eval_ppl.h"
#include "nlohmann/json.hpp"

namespace mesa::cli {
namespace {

// Flags shared by both evaluations.
struct EvalArgs {
  std::string model, lengths, attention = "full,mesa", plot;
  LongContextFlags long_context;
  int threads = 0;
  DeviceFlags device;
  bool json = false;
};

void AddEvalFlags(CLI::App* cmd, EvalArgs* a, const std::string& lengths_help) {
  cmd->add_option("--model,-m", a->model, "GGUF file or Hugging Face model directory")->required();
  cmd->add_option("--lengths", a->lengths, lengths_help)->required();
  cmd->add_option("--threads", a->threads, "CPU threads (default: all hardware threads)")
      ->check(CLI::NonNegativeNumber);
  AddDeviceFlags(cmd, &a->device);
  cmd->add_flag("--json", a->json, "Print a JSON list instead of the table");
  cmd->add_option("--plot", a->plot, "Also write a PNG plot here (needs gnuplot; the data and the "
                                     "gnuplot script are written beside it as .dat and .gp)");
  AddLongContextFlags(cmd, &a->long_context);
  // Evaluations compare methods: --attention takes a list here.
  cmd->remove_option(cmd->get_option("--attention"));
  cmd->add_option("--attention", a->attention,
                  "Comma-separated attention methods to compare: full (the original model), mesa, "
                  "self-extend, rerope, auto")
      ->capture_default_str()
      ->group("Long context");
}

struct Setup {
  std::unique_ptr<Model> model;
  std::vector<int64_t> lengths;
  std::vector<AttentionMethod> methods;
  LongContextOptions base;
  int64_t train_length = 0;
};

absl::StatusOr<Setup> Prepare(const EvalArgs& a) {
  Setup s;
  auto lengths = ParseLengthList(a.lengths);
  if (!lengths.ok()) return absl::InvalidArgumentError(absl::StrCat("--lengths: ", lengths.status().message()));
  s.lengths = *std::move(lengths);
  auto methods = ParseAttentionList(a.attention);
  if (!methods.ok()) return absl::InvalidArgumentError(absl::StrCat("--attention: ", methods.status().message()));
  s.methods = *std::move(methods);
  LongContextFlags flags = a.long_context;
  flags.attention = "auto";  // the list above picks the method of each run
  auto base = ToLongContextOptions(flags);
  if (!base.ok()) return base.status();
  s.base = *std::move(base);
  if (!a.plot.empty()) {
    if (absl::Status st = CheckGnuplot(); !st.ok()) return st;
  }
  auto model = LoadModelForCli(a.model, /*compute=*/true, a.device.device);
  if (!model.ok()) return model.status();
  s.model = *std::move(model);
  s.train_length = s.base.mesa.train_length > 0 ? s.base.mesa.train_length : s.model->config.context_length;
  return s;
}

PlotSpec BasePlot(const Setup& s, const std::string& what) {
  PlotSpec p;
  const std::string name = std::filesystem::path(s.model->source_path).filename().string();
  p.title = absl::StrCat(what, ": ", name, " (trained length ", s.train_length, ")");
  p.x_label = "input length (tokens)";
  if (s.train_length > 0) {
    p.marker_x = static_cast<double>(s.train_length);
    p.marker_label = absl::StrCat("T = ", s.train_length);
  }
  return p;
}

// ---------------------------------------------------------------- ppl
struct PplArgs : EvalArgs {
  std::string text, tokens_file, scope = "all";
  int64_t windows = 1;
  bool ascii_only = false;
};

int RunPpl(const PplArgs& a) {
  auto setup_or = Prepare(a);
  if (!setup_or.ok()) return Fail(setup_or.status());
  Setup& s = *setup_or;
  auto scope = ParsePplScope(a.scope);
  if (!scope.ok()) return Fail(scope.status());
  std::vector<int32_t> stream;
  PplOptions options;
  std::string source;
  if (!a.text.empty()) {
    if (!s.model->tokenizer) return Fail(absl::FailedPreconditionError("the model has no tokenizer: use --tokens-file"));
    auto text = ReadTextFile(a.text);
    if (!text.ok()) return Fail(text.status());
    if (a.ascii_only) {
      std::erase_if(*text, [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
    }
    auto ids = s.model->tokenizer->Encode(*text, {});
    if (!ids.ok()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "cannot tokenize '", a.text, "' with the model's tokenizer: ", ids.status().message(),
          a.ascii_only ? "" : " (--ascii-only drops non-ASCII bytes first)")));
    }
    stream = *std::move(ids);
    // Every window starts with BOS, as llama-perplexity does, when the model uses one.
    const int32_t bos = s.model->tokenizer->bos_id();
    if (bos >= 0 && !stream.empty() && stream[0] == bos) options.window_bos = bos;
    source = a.text;
  } else {
    auto ids = ReadTokenFile(a.tokens_file);
    if (!ids.ok()) return Fail(ids.status());
    stream = *std::move(ids);
    source = a.tokens_file;
  }
  for (int32_t id : stream) {
    if (id < 0 || id >= s.model->config.n_vocab) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          source, ": token id ", id, " is outside the model's vocabulary (", s.model->config.n_vocab, " ids)")));
    }
  }
  options.lengths = s.lengths;
  options.methods = s.methods;
  options.base = s.base;
  options.scope = *scope;
  options.windows = a.windows;
  options.on_point = [](const PplPoint& p) {
    std::fprintf(stderr, "[ppl] length %lld %-11s ppl %10.4f  (%lld tokens scored, %.2f s)\n",
                 static_cast<long long>(p.length), AttentionMethodName(p.method), p.ppl,
                 static_cast<long long>(p.scored_tokens), p.seconds);
  };
  auto backend = OpenDevice(a.device, a.threads);
  if (!backend.ok()) return Fail(backend.status());
  auto points = RunPerplexityEval(*s.model, **backend, stream, options);
  if (!points.ok()) return Fail(points.status());
  if (a.json) {
    nlohmann::json list = nlohmann::json::array();
    for (const PplPoint& p : *points) list.push_back(p.ToJson(*scope));
    std::cout << list.dump() << "\n";
  } else {
    std::printf("# perplexity: %s, trained length %lld, %s (%zu tokens)\n", s.model->source_path.c_str(),
                static_cast<long long>(s.train_length), source.c_str(), stream.size());
    std::printf("# scope: %s; %lld window(s) per length%s\n", PplScopeDescription(*scope),
                static_cast<long long>(a.windows), options.window_bos >= 0 ? ", each starting with BOS" : "");
    std::cout << FormatPplTable(*points);
  }
  if (!a.plot.empty()) {
    PlotSpec plot = BasePlot(s, absl::StrCat("Perplexity (", PplScopeName(*scope), ")"));
    plot.y_label = "perplexity (log scale)";
    plot.log_y = true;
    for (AttentionMethod m : s.methods) {
      PlotSeries series{AttentionMethodName(m), {}, {}};
      for (const PplPoint& p : *points) {
        if (p.method != m) continue;
        series.x.push_back(static_cast<double>(p.length));
        series.y.push_back(p.ppl);
      }
      plot.series.push_back(std::move(series));
    }
    if (absl::Status st = WritePngPlot(plot, a.plot); !st.ok()) return Fail(st);
    std::fprintf(stderr, "wrote %s\n", a.plot.c_str());
  }
  return 0;
}

// ---------------------------------------------------------------- passkey
struct PasskeyArgs : EvalArgs {
  int64_t samples = 5, max_new = 10;
  uint64_t seed = 1;
  std::string filler = "classic";
  bool no_task = false;
};

int RunPasskey(const PasskeyArgs& a) {
  auto setup_or = Prepare(a);
  if (!setup_or.ok()) return Fail(setup_or.status());
  Setup& s = *setup_or;
  if (!s.model->tokenizer) return Fail(absl::FailedPreconditionError("the model has no tokenizer"));
  PasskeyFiller filler = PasskeyFiller::Classic();
  if (a.filler != "classic") {
    auto text = ReadTextFile(a.filler);
    if (!text.ok()) return Fail(text.status());
    auto f = PasskeyFiller::FromText(*text, a.filler);
    if (!f.ok()) return Fail(f.status());
    filler = *std::move(f);
  }
  PasskeyOptions options;
  options.lengths = s.lengths;
  options.methods = s.methods;
  options.base = s.base;
  options.samples = a.samples;
  options.seed = a.seed;
  options.max_new_tokens = a.max_new;
  options.prompt.task_description = !a.no_task;
  options.on_trial = [](const PasskeyTrial& t) {
    std::fprintf(stderr, "[passkey] length %lld sample %lld %-11s key %lld depth %.2f: %s  answer \"%s\"\n",
                 static_cast<long long>(t.length), static_cast<long long>(t.sample),
                 AttentionMethodName(t.method), static_cast<long long>(t.key), t.depth,
                 t.hit ? "hit " : "miss", absl::CHexEscape(t.answer).c_str());
  };
  auto backend = OpenDevice(a.device, a.threads);
  if (!backend.ok()) return Fail(backend.status());
  auto points = RunPasskeyEval(*s.model, **backend, filler, options);
  if (!points.ok()) return Fail(points.status());
  if (a.json) {
    nlohmann::json list = nlohmann::json::array();
    for (const PasskeyPoint& p : *points) list.push_back(p.ToJson());
    std::cout << list.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::printf("# passkey accuracy: %s, trained length %lld, filler %s, %lld sample(s) per length, seed %llu\n",
                s.model->source_path.c_str(), static_cast<long long>(s.train_length), filler.name().c_str(),
                static_cast<long long>(a.samples), static_cast<unsigned long long>(a.seed));
    std::cout << FormatPasskeyTable(*points);
  }
  if (!a.plot.empty()) {
    PlotSpec plot = BasePlot(s, "Passkey retrieval accuracy");
    plot.y_label = "accuracy";
    plot.y_min = -0.05;
    plot.y_max = 1.05;
    for (AttentionMethod m : s.methods) {
      PlotSeries series{AttentionMethodName(m), {}, {}};
      for (const PasskeyPoint& p : *points) {
        if (p.method != m) continue;
        series.x.push_back(static_cast<double>(p.length));
        series.y.push_back(p.accuracy());
      }
      plot.series.push_back(std::move(series));
    }
    if (absl::Status st = WritePngPlot(plot, a.plot); !st.ok()) return Fail(st);
    std::fprintf(stderr, "wrote %s\n", a.plot.c_str());
  }
  return 0;
}

}  // namespace

void RegisterEval(CLI::App& app) {
  CLI::App* eval = app.add_subcommand("eval", "Length-extrapolation evaluations: perplexity and passkey retrieval");
  eval->require_subcommand(1);

  auto p = std::make_shared<PplArgs>();
  CLI::App* ppl = eval->add_subcommand("ppl", "Perplexity against input length, one column per attention method");
  AddEvalFlags(ppl, p.get(), "Window lengths in tokens, e.g. 512,1k,2k,4k (k = 1024)");
  auto* text = ppl->add_option("--text", p->text, "Text file, tokenized with the model's tokenizer (BOS as the model wants)");
  auto* tokens = ppl->add_option("--tokens-file", p->tokens_file, "File of token ids (whitespace or commas), used as given");
  text->excludes(tokens);
  ppl->add_option("--scope", p->scope,
                  "Tokens scored in each window: all (ppl of tokens 1..L-1) or second-half "
                  "(llama-perplexity's convention, as in TESTDATA.md)")
      ->check(CLI::IsMember({"all", "second-half"}))
      ->capture_default_str();
  ppl->add_option("--windows", p->windows, "Consecutive windows per length; the ppl is over all of them")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  ppl->add_flag("--ascii-only", p->ascii_only, "Drop non-ASCII bytes from --text before tokenizing");
  ppl->callback([p, text, tokens] {
    if (text->count() == 0 && tokens->count() == 0) {
      ExitCode() = Fail(absl::InvalidArgumentError("give --text or --tokens-file"));
      return;
    }
    ExitCode() = RunPpl(*p);
  });

  auto k = std::make_shared<PasskeyArgs>();
  CLI::App* passkey = eval->add_subcommand("passkey", "Passkey retrieval accuracy against input length");
  AddEvalFlags(passkey, k.get(), "Prompt lengths in tokens, e.g. 512,1k,2k (k = 1024)");
  passkey->add_option("--samples", k->samples, "Prompts per length (random key and depth)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  passkey->add_option("--seed", k->seed, "Seed of the keys, depths and filler offsets")->capture_default_str();
  passkey->add_option("--filler", k->filler,
                      "classic (\"The grass is green. ...\" repeated) or a text file read from a random "
                      "sentence on (e.g. TinyStories text for the TinyStories models)")
      ->capture_default_str();
  passkey->add_option("--max-new", k->max_new, "Tokens decoded greedily for the answer")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  passkey->add_flag("--no-task-description", k->no_task, "Leave out the opening instruction line");
  passkey->callback([k] { ExitCode() = RunPasskey(*k); });
}

}  // namespace mesa::cli
