// SentencePiece-style tokenizer (GGUF tokenizer.ggml.model = "llama"): the text is
// split into characters, then the adjacent pair whose concatenation is the vocabulary
// token with the highest score is merged, repeatedly (llama.cpp's SPM algorithm).
// Characters left outside the vocabulary become <0xNN> byte tokens, or <unk> when the
// vocabulary has no byte tokens. Immutable after Create: thread-safe.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer_vocab.h"

namespace mesa {

class SpmTokenizer : public VocabTokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<SpmTokenizer>> Create(const VocabSpec& spec);

 protected:
  void EncodeFragment(std::string_view text, std::vector<int32_t>* out) const override;

 private:
  explicit SpmTokenizer(const VocabSpec& spec) : VocabTokenizer(spec) {}
  // Merges one run of characters and appends its ids.
  void EncodeRun(std::string_view run, std::vector<int32_t>* out, bool* prev_unk) const;
  bool Joinable(uint32_t cp) const { return (joinable_[cp >> 6] >> (cp & 63)) & 1; }

  std::vector<float> scores_;
  // Bit per codepoint: set if some multi-character token contains it. A character
  // outside every such token can never merge, so the text is cut around it and the
  // runs are merged independently (same result, much smaller queues).
  std::vector<uint64_t> joinable_;
};

}  // namespace mesa
