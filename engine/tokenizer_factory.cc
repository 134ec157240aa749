// Placeholder until the tokenizer implementations land (owned by the tokenizer work).
#include "engine/gguf.h"
#include "engine/tokenizer.h"

namespace mesa {

absl::StatusOr<std::unique_ptr<Tokenizer>> CreateTokenizerFromGguf(const GgufFile&) {
  return absl::UnimplementedError("tokenizer not implemented yet");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> CreateTokenizerFromHfJson(const std::string&) {
  return absl::UnimplementedError("tokenizer not implemented yet");
}

}  // namespace mesa
