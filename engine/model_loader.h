// Model loading internals beyond engine/model.h: options (tests can load weights
// without a tokenizer) and the config readers, exposed for tests and tools.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "engine/model_config.h"

namespace mesa {

class GgufFile;

struct LoadOptions {
  // Build the tokenizer from the file (GGUF metadata or tokenizer.json). Off: the
  // model's `tokenizer` stays null (weights-only tests, benchmarks).
  bool load_tokenizer = true;
  // Where the matrices the forward pass multiplies with live.
  enum class WeightMemory {
    // kOwn when they take at most half of the memory available at load, else kMapped.
    kAuto,
    // Copied once at load into the process's own memory (transparent huge pages), in
    // the packed layout of this CPU's kernels where one exists (cpu::PackWeights:
    // Q8_0, Q4_K, Q5_K and Q6_K on AVX-512 VNNI). Fastest; the file's pages are released.
    kOwn,
    // Read in place from the file's memory map: no copy, no packing (models larger
    // than memory; tests compare the two).
    kMapped,
  };
  WeightMemory weight_memory = WeightMemory::kAuto;
  // Config, chat template and tokenizer only (commands that tokenize or plan): no
  // tensor is read or required, so a vocab-only GGUF loads. The model's weights stay
  // empty (it cannot run) and n_vocab is the tokenizer's vocabulary size for a GGUF,
  // config.json's vocab_size for a Hugging Face directory. Implies load_tokenizer.
  bool tokenizer_only = false;
};

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path, const LoadOptions& options);
absl::StatusOr<std::unique_ptr<Model>> LoadGgufModel(const std::string& path,
                                                     const LoadOptions& options);
absl::StatusOr<std::unique_ptr<Model>> LoadHfModel(const std::string& dir, const LoadOptions& options);

// Hyperparameters from GGUF metadata (`<arch>.*` keys). n_vocab is left 0: the loader
// takes it from the token embedding's shape.
absl::StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& file);
// Hyperparameters from the text of a Hugging Face config.json; `origin` names it in errors.
absl::StatusOr<ModelConfig> ConfigFromHfJson(const std::string& json_text, const std::string& origin);

// Checks the invariants the forward pass relies on (positive sizes, GQA divisibility,
// rope dims, sane upper bounds).
absl::Status ValidateConfig(const ModelConfig& config, const std::string& origin);

}  // namespace mesa
