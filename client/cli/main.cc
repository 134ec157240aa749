// The `mesa` command-line tool.
#include <cstdlib>  // defines __GLIBC__ on glibc systems
#include <iostream>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <string>

#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "kernels/matmul.h"

namespace mesa::cli {
int& ExitCode() {
  static int code = 0;
  return code;
}
}  // namespace mesa::cli

int main(int argc, char** argv) {
  // Keep freed buffers (KV caches, activations: a few MB per document) in the heap
  // instead of returning them to the kernel: otherwise each document's buffers are
  // fresh pages that fault and get zeroed again (~5% of a 128-token F16 prefill in
  // perf). Blocks of 32 MiB and more are still mapped and unmapped on their own.
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  // A MESA_CPU_ISA this CPU cannot honour is a usage error before anything runs.
  if (const absl::Status isa = mesa::cpu::CheckIsaSetting(); !isa.ok()) {
    std::cerr << "mesa: " << isa.message() << "\n";
    return 2;
  }
  CLI::App app{
      "Mesa: run language models on documents far longer than they were trained for.\n"
      "Models are GGUF files (or Hugging Face directories); see `mesa COMMAND --help`."};
  app.require_subcommand(1);
  app.fallthrough();  // global options may also follow the command
  std::string weights = "auto";
  app.add_option("--weights", weights,
                 "Where model matrices live: own (copied at load into this process's huge-page "
                 "memory, packed for this CPU's kernels: fastest), mapped (read in place from the "
                 "file's memory map: no copy, for models larger than memory), auto (own when they "
                 "take at most half of the available memory)")
      ->check(CLI::IsMember({"auto", "own", "mapped"}))
      ->each([](const std::string& v) {
        mesa::cli::WeightMemoryChoice() = v == "own"      ? mesa::LoadOptions::WeightMemory::kOwn
                                          : v == "mapped" ? mesa::LoadOptions::WeightMemory::kMapped
                                                          : mesa::LoadOptions::WeightMemory::kAuto;
      });
  mesa::cli::RegisterInfo(app);
  mesa::cli::RegisterTokenize(app);
  mesa::cli::RegisterGenerate(app);
  mesa::cli::RegisterLogits(app);
  mesa::cli::RegisterBench(app);
  mesa::cli::RegisterPlan(app);
  mesa::cli::RegisterRun(app);
  mesa::cli::RegisterEval(app);
  mesa::cli::RegisterClientCommands(app);
  mesa::cli::RegisterClusterCommands(app);
  mesa::cli::RegisterMpiCluster(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error exits 2 (as the commands document).
    return app.exit(e) == 0 ? 0 : 2;
  }
  return mesa::cli::ExitCode();
}
