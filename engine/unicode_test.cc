// Tests of the UTF-8 codec and the codepoint category tables.
#include "engine/unicode.h"

#include <string>

#include "gtest/gtest.h"

namespace mesa {
namespace {

TEST(Utf8Test, ValidTextPasses) {
  EXPECT_EQ(FindInvalidUtf8(""), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("plain ascii"), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("\xC3\xA9t\xC3\xA9 \xE2\x82\xAC \xF0\x9F\xA6\x99"),
            std::string_view::npos);
  EXPECT_TRUE(ValidateUtf8("\xF4\x8F\xBF\xBF").ok());  // U+10FFFF
}

TEST(Utf8Test, InvalidSequencesReportTheirOffset) {
  EXPECT_EQ(FindInvalidUtf8("abc\xFF"), 3u);           // never valid
  EXPECT_EQ(FindInvalidUtf8("ab\x80"), 2u);            // stray continuation
  EXPECT_EQ(FindInvalidUtf8("a\xC3"), 1u);             // truncated at the end
  EXPECT_EQ(FindInvalidUtf8("a\xE2\x82z"), 1u);        // truncated in the middle
  EXPECT_EQ(FindInvalidUtf8("\xC0\x80"), 0u);          // overlong NUL
  EXPECT_EQ(FindInvalidUtf8("x\xE0\x80\xAF"), 1u);     // overlong '/'
  EXPECT_EQ(FindInvalidUtf8("xy\xED\xA0\x80"), 2u);    // surrogate U+D800
  EXPECT_EQ(FindInvalidUtf8("\xF4\x90\x80\x80"), 0u);  // above U+10FFFF
  const absl::Status s = ValidateUtf8("hello \xF0\x9F");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("offset 6"), std::string::npos) << s;
}

TEST(Utf8Test, EncodeDecodeRoundTripsEveryScalarValue) {
  for (uint32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    const std::string s = EncodeUtf8(cp);
    ASSERT_EQ(FindInvalidUtf8(s), std::string_view::npos) << cp;
    size_t pos = 0;
    ASSERT_EQ(DecodeUtf8(s, &pos), cp);
    ASSERT_EQ(pos, s.size());
    ASSERT_EQ(Utf8SequenceLength(static_cast<uint8_t>(s[0])), static_cast<int>(s.size()));
  }
  EXPECT_EQ(EncodeUtf8(0xD800), "\xEF\xBF\xBD");  // surrogates become U+FFFD
}

TEST(CategoryTest, KnownCodepoints) {
  EXPECT_TRUE(IsLetter('a'));
  EXPECT_TRUE(IsLetter(0x00E9));  // é
  EXPECT_TRUE(IsLetter(0x4E00));  // CJK
  EXPECT_TRUE(IsLetter(0x0431));  // Cyrillic б
  EXPECT_TRUE(IsNumber('7'));
  EXPECT_TRUE(IsNumber(0x00BD));  // ½ (No)
  EXPECT_TRUE(IsNumber(0x0663));  // Arabic-Indic three
  EXPECT_TRUE(IsPunctuation('!'));
  EXPECT_TRUE(IsPunctuation(0x3002));  // 。
  EXPECT_TRUE(IsSymbol('$'));
  EXPECT_TRUE(IsSymbol(0x1F999));  // 🦙
  EXPECT_TRUE(IsMark(0x0301));     // combining acute
  EXPECT_TRUE(IsSeparator(' '));
  EXPECT_TRUE(IsWhitespace(' '));
  EXPECT_TRUE(IsWhitespace('\n'));
  EXPECT_TRUE(IsControl('\n'));
  EXPECT_TRUE(IsWhitespace(0x3000));
  EXPECT_TRUE(IsWhitespace(0x0085));
  EXPECT_FALSE(IsWhitespace(0x200B));  // zero width space is Cf, not White_Space
  EXPECT_FALSE(IsWhitespace('a'));
  EXPECT_FALSE(IsLetter('1'));
  EXPECT_EQ(CodepointFlags(0x10FFFF), kCpOther);  // unassigned
  EXPECT_EQ(CodepointFlags(0x110000), kCpOther);
  EXPECT_STRNE(UnicodeTablesVersion(), "");
}

}  // namespace
}  // namespace mesa
