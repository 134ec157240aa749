// Byte-pair encoding: pre-tokenizer scanners (the regexes of GPT-2, Llama 3 and Qwen2
// written out by hand), then rank-ordered merges per word.
#include "engine/bpe_tokenizer.h"

#include <queue>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "engine/unicode.h"

namespace mesa {
namespace {

// Codepoints of a fragment with their flags; accessors return "no class" past the end,
// which is what the regexes' lookaheads need.
class CodepointText {
 public:
  explicit CodepointText(std::string_view text) {
    cps_.reserve(text.size());
    offsets_.reserve(text.size() + 1);
    for (size_t pos = 0; pos < text.size();) {
      offsets_.push_back(pos);
      const uint32_t cp = DecodeUtf8(text, &pos);
      cps_.push_back(cp);
      flags_.push_back(CodepointFlags(cp));
    }
    offsets_.push_back(text.size());
  }
  size_t size() const { return cps_.size(); }
  size_t offset(size_t i) const { return offsets_[i]; }
  uint32_t cp(size_t i) const { return i < cps_.size() ? cps_[i] : 0xFFFFFFFF; }
  bool letter(size_t i) const { return i < cps_.size() && (flags_[i] & kCpLetter); }
  bool number(size_t i) const { return i < cps_.size() && (flags_[i] & kCpNumber); }
  bool space(size_t i) const { return i < cps_.size() && (flags_[i] & kCpWhitespace); }
  // [^\s\p{L}\p{N}]
  bool other(size_t i) const {
    return i < cps_.size() && !(flags_[i] & (kCpLetter | kCpNumber | kCpWhitespace));
  }
  bool newline(size_t i) const { return cp(i) == '\r' || cp(i) == '\n'; }

 private:
  std::vector<uint32_t> cps_;
  std::vector<uint16_t> flags_;
  std::vector<size_t> offsets_;
};

uint32_t AsciiLower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

// 's|'t|'re|'ve|'m|'ll|'d (optionally ASCII case-insensitive): end of the match or 0.
size_t MatchContraction(const CodepointText& t, size_t i, bool ignore_case) {
  if (t.cp(i) != '\'') return 0;
  const auto at = [&](size_t k) { return ignore_case ? AsciiLower(t.cp(k)) : t.cp(k); };
  const uint32_t c1 = at(i + 1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
  const uint32_t c2 = at(i + 2);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
    return i + 3;
  }
  return 0;
}

// \s+(?!\S)|\s+ at a whitespace run of length `run` starting at i.
size_t MatchTrailingSpace(const CodepointText& t, size_t i, size_t run) {
  if (i + run == t.size()) return i + run;  // the run reaches the end of the text
  if (run > 1) return i + run - 1;          // leave the last space to the next word
  return i + 1;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t MatchGpt2(const CodepointText& t, size_t i) {
  if (size_t end = MatchContraction(t, i, /*ignore_case=*/false)) return end;
  const size_t j = i + (t.cp(i) == ' ' ? 1 : 0);
  size_t k = j;
  if (t.letter(j)) {
    while (t.letter(k)) ++k;
    return k;
  }
  if (t.number(j)) {
    while (t.number(k)) ++k;
    return k;
  }
  if (t.other(j)) {
    while (t.other(k)) ++k;
    return k;
  }
  size_t run = 0;
  while (t.space(i + run)) ++run;
  if (run > 0) return MatchTrailingSpace(t, i, run);
  return i + 1;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}|
//   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+      (D = 3 for Llama 3, 1 for Qwen2)
size_t MatchLlama3(const CodepointText& t, size_t i, size_t max_digits) {
  if (size_t end = MatchContraction(t, i, /*ignore_case=*/true)) return end;
  if (t.letter(i) || (!t.newline(i) && !t.number(i) && t.letter(i + 1))) {
    size_t k = i + 1;
    while (t.letter(k)) ++k;
    return k;
  }
  if (t.number(i)) {
    size_t k = i;
    while (t.number(k) && k - i < max_digits) ++k;
    return k;
  }
  const size_t j = i + (t.cp(i) == ' ' ? 1 : 0);
  if (t.other(j)) {
    size_t k = j;
    while (t.other(k)) ++k;
    while (t.newline(k)) ++k;
    return k;
  }
  size_t run = 0;
  size_t after_last_newline = 0;
  while (t.space(i + run)) {
    if (t.newline(i + run)) after_last_newline = i + run + 1;
    ++run;
  }
  if (after_last_newline > 0) return after_last_newline;  // \s*[\r\n]+
  if (run > 0) return MatchTrailingSpace(t, i, run);
  return i + 1;
}

// Words start at every U+2581.
size_t MatchMetaspace(const CodepointText& t, size_t i) {
  size_t k = i + 1;
  while (k < t.size() && t.cp(k) != 0x2581) ++k;
  return k;
}

struct Symbol {
  int32_t id;  // -1: a character outside the vocabulary
  uint32_t start;
  uint32_t len;
  int32_t prev;
  int32_t next;
};

struct Candidate {
  int32_t rank;
  int32_t left;
  int32_t right;
  int32_t left_id;
  int32_t right_id;
  int32_t merged_id;
};

// Lowest rank first; among equal ranks the leftmost pair.
struct CandidateOrder {
  bool operator()(const Candidate& a, const Candidate& b) const {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.left > b.left;
  }
};

}  // namespace

std::vector<std::pair<size_t, size_t>> PreTokenize(PreTokenizerKind kind, std::string_view text) {
  std::vector<std::pair<size_t, size_t>> words;
  if (text.empty()) return words;
  if (kind == PreTokenizerKind::kNone) {
    words.emplace_back(0, text.size());
    return words;
  }
  const CodepointText t(text);
  words.reserve(t.size() / 4 + 1);
  for (size_t i = 0; i < t.size();) {
    size_t end = i + 1;
    switch (kind) {
      case PreTokenizerKind::kGpt2:
        end = MatchGpt2(t, i);
        break;
      case PreTokenizerKind::kLlama3:
        end = MatchLlama3(t, i, 3);
        break;
      case PreTokenizerKind::kQwen2:
        end = MatchLlama3(t, i, 1);
        break;
      case PreTokenizerKind::kMetaspace:
        end = MatchMetaspace(t, i);
        break;
      case PreTokenizerKind::kNone:
        end = t.size();
        break;
    }
    if (end <= i) end = i + 1;  // never stall
    words.emplace_back(t.offset(i), t.offset(end));
    i = end;
  }
  return words;
}

BpeTokenizer::BpeTokenizer(const VocabSpec& spec)
    : VocabTokenizer(spec),
      pre_tokenizer_(spec.pre_tokenizer),
      byte_level_(spec.byte_level),
      ignore_merges_(spec.ignore_merges) {
  std::fill(std::begin(byte_char_ids_), std::end(byte_char_ids_), -1);
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(const VocabSpec& spec) {
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer(spec));
  MESA_RETURN_IF_ERROR(tok->InitVocab(spec));
  if (spec.byte_level) {
    for (int b = 0; b < 256; ++b) {
      tok->byte_char_ids_[b] = tok->LookupText(EncodeUtf8(ByteToUnicode(static_cast<uint8_t>(b))));
    }
  }
  tok->merges_.reserve(spec.merges.size());
  std::string joined;
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const auto& [a, b] = spec.merges[rank];
    const int32_t left = tok->LookupText(a);
    const int32_t right = tok->LookupText(b);
    joined.assign(a).append(b);
    const int32_t merged = tok->LookupText(joined);
    // Merges whose parts or result are not (mergeable) tokens can never apply.
    if (left < 0 || right < 0 || merged < 0) continue;
    const uint64_t key =
        (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
    tok->merges_.try_emplace(key, Merge{static_cast<int32_t>(rank), merged});
  }
  tok->in_merge_.assign(spec.tokens.size(), false);
  for (const auto& [key, merge] : tok->merges_) {
    tok->in_merge_[key >> 32] = true;
    tok->in_merge_[key & 0xFFFFFFFFu] = true;
  }
  return tok;
}

int32_t BpeTokenizer::InitialSymbol(std::string_view word, size_t pos, size_t* len) const {
  if (byte_level_) {
    *len = 1;
    return byte_char_ids_[static_cast<uint8_t>(word[pos])];
  }
  *len = std::min<size_t>(Utf8SequenceLength(static_cast<uint8_t>(word[pos])), word.size() - pos);
  return LookupText(word.substr(pos, *len));
}

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
  if (ignore_merges_) {
    int32_t id;
    if (byte_level_) {
      std::string encoded;
      for (char c : word) AppendUtf8(ByteToUnicode(static_cast<uint8_t>(c)), &encoded);
      id = LookupText(encoded);
    } else {
      id = LookupText(word);
    }
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  bool prev_unk = false;
  if (word.size() <= 64) {
    MergeRun(word, out, &prev_unk);
    return;
  }
  size_t run_start = 0;
  for (size_t pos = 0; pos < word.size();) {
    size_t len;
    const int32_t id = InitialSymbol(word, pos, &len);
    if (id >= 0 && in_merge_[id]) {
      pos += len;
      continue;
    }
    if (pos > run_start) MergeRun(word.substr(run_start, pos - run_start), out, &prev_unk);
    if (id >= 0) {
      out->push_back(id);
      prev_unk = false;
    } else {
      AppendUnknown(word.substr(pos, len), out, &prev_unk);
    }
    pos += len;
    run_start = pos;
  }
  if (word.size() > run_start) MergeRun(word.substr(run_start), out, &prev_unk);
}

void BpeTokenizer::MergeRun(std::string_view word, std::vector<int32_t>* out,
                            bool* prev_unk) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (size_t pos = 0; pos < word.size();) {
    size_t len;
    const int32_t id = InitialSymbol(word, pos, &len);
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, static_cast<uint32_t>(pos), static_cast<uint32_t>(len), index - 1,
                       pos + len == word.size() ? -1 : index + 1});
    pos += len;
  }
  if (symbols.empty()) return;

  std::priority_queue<Candidate, std::vector<Candidate>, CandidateOrder> queue;
  const auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const int32_t lid = symbols[left].id;
    const int32_t rid = symbols[right].id;
    if (lid < 0 || rid < 0) return;
    const Merge* m = FindMerge(lid, rid);
    if (m == nullptr) return;
    queue.push({m->rank, left, right, lid, rid, m->id});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    Symbol& right = symbols[c.right];
    if (left.len == 0 || right.len == 0 || left.next != c.right || left.id != c.left_id ||
        right.id != c.right_id) {
      continue;  // stale
    }
    left.id = c.merged_id;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    try_add(left.prev, c.left);
    try_add(c.left, left.next);
  }

  for (int32_t i = 0; i != -1; i = symbols[i].next) {
    if (symbols[i].id >= 0) {
      out->push_back(symbols[i].id);
      *prev_unk = false;
    } else {
      AppendUnknown(word.substr(symbols[i].start, symbols[i].len), out, prev_unk);
    }
  }
}

void BpeTokenizer::EncodeFragment(std::string_view text, std::vector<int32_t>* out) const {
  // Words repeat a lot in real text: remember the ids of short ones for this call.
  absl::flat_hash_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;
  for (const auto& [begin, end] : PreTokenize(pre_tokenizer_, text)) {
    const std::string_view word = text.substr(begin, end - begin);
    const bool cacheable = word.size() <= 64 && pre_tokenizer_ != PreTokenizerKind::kNone;
    if (cacheable) {
      if (auto it = cache.find(word); it != cache.end()) {
        for (uint32_t k = 0; k < it->second.second; ++k) {
          const int32_t id = (*out)[it->second.first + k];
          out->push_back(id);
        }
        continue;
      }
    }
    const size_t start = out->size();
    EncodeWord(word, out);
    if (cacheable) {
      cache.emplace(word, std::make_pair(static_cast<uint32_t>(start),
                                         static_cast<uint32_t>(out->size() - start)));
    }
  }
}

}  // namespace mesa
