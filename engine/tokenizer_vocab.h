// Shared machinery of the vocabulary-based tokenizers (SentencePiece-style and
// byte-level BPE): the loader-independent vocabulary description (VocabSpec), and
// VocabTokenizer, which does everything around the model-specific segmentation:
// UTF-8 validation, BOS/EOS, splitting out special tokens, the SentencePiece space
// prefix and U+2581 escaping, and decoding. Subclasses implement EncodeFragment.
// Immutable after construction: thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/tokenizer.h"

namespace mesa {

// GGUF tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// How BPE text is split into words before merging.
enum class PreTokenizerKind {
  kNone,       // the whole fragment is one word
  kGpt2,       // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,     // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|...
  kQwen2,      // as kLlama3 with \p{N} (single digits)
  kMetaspace,  // split before every U+2581 (Hugging Face Metaspace with split=true)
};

// When a space is prepended to a text fragment (before U+2581 escaping).
enum class SpacePrefix {
  kNever,
  kFirst,      // only to the fragment at the start of the text
  kAlways,     // at the start and after every special token (llama.cpp SPM)
  kIfMissing,  // to every fragment not starting with a space (HF ByteLevel add_prefix_space)
};

// Everything a tokenizer needs, filled by the GGUF or tokenizer.json loader.
struct VocabSpec {
  enum class Model { kSpm, kBpe };
  Model model = Model::kSpm;
  std::vector<std::string> tokens;
  std::vector<float> scores;     // SPM merge priorities (higher first); may be empty
  std::vector<TokenType> types;  // empty: all normal
  std::vector<std::pair<std::string, std::string>> merges;  // BPE, in rank order
  // Added tokens with lstrip/rstrip (tokenizer.json): whitespace beside them is eaten.
  absl::flat_hash_set<int32_t> lstrip_ids, rstrip_ids;

  PreTokenizerKind pre_tokenizer = PreTokenizerKind::kNone;
  bool byte_level = false;     // GPT-2 bytes_to_unicode alphabet
  bool byte_fallback = true;   // characters outside the vocab -> <0xNN> tokens
  bool ignore_merges = false;  // a whole word that is a token is taken as is
  bool fuse_unk = true;        // consecutive unknown characters -> one <unk>
  SpacePrefix space_prefix = SpacePrefix::kNever;
  bool escape_whitespace = false;    // ' ' -> U+2581 before segmentation
  bool strip_decoded_space = false;  // Decode drops the prefix space of the first piece

  int32_t bos_id = -1, eos_id = -1, unk_id = -1;
  std::vector<int32_t> extra_eog_ids;  // end-of-generation tokens besides EOS
  bool add_bos = false;
  bool add_eos = false;
  std::string kind;  // Tokenizer::kind()
};

class VocabTokenizer : public Tokenizer {
 public:
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options) const override;
  std::string Decode(absl::Span<const int32_t> ids) const override;
  std::string TokenToPiece(int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool IsEndOfGeneration(int32_t id) const override { return eog_ids_.contains(id); }
  std::string kind() const override { return kind_; }

  // Id of `text` among tokens that segmentation may produce (not control, unknown
  // or byte tokens), or -1.
  int32_t LookupText(std::string_view text) const {
    auto it = text_to_id_.find(absl::string_view(text.data(), text.size()));
    return it == text_to_id_.end() ? -1 : it->second;
  }
  const std::string& token_text(int32_t id) const { return tokens_[id]; }
  TokenType token_type(int32_t id) const { return types_[id]; }

 protected:
  explicit VocabTokenizer(const VocabSpec& spec);
  // Validates the spec's ids and builds the lookup tables.
  absl::Status InitVocab(const VocabSpec& spec);

  // Appends the ids of one fragment of text free of special tokens (already given its
  // space prefix and U+2581 escaping).
  virtual void EncodeFragment(std::string_view text, std::vector<int32_t>* out) const = 0;
  // Appends the fallback for one character absent from the vocabulary: its <0xNN> byte
  // tokens when all exist and byte fallback is on, otherwise <unk> (fused with an
  // immediately preceding fallback <unk> when fuse_unk). `*prev_unk` tracks fusing.
  void AppendUnknown(std::string_view chars, std::vector<int32_t>* out, bool* prev_unk) const;

  int32_t byte_token(uint8_t b) const { return byte_ids_[b]; }
  int32_t unk_id() const { return unk_id_; }

 private:
  struct Special {
    std::string text;
    int32_t id;
    bool always;  // user-defined: split out even without parse_special
  };
  std::string MakePiece(int32_t id, bool byte_level) const;

  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  std::vector<std::string> pieces_;  // decoded text of each token ("" for control)
  absl::flat_hash_map<std::string, int32_t> text_to_id_;
  std::vector<Special> specials_;                      // sorted by length, longest first
  std::vector<std::vector<int32_t>> special_by_byte_;  // first byte -> indices into specials_
  absl::flat_hash_set<int32_t> lstrip_ids_, rstrip_ids_;
  absl::flat_hash_set<int32_t> eog_ids_;
  int32_t byte_ids_[256];
  int32_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1;
  bool add_bos_ = false, add_eos_ = false;
  bool byte_fallback_ = true, fuse_unk_ = true;
  SpacePrefix space_prefix_ = SpacePrefix::kNever;
  bool escape_whitespace_ = false;
  bool strip_decoded_space_ = false;
  std::string kind_;
};

// Builds the SPM or BPE tokenizer described by `spec`.
absl::StatusOr<std::unique_ptr<Tokenizer>> BuildTokenizer(const VocabSpec& spec);

// GPT-2's reversible byte <-> printable codepoint mapping.
uint32_t ByteToUnicode(uint8_t b);
// The byte for a codepoint of that alphabet, or -1.
int UnicodeToByte(uint32_t cp);

}  // namespace mesa
