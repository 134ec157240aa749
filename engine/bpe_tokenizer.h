// Byte-pair-encoding tokenizer: GGUF tokenizer.ggml.model = "gpt2" (byte-level, with a
// named pre-tokenizer regex implemented as a hand-written scanner) and Hugging Face
// tokenizer.json BPE models (byte-level or SentencePiece-like with byte fallback).
// Words are merged by merge rank with a linked list and a priority queue.
// Immutable after Create: thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer_vocab.h"

namespace mesa {

// Splits valid UTF-8 `text` into words by the pre-tokenizer's pattern: returns
// [begin, end) byte ranges that tile `text`.
std::vector<std::pair<size_t, size_t>> PreTokenize(PreTokenizerKind kind, std::string_view text);

class BpeTokenizer : public VocabTokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(const VocabSpec& spec);

 protected:
  void EncodeFragment(std::string_view text, std::vector<int32_t>* out) const override;

 private:
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  explicit BpeTokenizer(const VocabSpec& spec);
  // Merges one word (raw bytes of the input) and appends its ids.
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const;
  // Merges one run of a word; `*prev_unk` carries <unk> fusing across runs.
  void MergeRun(std::string_view run, std::vector<int32_t>* out, bool* prev_unk) const;
  // Id of the initial symbol at `pos` of `word` (-1 if unknown); sets its byte length.
  int32_t InitialSymbol(std::string_view word, size_t pos, size_t* len) const;
  const Merge* FindMerge(int32_t left, int32_t right) const {
    auto it = merges_.find((static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
                           static_cast<uint32_t>(right));
    return it == merges_.end() ? nullptr : &it->second;
  }

  PreTokenizerKind pre_tokenizer_;
  bool byte_level_;
  bool ignore_merges_;
  absl::flat_hash_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  int32_t byte_char_ids_[256];                   // byte-level: id of each byte's character
  // Ids that are a part of some merge. A symbol whose id is not can never merge, so
  // long words are cut around it and the runs merged independently (same result).
  std::vector<bool> in_merge_;
};

}  // namespace mesa
