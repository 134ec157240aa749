// `mesa plan`: prints the Mesa-Extrapolation plan (anchor, middle chunks, last chunk,
// Stair PE parameters and the notes on what was adjusted) for a prompt of a given
// length, without running the model. Useful to choose the long-context flags.
#include <iostream>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/cli/attention_flags.h"
#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "engine/mesa_plan.h"

namespace mesa::cli {
namespace {

struct PlanArgs {
  std::string model;
  int64_t length = 0;
  int64_t max_new = 256;
  bool json = false;
  LongContextFlags lc;
};

int RunPlan(const PlanArgs& a) {
  auto options = ToLongContextOptions(a.lc);
  if (!options.ok()) return Fail(options.status());
  int64_t model_t = 0;
  if (!a.model.empty()) {
    // Its config only: a vocab-only GGUF will do.
    auto model = LoadModel(a.model, LoadOptions{.tokenizer_only = true});
    if (!model.ok()) {
      return Fail(absl::Status(model.status().code(),
                               absl::StrCat("cannot load model '", a.model, "': ", model.status().message())));
    }
    model_t = (*model)->config.context_length;
  } else if (a.lc.train_length == 0) {
    return Fail(absl::InvalidArgumentError("give --model or --train-length"));
  }
  auto plan = PlanMesa(a.length, a.max_new, model_t, options->mesa);
  if (!plan.ok()) return Fail(plan.status());
  if (a.json) {
    std::cout << PlanToJson(*plan).dump() << "\n";
  } else {
    std::cout << PlanToText(*plan);
  }
  return 0;
}

}  // namespace

void RegisterPlan(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Print the Mesa-Extrapolation plan (chunks, Stair PE) for a prompt of N tokens");
  cmd->add_option("--model,-m", a->model,
                  "GGUF file or Hugging Face model directory (for its trained length; optional with "
                  "--train-length)");
  cmd->add_option("--length,-n", a->length, "Prompt length in tokens (after the task template)")
      ->required()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-new", a->max_new, "Tokens to be generated (part of the plan: positions must stay below T)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "Print the plan as one JSON object");
  AddLongContextFlags(cmd, &a->lc);
  cmd->callback([a] { ExitCode() = RunPlan(*a); });
}

}  // namespace mesa::cli
