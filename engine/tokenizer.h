// Text <-> token ids. Implementations: SentencePiece-style (GGUF tokenizer.ggml.model =
// "llama") and byte-level BPE (GGUF "gpt2" with a named pre-tokenizer, or a Hugging
// Face tokenizer.json). Immutable after construction: thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mesa {

class GgufFile;

struct EncodeOptions {
  // Prepend BOS. Unset: the model's own default (tokenizer.ggml.add_bos_token).
  std::optional<bool> add_bos;
  // Turn marker strings such as "<s>" or "<|endoftext|>" into control tokens. Off by
  // default: document text must not be able to inject control tokens.
  bool parse_special = false;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Invalid UTF-8 in `text` is an InvalidArgument error naming the byte offset.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                      const EncodeOptions& options) const = 0;
  // Concatenated text of `ids` (byte tokens reassembled; control tokens omitted).
  virtual std::string Decode(absl::Span<const int32_t> ids) const = 0;
  // Text of one token as it would appear in a stream of decoded output.
  virtual std::string TokenToPiece(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 if none
  virtual int32_t eos_id() const = 0;  // -1 if none
  virtual bool IsEndOfGeneration(int32_t id) const = 0;
  // "spm", "bpe/llama-bpe", "bpe/qwen2", "bpe/gpt-2", ...
  virtual std::string kind() const = 0;
};

// From GGUF metadata (tokenizer.ggml.*).
absl::StatusOr<std::unique_ptr<Tokenizer>> CreateTokenizerFromGguf(const GgufFile& file);
// From a Hugging Face tokenizer.json (+ tokenizer_config.json beside it when present).
absl::StatusOr<std::unique_ptr<Tokenizer>> CreateTokenizerFromHfJson(const std::string& path);

}  // namespace mesa
