// The `mesa` command-line tool.
#include <iostream>

#include "client/cli/commands.h"

namespace mesa::cli {
int& ExitCode() {
  static int code = 0;
  return code;
}
}  // namespace mesa::cli

int main(int argc, char** argv) {
  CLI::App app{
      "Mesa: run language models on documents far longer than they were trained for.\n"
      "Models are GGUF files (or Hugging Face directories); see `mesa COMMAND --help`."};
  app.require_subcommand(1);
  mesa::cli::RegisterInfo(app);
  mesa::cli::RegisterTokenize(app);
  mesa::cli::RegisterGenerate(app);
  mesa::cli::RegisterLogits(app);
  mesa::cli::RegisterBench(app);
  mesa::cli::RegisterPlan(app);
  mesa::cli::RegisterRun(app);
  mesa::cli::RegisterEval(app);
  CLI11_PARSE(app, argc, argv);
  return mesa::cli::ExitCode();
}
