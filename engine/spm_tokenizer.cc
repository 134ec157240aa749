// SentencePiece-style score-driven merging over a doubly linked list of symbols with a
// priority queue of candidate pairs: O(n log n) in the text length.
#include "engine/spm_tokenizer.h"

#include <queue>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "engine/unicode.h"

namespace mesa {
namespace {

struct Symbol {
  uint32_t start;  // byte offset in the fragment
  uint32_t len;    // 0 once merged into its left neighbour
  int32_t prev;
  int32_t next;
};

struct Candidate {
  float score;
  int32_t left;
  int32_t right;
  uint32_t len;  // combined byte length when queued
};

// Highest score first; among equal scores the leftmost pair.
struct CandidateOrder {
  bool operator()(const Candidate& a, const Candidate& b) const {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<SpmTokenizer>> SpmTokenizer::Create(const VocabSpec& spec) {
  if (!spec.scores.empty() && spec.scores.size() != spec.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("SPM tokenizer has %d scores for %d tokens",
                                                      spec.scores.size(), spec.tokens.size()));
  }
  std::unique_ptr<SpmTokenizer> tok(new SpmTokenizer(spec));
  MESA_RETURN_IF_ERROR(tok->InitVocab(spec));
  tok->scores_ = spec.scores.empty() ? std::vector<float>(spec.tokens.size(), 0.0f) : spec.scores;
  tok->joinable_.assign((0x110000 + 63) / 64, 0);
  std::vector<uint32_t> cps;
  for (int32_t id = 0; id < tok->vocab_size(); ++id) {
    const std::string& text = tok->token_text(id);
    if (tok->LookupText(text) != id) continue;  // not a token segmentation can produce
    cps.clear();
    for (size_t pos = 0; pos < text.size();) cps.push_back(DecodeUtf8(text, &pos));
    if (cps.size() < 2) continue;
    for (uint32_t cp : cps) {
      if (cp < 0x110000) tok->joinable_[cp >> 6] |= uint64_t{1} << (cp & 63);
    }
  }
  return tok;
}

void SpmTokenizer::EncodeFragment(std::string_view text, std::vector<int32_t>* out) const {
  bool prev_unk = false;
  size_t run_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t start = pos;
    const uint32_t cp = DecodeUtf8(text, &pos);
    if (Joinable(cp)) continue;
    if (start > run_start) EncodeRun(text.substr(run_start, start - run_start), out, &prev_unk);
    const std::string_view ch = text.substr(start, pos - start);
    if (const int32_t id = LookupText(ch); id >= 0) {
      out->push_back(id);
      prev_unk = false;
    } else {
      AppendUnknown(ch, out, &prev_unk);
    }
    run_start = pos;
  }
  if (text.size() > run_start) EncodeRun(text.substr(run_start), out, &prev_unk);
}

void SpmTokenizer::EncodeRun(std::string_view text, std::vector<int32_t>* out,
                             bool* prev_unk) const {
  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t len =
        std::min<size_t>(Utf8SequenceLength(static_cast<uint8_t>(text[pos])), text.size() - pos);
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(len), index - 1,
                       pos + len == text.size() ? -1 : index + 1});
    pos += len;
  }
  if (symbols.empty()) return;

  std::vector<Candidate> storage;
  storage.reserve(symbols.size());
  std::priority_queue<Candidate, std::vector<Candidate>, CandidateOrder> queue(CandidateOrder{},
                                                                               std::move(storage));
  const auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t len = symbols[left].len + symbols[right].len;
    const int32_t id = LookupText(text.substr(symbols[left].start, len));
    if (id < 0) return;
    queue.push({scores_[id], left, right, len});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    Symbol& right = symbols[c.right];
    // Stale: one side was merged away or grew since the pair was queued.
    if (left.len == 0 || right.len == 0 || left.next != c.right || left.len + right.len != c.len) {
      continue;
    }
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    try_add(left.prev, c.left);
    try_add(c.left, left.next);
  }

  for (int32_t i = 0; i != -1; i = symbols[i].next) {
    const std::string_view piece = text.substr(symbols[i].start, symbols[i].len);
    const int32_t id = LookupText(piece);
    if (id >= 0) {
      out->push_back(id);
      *prev_unk = false;
    } else {
      // Only single characters can be left unmatched: every merge makes a token.
      AppendUnknown(piece, out, prev_unk);
    }
  }
}

}  // namespace mesa
