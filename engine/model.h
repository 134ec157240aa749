// A loaded model: config, weights (views into mapped files or owned buffers) and
// tokenizer. Loaders detect the format: a .gguf file or a Hugging Face directory
// (config.json + *.safetensors + tokenizer.json). Immutable after load: thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"

namespace mesa {

struct Model {
  ModelConfig config;
  ModelWeights weights;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string source_path;
  std::string format;               // "gguf" or "hf"
  std::vector<std::string> tensor_types;  // distinct weight DTypes, e.g. {"q4_K","q6_K"}
  std::string chat_template;        // tokenizer.chat_template when present
  // Whether the matrices were copied (and packed) into the process's own memory at load
  // (LoadOptions::WeightMemory); false: read from the file's memory map.
  bool weights_in_own_memory = false;
  // Keeps mapped files and converted buffers alive for the views above.
  std::vector<std::shared_ptr<void>> storage;
};

// Loads a GGUF file or a Hugging Face model directory.
absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path);
absl::StatusOr<std::unique_ptr<Model>> LoadGgufModel(const std::string& path);
absl::StatusOr<std::unique_ptr<Model>> LoadHfModel(const std::string& dir);

}  // namespace mesa
