// VocabTokenizer: special-token splitting, BOS/EOS, space prefix, escaping, decoding.
#include "engine/tokenizer_vocab.h"

#include <algorithm>
#include <array>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "engine/unicode.h"

namespace mesa {
namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581

struct ByteTables {
  std::array<uint32_t, 256> to_unicode;
  std::array<int16_t, 512> from_unicode;  // the alphabet lies below U+0200
};

const ByteTables& GetByteTables() {
  static const ByteTables tables = [] {
    ByteTables t;
    t.from_unicode.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t.to_unicode[b] = printable ? b : next++;
      t.from_unicode[t.to_unicode[b]] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return tables;
}

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// "<0xNN>" -> NN, or -1.
int ParseByteToken(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = text[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= c - '0';
    else if (c >= 'A' && c <= 'F')
      v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      v |= c - 'a' + 10;
    else
      return -1;
  }
  return v;
}

bool IsEogText(std::string_view t) {
  return t == "<|eot_id|>" || t == "<|im_end|>" || t == "<|end|>" || t == "<end_of_turn>" ||
         t == "<|endoftext|>" || t == "<|end_of_text|>" || t == "<|eom_id|>" || t == "<EOT>";
}

}  // namespace

uint32_t ByteToUnicode(uint8_t b) { return GetByteTables().to_unicode[b]; }

int UnicodeToByte(uint32_t cp) { return cp < 512 ? GetByteTables().from_unicode[cp] : -1; }

VocabTokenizer::VocabTokenizer(const VocabSpec& spec)
    : add_bos_(spec.add_bos),
      add_eos_(spec.add_eos),
      byte_fallback_(spec.byte_fallback),
      fuse_unk_(spec.fuse_unk),
      space_prefix_(spec.space_prefix),
      escape_whitespace_(spec.escape_whitespace),
      strip_decoded_space_(spec.strip_decoded_space),
      kind_(spec.kind) {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
}

absl::Status VocabTokenizer::InitVocab(const VocabSpec& spec) {
  const size_t n = spec.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer has an empty vocabulary");
  if (n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("tokenizer vocabulary too large");
  }
  if (!spec.types.empty() && spec.types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tokenizer has %d token types for %d tokens", spec.types.size(), n));
  }
  tokens_ = spec.tokens;
  types_ = spec.types.empty() ? std::vector<TokenType>(n, TokenType::kNormal) : spec.types;
  const auto valid = [n](int32_t id) { return id >= 0 && static_cast<size_t>(id) < n ? id : -1; };
  bos_id_ = valid(spec.bos_id);
  eos_id_ = valid(spec.eos_id);
  unk_id_ = valid(spec.unk_id);
  lstrip_ids_ = spec.lstrip_ids;
  rstrip_ids_ = spec.rstrip_ids;

  text_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const TokenType t = types_[i];
    const int32_t id = static_cast<int32_t>(i);
    const std::string& text = tokens_[i];
    if (t == TokenType::kControl || t == TokenType::kUnknown || t == TokenType::kUserDefined) {
      if (!text.empty()) specials_.push_back({text, id, t == TokenType::kUserDefined});
    }
    if (t == TokenType::kControl && IsEogText(text)) eog_ids_.insert(id);
    if (t != TokenType::kControl && t != TokenType::kUnknown && t != TokenType::kByte) {
      text_to_id_[text] = id;  // the last duplicate wins, as in llama.cpp
    }
    if (!spec.byte_level || t == TokenType::kByte) {
      const int b = ParseByteToken(text);
      if (b >= 0 && byte_ids_[b] < 0) byte_ids_[b] = id;
    }
  }
  if (unk_id_ < 0) {
    for (size_t i = 0; i < n; ++i) {
      if (types_[i] == TokenType::kUnknown) {
        unk_id_ = static_cast<int32_t>(i);
        break;
      }
    }
  }
  if (eos_id_ >= 0) eog_ids_.insert(eos_id_);
  for (int32_t id : spec.extra_eog_ids) {
    if (valid(id) >= 0) eog_ids_.insert(id);
  }

  // Longest first, so that a scan takes the longest special token at each position.
  std::stable_sort(specials_.begin(), specials_.end(), [](const Special& a, const Special& b) {
    return a.text.size() > b.text.size();
  });
  special_by_byte_.assign(256, {});
  for (size_t i = 0; i < specials_.size(); ++i) {
    special_by_byte_[static_cast<uint8_t>(specials_[i].text[0])].push_back(static_cast<int32_t>(i));
  }

  pieces_.resize(n);
  for (size_t i = 0; i < n; ++i) pieces_[i] = MakePiece(static_cast<int32_t>(i), spec.byte_level);
  return absl::OkStatus();
}

std::string VocabTokenizer::MakePiece(int32_t id, bool byte_level) const {
  const std::string& text = tokens_[id];
  switch (types_[id]) {
    case TokenType::kControl:
      return "";
    case TokenType::kUnknown:
    case TokenType::kUserDefined:
      return text;
    case TokenType::kByte: {
      const int b = ParseByteToken(text);
      return b >= 0 ? std::string(1, static_cast<char>(b)) : text;
    }
    default:
      break;
  }
  if (byte_level) {
    std::string out;
    size_t pos = 0;
    while (pos < text.size()) {
      const size_t start = pos;
      const uint32_t cp = DecodeUtf8(text, &pos);
      const int b = UnicodeToByte(cp);
      if (b >= 0) {
        out.push_back(static_cast<char>(b));
      } else {
        out.append(text, start, pos - start);
      }
    }
    return out;
  }
  if (const int b = ParseByteToken(text); b >= 0 && byte_ids_[b] == id) {
    return std::string(1, static_cast<char>(b));
  }
  if (!escape_whitespace_) return text;
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    if (text.compare(pos, kSpaceMarker.size(), kSpaceMarker) == 0) {
      out.push_back(' ');
      pos += kSpaceMarker.size();
    } else {
      out.push_back(text[pos++]);
    }
  }
  return out;
}

void VocabTokenizer::AppendUnknown(std::string_view chars, std::vector<int32_t>* out,
                                   bool* prev_unk) const {
  if (byte_fallback_) {
    bool all = true;
    for (char c : chars) all = all && byte_ids_[static_cast<uint8_t>(c)] >= 0;
    if (all) {
      for (char c : chars) out->push_back(byte_ids_[static_cast<uint8_t>(c)]);
      *prev_unk = false;
      return;
    }
  }
  if (unk_id_ < 0) return;  // nothing to emit: the character is dropped
  if (!(fuse_unk_ && *prev_unk)) out->push_back(unk_id_);
  *prev_unk = true;
}

absl::StatusOr<std::vector<int32_t>> VocabTokenizer::Encode(std::string_view text,
                                                            const EncodeOptions& options) const {
  MESA_RETURN_IF_ERROR(ValidateUtf8(text));
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  const bool add_special = options.add_bos.value_or(add_bos_);
  if (add_special) {
    if (bos_id_ < 0) return absl::FailedPreconditionError("the tokenizer has no BOS token");
    out.push_back(bos_id_);
  }

  bool prev_special = true;
  std::string buf;
  const auto encode_text = [&](size_t begin, size_t end) {
    if (end <= begin) return;
    const std::string_view frag = text.substr(begin, end - begin);
    bool prefix = false;
    switch (space_prefix_) {
      case SpacePrefix::kNever:
        break;
      case SpacePrefix::kFirst:
        prefix = begin == 0;
        break;
      case SpacePrefix::kAlways:
        prefix = prev_special;
        break;
      case SpacePrefix::kIfMissing:
        prefix = frag[0] != ' ';
        break;
    }
    prev_special = false;
    if (!prefix && !escape_whitespace_) {
      EncodeFragment(frag, &out);
      return;
    }
    buf.clear();
    if (prefix) buf.push_back(' ');
    buf.append(frag);
    if (escape_whitespace_) {
      std::string escaped;
      escaped.reserve(buf.size() + buf.size() / 4);
      for (char c : buf) {
        if (c == ' ')
          escaped.append(kSpaceMarker);
        else
          escaped.push_back(c);
      }
      buf.swap(escaped);
    }
    EncodeFragment(buf, &out);
  };

  // Leftmost-longest scan for special tokens (user-defined ones always; control and
  // unknown ones only with parse_special), as Hugging Face's added-vocabulary split.
  size_t frag_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const Special* match = nullptr;
    for (int32_t idx : special_by_byte_[static_cast<uint8_t>(text[pos])]) {
      const Special& s = specials_[idx];
      if (!s.always && !options.parse_special) continue;
      if (text.compare(pos, s.text.size(), s.text) == 0) {
        match = &s;
        break;
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    size_t left_end = pos;
    if (lstrip_ids_.contains(match->id)) {
      while (left_end > frag_start && IsAsciiSpace(text[left_end - 1])) --left_end;
    }
    encode_text(frag_start, left_end);
    out.push_back(match->id);
    prev_special = true;
    pos += match->text.size();
    if (rstrip_ids_.contains(match->id)) {
      while (pos < text.size() && IsAsciiSpace(text[pos])) ++pos;
    }
    frag_start = pos;
  }
  encode_text(frag_start, text.size());

  if (add_special && add_eos_ && eos_id_ >= 0) out.push_back(eos_id_);
  return out;
}

std::string VocabTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) continue;
    if (types_[id] == TokenType::kControl) continue;
    const std::string& piece = pieces_[id];
    if (first && strip_decoded_space_ && !piece.empty() && piece[0] == ' ') {
      out.append(piece, 1, std::string::npos);
    } else {
      out += piece;
    }
    first = false;
  }
  return out;
}

std::string VocabTokenizer::TokenToPiece(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) return "";
  return pieces_[id];
}

}  // namespace mesa
