// Tokenizer tests: small synthetic vocabularies (always run), the shared TinyStories
// models (skipped with a message when ../shared is absent), GGUF vs tokenizer.json
// agreement, special-token injection, invalid UTF-8, round trips and speed.
#include "engine/tokenizer.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/bpe_tokenizer.h"
#include "engine/gguf.h"
#include "engine/tokenizer_vocab.h"
#include "engine/unicode.h"
#include "gtest/gtest.h"
#include "tests/testing/linear_time.h"

namespace mesa {
namespace {

std::filesystem::path SharedDir() {
  const char* d = std::getenv("MESA_SHARED_DIR");
  return d != nullptr && *d ? std::filesystem::path(d) : std::filesystem::path("../shared");
}

std::string ReadAll(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<int32_t> MustEncode(const Tokenizer& tok, std::string_view text, bool bos = false,
                                bool special = false) {
  EncodeOptions o;
  o.add_bos = bos;
  o.parse_special = special;
  auto ids = tok.Encode(text, o);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

// ---- Synthetic vocabularies ------------------------------------------------------

// A tiny SPM vocab: <unk> <s> </s>, 256 byte tokens, then pieces with scores.
VocabSpec TinySpm() {
  VocabSpec s;
  s.model = VocabSpec::Model::kSpm;
  s.tokens = {"<unk>", "<s>", "</s>"};
  s.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    s.tokens.push_back(buf);
    s.types.push_back(TokenType::kByte);
  }
  for (const char* p : {"\xE2\x96\x81",
                        "h",
                        "e",
                        "l",
                        "o",
                        "w",
                        "r",
                        "d",
                        "<",
                        ">",
                        "s",
                        "he",
                        "ll",
                        "llo",
                        "hello",
                        "\xE2\x96\x81hello",
                        "wo",
                        "ld",
                        "wor",
                        "world",
                        "\xE2\x96\x81world",
                        "<s",
                        "s>"}) {
    s.tokens.push_back(p);
    s.types.push_back(TokenType::kNormal);
  }
  s.scores.assign(s.tokens.size(), 0.0f);
  for (size_t i = 259; i < s.tokens.size(); ++i)
    s.scores[i] = static_cast<float>(s.tokens[i].size());
  s.bos_id = 1;
  s.eos_id = 2;
  s.unk_id = 0;
  s.add_bos = true;
  s.space_prefix = SpacePrefix::kAlways;
  s.escape_whitespace = true;
  s.strip_decoded_space = true;
  s.kind = "spm";
  return s;
}

TEST(SpmSyntheticTest, MergesByScoreWithSpacePrefix) {
  auto tok = BuildTokenizer(TinySpm());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const auto ids = MustEncode(**tok, "hello world", /*bos=*/true);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ((*tok)->TokenToPiece(ids[1]), " hello");
  EXPECT_EQ((*tok)->TokenToPiece(ids[2]), " world");
  EXPECT_EQ((*tok)->Decode(ids), "hello world");
}

TEST(SpmSyntheticTest, ByteFallbackRoundTrips) {
  auto tok = BuildTokenizer(TinySpm());
  ASSERT_TRUE(tok.ok());
  const std::string text = "h\xC3\xA9llo \xF0\x9F\xA6\x99!";  // é, llama: only as bytes
  const auto ids = MustEncode(**tok, text);
  EXPECT_EQ((*tok)->Decode(ids), text);
  EXPECT_EQ((*tok)->TokenToPiece(3 + 0xC3), "\xC3");
}

TEST(SpmSyntheticTest, UnknownWithoutByteTokensFusesToUnk) {
  VocabSpec s = TinySpm();
  for (size_t i = 3; i < 259; ++i)
    s.types[i] = TokenType::kUnused, s.tokens[i] = "unused" + std::to_string(i);
  auto tok = BuildTokenizer(s);
  ASSERT_TRUE(tok.ok());
  const auto ids = MustEncode(**tok, "h\xC3\xA9\xC3\xA9o");
  // "▁h" has no token: "▁", "h", then one fused <unk> for "éé", then "o".
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[2], 0);
  EXPECT_NE(ids[3], 0);
}

TEST(SpmSyntheticTest, SpecialTokensNeedParseSpecial) {
  auto tok = BuildTokenizer(TinySpm());
  ASSERT_TRUE(tok.ok());
  for (int32_t id : MustEncode(**tok, "<s>hello</s>")) {
    EXPECT_NE(id, 1);
    EXPECT_NE(id, 2);
  }
  const auto ids = MustEncode(**tok, "<s>hello</s>", false, /*special=*/true);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ((*tok)->TokenToPiece(ids[1]), " hello");  // a prefix space after a special
  EXPECT_EQ(ids[2], 2);
}

TEST(SpmSyntheticTest, InvalidUtf8AndEmpty) {
  auto tok = BuildTokenizer(TinySpm());
  ASSERT_TRUE(tok.ok());
  auto bad = (*tok)->Encode("hello\xC3(", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("offset 5"), std::string::npos) << bad.status();
  EXPECT_TRUE(MustEncode(**tok, "").empty());
  EXPECT_EQ(MustEncode(**tok, "", /*bos=*/true), std::vector<int32_t>{1});
  auto def = (*tok)->Encode("", {});  // model default: add_bos
  ASSERT_TRUE(def.ok());
  EXPECT_EQ(*def, std::vector<int32_t>{1});
}

TEST(PreTokenizeTest, Gpt2Pattern) {
  const std::string text = "Hello world's  3x  \n!! ok";
  std::vector<std::string> words;
  for (auto [b, e] : PreTokenize(PreTokenizerKind::kGpt2, text))
    words.push_back(text.substr(b, e - b));
  EXPECT_EQ(words, (std::vector<std::string>{"Hello", " world", "'s", " ", " 3", "x", "  ", "\n",
                                             "!!", " ok"}));
}

TEST(PreTokenizeTest, Llama3SplitsDigitsInThreesAndKeepsNewlines) {
  const std::string text = "abc 1234567 x\n\n  y 'RE";
  std::vector<std::string> words;
  for (auto [b, e] : PreTokenize(PreTokenizerKind::kLlama3, text))
    words.push_back(text.substr(b, e - b));
  EXPECT_EQ(words, (std::vector<std::string>{"abc", " ", "123", "456", "7", " x", "\n\n", " ", " y",
                                             " '", "RE"}));
  words.clear();
  for (auto [b, e] : PreTokenize(PreTokenizerKind::kQwen2, "a12"))
    words.push_back(std::string("a12").substr(b, e - b));
  EXPECT_EQ(words, (std::vector<std::string>{"a", "1", "2"}));
}

// ---- Real models from ../shared ----------------------------------------------------

class SharedModelTest : public ::testing::Test {
 protected:
  static std::unique_ptr<Tokenizer> LoadGguf(const std::string& name) {
    const auto path = SharedDir() / "models" / name;
    if (!std::filesystem::exists(path)) return nullptr;
    auto f = GgufFile::Open(path.string());
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) return nullptr;
    auto t = CreateTokenizerFromGguf(**f);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::move(*t) : nullptr;
  }
  static std::unique_ptr<Tokenizer> LoadHf() {
    const auto path = SharedDir() / "models" / "tinystories-656k-hf" / "tokenizer.json";
    if (!std::filesystem::exists(path)) return nullptr;
    auto t = CreateTokenizerFromHfJson(path.string());
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::move(*t) : nullptr;
  }
};

#define SKIP_IF_NULL(p, what) \
  if ((p) == nullptr) GTEST_SKIP() << what << " not found under " << SharedDir()

TEST_F(SharedModelTest, Stories260KOnceUponATime) {
  auto tok = LoadGguf("stories260K-f32.gguf");
  SKIP_IF_NULL(tok, "models/stories260K-f32.gguf");
  EXPECT_EQ(tok->kind(), "spm");
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->IsEndOfGeneration(2));
  auto with_bos = tok->Encode("Once upon a time", {});
  ASSERT_TRUE(with_bos.ok());
  ASSERT_GE(with_bos->size(), 2u);
  EXPECT_EQ((*with_bos)[0], 1);
  const auto no_bos = MustEncode(*tok, "Once upon a time", /*bos=*/false);
  EXPECT_EQ(no_bos, std::vector<int32_t>(with_bos->begin() + 1, with_bos->end()));
  EXPECT_EQ(tok->Decode(*with_bos), "Once upon a time");
  std::string pieces;
  for (int32_t id : no_bos) pieces += tok->TokenToPiece(id);
  EXPECT_EQ(pieces, " Once upon a time");
}

TEST_F(SharedModelTest, Stories260KSpecialTokensAreTextByDefault) {
  auto tok = LoadGguf("stories260K-f32.gguf");
  SKIP_IF_NULL(tok, "models/stories260K-f32.gguf");
  for (const char* text : {"<s>", "</s>", "<|endoftext|>", "a</s>b<s>"}) {
    for (int32_t id : MustEncode(*tok, text)) {
      EXPECT_NE(id, 1) << text;
      EXPECT_NE(id, 2) << text;
    }
    EXPECT_EQ(tok->Decode(MustEncode(*tok, text)), text);
  }
  const auto ids = MustEncode(*tok, "a</s>b<s>", false, /*special=*/true);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 1);
}

TEST_F(SharedModelTest, Stories260KRoundTripsUnicode) {
  auto tok = LoadGguf("stories260K-f32.gguf");
  SKIP_IF_NULL(tok, "models/stories260K-f32.gguf");
  for (const char* text :
       {"Hello, world!", "  two leading spaces", "tabs\tand\nnewlines\n\n",
        "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\xA6\x99 \xD0\xB1", "trailing space "}) {
    EXPECT_EQ(tok->Decode(MustEncode(*tok, text)), text);
  }
  auto bad = tok->Encode("ok\xF0\x9F\xA6", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("offset 2"), std::string::npos) << bad.status();
}

// The GGUF (SPM, score = -id) and the tokenizer.json (BPE, merges) of the same model
// must give the same ids on real text, <unk> for characters outside the vocabulary.
TEST_F(SharedModelTest, TinyStoriesGgufMatchesTokenizerJson) {
  auto gguf = LoadGguf("tinystories-656k-f32.gguf");
  SKIP_IF_NULL(gguf, "models/tinystories-656k-f32.gguf");
  auto hf = LoadHf();
  SKIP_IF_NULL(hf, "models/tinystories-656k-hf/tokenizer.json");
  const std::string text = ReadAll(SharedDir() / "text" / "tinystories_valid_part1.txt");
  ASSERT_GT(text.size(), 20000u);
  EXPECT_EQ(hf->bos_id(), 1);
  EXPECT_EQ(hf->eos_id(), 2);
  EXPECT_EQ(gguf->bos_id(), 1);

  // The whole file in pieces of varied length, cut at UTF-8 character boundaries.
  size_t pos = 0, piece_len = 37, compared = 0, unk_pieces = 0;
  while (pos < text.size()) {
    size_t end = std::min(text.size(), pos + piece_len);
    while (end < text.size() && (static_cast<uint8_t>(text[end]) & 0xC0) == 0x80) ++end;
    const std::string piece = text.substr(pos, end - pos);
    auto a = gguf->Encode(piece, {});
    auto b = hf->Encode(piece, {});
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(*a, *b) << "piece at byte " << pos << ": '" << piece << "'";
    if (std::count(a->begin(), a->end(), 0) > 0) ++unk_pieces;
    ++compared;
    pos = end;
    piece_len = piece_len * 7 % 997 + 1;
  }
  // And the whole 20 KB at once.
  const std::string head = text.substr(0, 20000);
  EXPECT_EQ(MustEncode(*gguf, head, true), MustEncode(*hf, head, true));
  std::printf("compared %zu pieces (%zu with <unk>)\n", compared, unk_pieces);

  // Mojibake outside the vocabulary becomes <unk> (id 0), fused per run.
  const std::string moji = "She said \xC3\xA2\xE2\x82\xAC\xC5\x93hi";
  const auto ids = MustEncode(*gguf, moji);
  EXPECT_EQ(ids, MustEncode(*hf, moji));
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 0), 1);
}

TEST_F(SharedModelTest, TinyStoriesHfRoundTripAndSpecials) {
  auto hf = LoadHf();
  SKIP_IF_NULL(hf, "models/tinystories-656k-hf/tokenizer.json");
  const std::string text = "Once upon a time, there was a little girl named Lily.\nShe liked toys.";
  EXPECT_EQ(hf->Decode(MustEncode(*hf, text, true)), text);
  auto def = hf->Encode(text, {});
  ASSERT_TRUE(def.ok());
  EXPECT_EQ((*def)[0], 1);  // add_bos_token from tokenizer_config.json
  for (int32_t id : MustEncode(*hf, "<|end_story|><|start_story|>")) EXPECT_GT(id, 2);
  const auto ids = MustEncode(*hf, "the end<|end_story|>", false, true);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_TRUE(hf->IsEndOfGeneration(2));
}

// Tokenizing grows linearly with the text: 1 MiB costs about 8x what 128 KiB costs (a
// quadratic merge loop would cost 64x). A ratio, not a time limit, so slow builds
// (sanitizers) and busy machines do not fail it.
TEST_F(SharedModelTest, OneMegabyteIsLinear) {
  auto spm = LoadGguf("stories260K-f32.gguf");
  SKIP_IF_NULL(spm, "models/stories260K-f32.gguf");
  auto hf = LoadHf();
  std::string doc = ReadAll(SharedDir() / "text" / "frankenstein.txt");
  if (doc.empty()) GTEST_SKIP() << "text/frankenstein.txt not found under " << SharedDir();
  while (doc.size() < (1u << 20)) doc += doc;
  doc.resize(1u << 20);
  // Cut both texts at a character boundary.
  const auto trim = [](std::string s) {
    while (!s.empty() && ((static_cast<uint8_t>(s.back()) & 0xC0) == 0x80 ||
                          static_cast<uint8_t>(s.back()) >= 0xC0))
      s.pop_back();
    return s;
  };
  doc = trim(doc);
  const auto time = [&](const Tokenizer& t, const char* name, bool lossless) {
    testing::ExpectLinearTime(doc, name, [&](const std::string& text) {
      const auto ids = MustEncode(t, text);
      if (lossless) {
        EXPECT_TRUE(t.Decode(ids) == text) << name;
      }
    });
  };
  time(*spm, "stories260K (spm)", true);
  std::string one_line = doc;  // worst case for SPM: no newline to cut the text at
  std::replace(one_line.begin(), one_line.end(), '\n', ' ');
  std::swap(doc, one_line);
  time(*spm, "stories260K (spm, no newlines)", true);
  std::swap(doc, one_line);
  if (hf) time(*hf, "tinystories-656k tokenizer.json (bpe, one word)", false);
}

// Arbitrary bytes never crash: either ids that decode back, or InvalidArgument.
TEST_F(SharedModelTest, RandomInputNeverCrashes) {
  auto tok = LoadGguf("stories260K-f32.gguf");
  SKIP_IF_NULL(tok, "models/stories260K-f32.gguf");
  uint64_t state = 12345;
  const auto next = [&state] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33);
  };
  for (int iter = 0; iter < 2000; ++iter) {
    std::string text;
    const int len = next() % 40;
    if (iter % 2 == 0) {
      for (int i = 0; i < len; ++i) text.push_back(static_cast<char>(next() & 0xFF));
    } else {
      for (int i = 0; i < len; ++i) {
        uint32_t cp = next() % (iter % 4 == 1 ? 0x80 : 0x110000);
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
        AppendUtf8(cp, &text);
      }
    }
    EncodeOptions o;
    o.add_bos = false;
    o.parse_special = iter % 3 == 0;
    auto ids = tok->Encode(text, o);
    if (FindInvalidUtf8(text) != std::string_view::npos) {
      EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    } else {
      ASSERT_TRUE(ids.ok()) << ids.status();
      if (!o.parse_special) {
        EXPECT_EQ(tok->Decode(*ids), text);
      }
    }
  }
}

}  // namespace
}  // namespace mesa
