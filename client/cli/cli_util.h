// Small helpers shared by the CLI commands: error reporting, token-list parsing,
// model loading with a clear message, process memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model.h"
#include "engine/model_loader.h"

namespace mesa::cli {

// Prints "mesa: error: <message>" to stderr and returns exit code 1.
int Fail(const absl::Status& status);

// "1,2,3" or "1 2 3" (any mix of commas and whitespace) -> ids. Rejects anything else.
absl::StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& text);
absl::StatusOr<std::vector<int32_t>> ReadTokenFile(const std::string& path);
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// The global --weights choice (main.cc), used by LoadModelForCli.
LoadOptions::WeightMemory& WeightMemoryChoice();
// Loads a model, naming the path in errors. `compute`: the command runs the model (the
// --weights choice applies); false: it only reads metadata or the tokenizer (weights
// stay mapped, nothing is copied). `device` (--device): off the CPU, weights stay
// mapped unless --weights says otherwise (the GPU uploads its own copy).
absl::StatusOr<std::unique_ptr<Model>> LoadModelForCli(const std::string& path, bool compute = true,
                                                       const std::string& device = "cpu");

// Peak resident set size of this process in bytes.
int64_t PeakRssBytes();

}  // namespace mesa::cli
