// Tests for the GGUF reader and writer: round trips over every metadata value type and
// several tensor types, v2 files, alignment, and clear errors on malformed input.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/mapped_file.h"
#include "engine/gguf.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_path.h"

namespace mesa {
namespace {

absl::StatusOr<std::unique_ptr<GgufFile>> ParseBytes(const std::vector<uint8_t>& bytes) {
  return GgufFile::Parse(MappedFile::FromBytes(bytes, "test.gguf"));
}

std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 7);
  return b;
}

// A small file with every value type and a few tensor types.
GgufWriter FullWriter() {
  GgufWriter w;
  w.SetValue("t.u8", GgufValue{GgufType::kUint8, uint64_t{200}});
  w.SetValue("t.i8", GgufValue{GgufType::kInt8, int64_t{-100}});
  w.SetValue("t.u16", GgufValue{GgufType::kUint16, uint64_t{60000}});
  w.SetValue("t.i16", GgufValue{GgufType::kInt16, int64_t{-30000}});
  w.SetUint32("t.u32", 4000000000u);
  w.SetInt32("t.i32", -2000000000);
  w.SetFloat32("t.f32", 1.5f);
  w.SetBool("t.bool", true);
  w.SetString("t.str", "hello \xe2\x9c\x93");
  w.SetValue("t.u64", GgufValue{GgufType::kUint64, uint64_t{1} << 62});
  w.SetValue("t.i64", GgufValue{GgufType::kInt64, int64_t{-(int64_t{1} << 60)}});
  w.SetValue("t.f64", GgufValue{GgufType::kFloat64, 3.25});
  w.SetStringArray("t.strs", {"a", "", "ccc"});
  w.SetFloat32Array("t.floats", {0.5f, -1.0f});
  w.SetInt32Array("t.ints", {1, -2, 3});
  GgufArray inner1{GgufType::kUint8, {GgufValue{GgufType::kUint8, uint64_t{1}}}};
  GgufArray inner2{GgufType::kUint8, {}};
  GgufArray outer{GgufType::kArray,
                  {GgufValue{GgufType::kArray, inner1}, GgufValue{GgufType::kArray, inner2}}};
  w.SetValue("t.nested", GgufValue{GgufType::kArray, outer});
  w.AddTensor("f32", DType::kF32, {4, 3}, Bytes(48, 1));
  w.AddTensor("f16", DType::kF16, {8}, Bytes(16, 2));
  w.AddTensor("q8_0", DType::kQ8_0, {64, 2}, Bytes(2 * 2 * 34, 3));
  w.AddTensor("q4_k", DType::kQ4_K, {256, 1, 1, 2}, Bytes(2 * 144, 4));
  w.AddTensor("q6_k", DType::kQ6_K, {256}, Bytes(210, 5));
  w.AddTensor("bf16", DType::kBF16, {3}, Bytes(6, 6));
  return w;
}

void ExpectInvalid(const absl::StatusOr<std::unique_ptr<GgufFile>>& r, const std::string& needle) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), needle))
      << "message: " << r.status().message() << "\nexpected to contain: " << needle;
  EXPECT_TRUE(absl::StrContains(r.status().message(), "test.gguf")) << r.status();
}

size_t Find(const std::vector<uint8_t>& bytes, const std::string& s) {
  auto it = std::search(bytes.begin(), bytes.end(), s.begin(), s.end());
  return it == bytes.end() ? std::string::npos : static_cast<size_t>(it - bytes.begin());
}

template <typename T>
void Poke(std::vector<uint8_t>* bytes, size_t at, T v) {
  ASSERT_LE(at + sizeof(T), bytes->size());
  std::memcpy(bytes->data() + at, &v, sizeof(T));
}

TEST(GgufTest, RoundTripsEveryValueType) {
  auto f = ParseBytes(FullWriter().Serialize());
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(*g.GetInt("t.u8"), 200);
  EXPECT_EQ(*g.GetInt("t.i8"), -100);
  EXPECT_EQ(*g.GetInt("t.u16"), 60000);
  EXPECT_EQ(*g.GetInt("t.i16"), -30000);
  EXPECT_EQ(*g.GetInt("t.u32"), 4000000000LL);
  EXPECT_EQ(*g.GetInt("t.i32"), -2000000000);
  EXPECT_EQ(*g.GetFloat("t.f32"), 1.5);
  EXPECT_EQ(*g.GetBool("t.bool"), true);
  EXPECT_EQ(*g.GetString("t.str"), "hello \xe2\x9c\x93");
  EXPECT_EQ(*g.GetInt("t.u64"), int64_t{1} << 62);
  EXPECT_EQ(*g.GetInt("t.i64"), -(int64_t{1} << 60));
  EXPECT_EQ(*g.GetFloat("t.f64"), 3.25);
  EXPECT_EQ(*g.GetFloat("t.u32"), 4000000000.0);  // integers read as floats
  EXPECT_EQ(*g.GetStringArray("t.strs"), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(*g.GetFloatArray("t.floats"), (std::vector<float>{0.5f, -1.0f}));
  EXPECT_EQ(*g.GetIntArray("t.ints"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(g.Find("t.u8")->type, GgufType::kUint8);
  EXPECT_EQ(g.Find("t.f64")->type, GgufType::kFloat64);
  const GgufValue* nested = g.Find("t.nested");
  ASSERT_NE(nested, nullptr);
  const auto& outer = std::get<GgufArray>(nested->value);
  EXPECT_EQ(outer.elem_type, GgufType::kArray);
  ASSERT_EQ(outer.items.size(), 2u);
  const auto& in1 = std::get<GgufArray>(outer.items[0].value);
  ASSERT_EQ(in1.items.size(), 1u);
  EXPECT_EQ(std::get<uint64_t>(in1.items[0].value), 1u);
  EXPECT_TRUE(std::get<GgufArray>(outer.items[1].value).items.empty());

  ASSERT_EQ(g.tensors().size(), 6u);
  struct Want {
    const char* name;
    DType type;
    std::vector<int64_t> shape;
    size_t nbytes;
    uint8_t seed;
  };
  const Want wants[] = {{"f32", DType::kF32, {4, 3}, 48, 1},
                        {"f16", DType::kF16, {8}, 16, 2},
                        {"q8_0", DType::kQ8_0, {64, 2}, 136, 3},
                        {"q4_k", DType::kQ4_K, {256, 1, 1, 2}, 288, 4},
                        {"q6_k", DType::kQ6_K, {256}, 210, 5},
                        {"bf16", DType::kBF16, {3}, 6, 6}};
  for (const Want& want : wants) {
    const GgufTensorInfo* t = g.FindTensor(want.name);
    ASSERT_NE(t, nullptr) << want.name;
    EXPECT_EQ(t->type, want.type);
    EXPECT_EQ(t->shape, want.shape);
    EXPECT_EQ(t->nbytes, want.nbytes);
    EXPECT_EQ(t->offset % 32, 0u);
    EXPECT_EQ(std::vector<uint8_t>(t->data, t->data + t->nbytes), Bytes(want.nbytes, want.seed))
        << want.name;
  }
  EXPECT_EQ(g.FindTensor("f32")->elements(), 12);
  EXPECT_EQ(g.FindTensor("absent"), nullptr);
}

TEST(GgufTest, AccessorErrors) {
  auto f = ParseBytes(FullWriter().Serialize());
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(g.GetInt("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(g.GetInt("t.str").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetString("t.u32").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetBool("t.u8").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetStringArray("t.ints").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetIntArray("t.strs").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*g.GetIntOr("nope", 7), 7);
  EXPECT_EQ(*g.GetFloatOr("nope", 2.5), 2.5);
  EXPECT_EQ(*g.GetBoolOr("nope", true), true);
  EXPECT_EQ(*g.GetStringOr("nope", "x"), "x");
  EXPECT_FALSE(g.GetIntOr("t.str", 7).ok());
}

TEST(GgufTest, ReadsVersion2) {
  std::vector<uint8_t> bytes = FullWriter().Serialize();
  Poke<uint32_t>(&bytes, 4, 2);
  auto f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 2u);
  EXPECT_EQ((*f)->tensors().size(), 6u);
}

TEST(GgufTest, CustomAlignment) {
  GgufWriter w = FullWriter();
  w.set_alignment(256);
  auto f = ParseBytes(w.Serialize());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->alignment(), 256u);
  for (const GgufTensorInfo& t : (*f)->tensors()) {
    EXPECT_EQ(t.offset % 256, 0u);
    EXPECT_EQ((t.data - (*f)->tensors()[0].data) % 256, 0) << t.name;
  }
  EXPECT_EQ(std::vector<uint8_t>((*f)->FindTensor("q6_k")->data,
                                 (*f)->FindTensor("q6_k")->data + 210),
            Bytes(210, 5));
}

TEST(GgufTest, BadAlignmentRejected) {
  GgufWriter w;
  w.SetUint32("general.alignment", 48);
  ExpectInvalid(ParseBytes(w.Serialize()), "power of two");
  GgufWriter w2;
  w2.SetString("general.alignment", "32");
  ExpectInvalid(ParseBytes(w2.Serialize()), "general.alignment");
}

TEST(GgufTest, WritesAndOpensFiles) {
  const std::string path = testing::UniqueTempPath("gguf_test_roundtrip.gguf");
  ASSERT_TRUE(FullWriter().Write(path).ok());
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->path(), path);
  EXPECT_EQ((*f)->tensors().size(), 6u);
  EXPECT_FALSE(GgufFile::Open(path + ".missing").ok());
}

TEST(GgufTest, EveryTruncationIsAClearError) {
  const std::vector<uint8_t> full = FullWriter().Serialize();
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + n);
    auto r = ParseBytes(cut);
    // The last tensor's padding is not needed for the file to be complete.
    if (r.ok()) {
      EXPECT_GE(n, full.size() - 32) << "prefix of " << n << " bytes parsed";
      continue;
    }
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_TRUE(absl::StrContains(r.status().message(), "test.gguf")) << r.status();
  }
  GgufWriter w;
  w.SetUint32("a", 1);
  w.SetString("long", std::string(300, 'x'));
  const std::vector<uint8_t> two = w.Serialize();
  ExpectInvalid(ParseBytes(std::vector<uint8_t>(two.begin(), two.begin() + 200)),
                "truncated in metadata key 1 'long'");
}

TEST(GgufTest, BadMagicAndVersion) {
  std::vector<uint8_t> bytes = FullWriter().Serialize();
  std::vector<uint8_t> bad = bytes;
  bad[0] = 'X';
  ExpectInvalid(ParseBytes(bad), "bad magic");
  for (uint32_t v : {0u, 1u, 4u, 0xffffffffu}) {
    bad = bytes;
    Poke<uint32_t>(&bad, 4, v);
    ExpectInvalid(ParseBytes(bad), "unsupported GGUF version " + std::to_string(v));
  }
}

TEST(GgufTest, HugeCountsAreRejected) {
  std::vector<uint8_t> bytes = FullWriter().Serialize();
  std::vector<uint8_t> bad = bytes;
  Poke<uint64_t>(&bad, 8, uint64_t{1} << 60);
  ExpectInvalid(ParseBytes(bad), "tensor count");
  bad = bytes;
  Poke<uint64_t>(&bad, 16, ~uint64_t{0});
  ExpectInvalid(ParseBytes(bad), "metadata count");
  // String length of the first key.
  bad = bytes;
  Poke<uint64_t>(&bad, 24, uint64_t{1} << 40);
  ExpectInvalid(ParseBytes(bad), "truncated in metadata key 0");
  // Array count of "t.strs".
  bad = bytes;
  size_t at = Find(bad, "t.strs");
  ASSERT_NE(at, std::string::npos);
  Poke<uint64_t>(&bad, at + 6 + 4 + 4, uint64_t{1} << 59);
  ExpectInvalid(ParseBytes(bad), "array count");
}

TEST(GgufTest, UnknownValueAndTensorTypes) {
  std::vector<uint8_t> bytes = FullWriter().Serialize();
  std::vector<uint8_t> bad = bytes;
  size_t at = Find(bad, "t.u32");
  Poke<uint32_t>(&bad, at + 5, 13);
  ExpectInvalid(ParseBytes(bad), "unknown value type 13");
  bad = bytes;
  at = Find(bad, "t.strs");
  Poke<uint32_t>(&bad, at + 6 + 4, 77);
  ExpectInvalid(ParseBytes(bad), "unknown array element type 77");
  // Tensor "q6_k": name, n_dims, one dim, then the type.
  bad = bytes;
  at = Find(bad, "q6_k");
  Poke<uint32_t>(&bad, at + 4 + 4 + 8, 99);
  ExpectInvalid(ParseBytes(bad), "'q6_k' has unknown tensor type id 99");
}

TEST(GgufTest, BadTensorInfos) {
  std::vector<uint8_t> bytes = FullWriter().Serialize();
  const size_t at = Find(bytes, "f16");  // n_dims 1, dim 8, type f16
  std::vector<uint8_t> bad = bytes;
  Poke<uint32_t>(&bad, at + 3, 5);
  ExpectInvalid(ParseBytes(bad), "5 dimensions");
  bad = bytes;
  Poke<uint32_t>(&bad, at + 3, 0);
  ExpectInvalid(ParseBytes(bad), "0 dimensions");
  bad = bytes;
  Poke<int64_t>(&bad, at + 3 + 4, -8);
  ExpectInvalid(ParseBytes(bad), "non-positive dimension");
  bad = bytes;
  Poke<int64_t>(&bad, at + 3 + 4, int64_t{1} << 40);
  ExpectInvalid(ParseBytes(bad), "outside the data section");
  bad = bytes;
  Poke<int64_t>(&bad, at + 3 + 4, int64_t{1} << 62);
  ExpectInvalid(ParseBytes(bad), "overflow");
  // Offset past the end of the file.
  bad = bytes;
  Poke<uint64_t>(&bad, at + 3 + 4 + 8 + 4, uint64_t{1} << 40);
  ExpectInvalid(ParseBytes(bad), "outside the data section");
  // Offset not aligned.
  bad = bytes;
  Poke<uint64_t>(&bad, at + 3 + 4 + 8 + 4, 33);
  ExpectInvalid(ParseBytes(bad), "not a multiple of the alignment");
  // Overlapping with the first tensor.
  bad = bytes;
  Poke<uint64_t>(&bad, at + 3 + 4 + 8 + 4, 0);
  ExpectInvalid(ParseBytes(bad), "overlap");
}

TEST(GgufTest, OverflowingShape) {
  GgufWriter w;
  w.AddTensor("big", DType::kF32, {int64_t{1} << 40, int64_t{1} << 40}, {});
  ExpectInvalid(ParseBytes(w.Serialize()), "overflow");
}

TEST(GgufTest, RowNotMultipleOfBlock) {
  GgufWriter w;
  w.AddTensor("q", DType::kQ8_0, {16, 2}, Bytes(34, 0));
  ExpectInvalid(ParseBytes(w.Serialize()), "not a multiple of q8_0's block size 32");
}

TEST(GgufTest, DuplicatesRejected) {
  GgufWriter w;
  w.SetUint32("a", 1);
  w.SetUint32("b", 2);
  std::vector<uint8_t> bytes = w.Serialize();
  bytes[Find(bytes, "b")] = 'a';
  ExpectInvalid(ParseBytes(bytes), "duplicate metadata key 'a'");
  GgufWriter w2;
  w2.AddTensor("x", DType::kF32, {1}, Bytes(4, 0));
  w2.AddTensor("x", DType::kF32, {1}, Bytes(4, 0));
  ExpectInvalid(ParseBytes(w2.Serialize()), "duplicate tensor name 'x'");
}

TEST(GgufTest, DeepNestingRejected) {
  GgufValue v{GgufType::kUint8, uint64_t{0}};
  for (int i = 0; i < 20; ++i) {
    GgufArray a{v.type, {v}};
    v = GgufValue{GgufType::kArray, a};
  }
  GgufWriter w;
  w.SetValue("deep", v);
  ExpectInvalid(ParseBytes(w.Serialize()), "nested deeper");
}

TEST(GgufTest, RandomCorruptionNeverCrashes) {
  const std::vector<uint8_t> full = FullWriter().Serialize();
  std::mt19937 rng(1234);
  int parsed = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<uint8_t> b = full;
    const int flips = 1 + rng() % 4;
    for (int i = 0; i < flips; ++i) b[rng() % 700] = static_cast<uint8_t>(rng());
    auto r = ParseBytes(b);
    if (r.ok()) {
      ++parsed;
      // Touch every byte of every tensor: out-of-range views would fault (or trip ASan).
      unsigned sum = 0;
      for (const GgufTensorInfo& t : (*r)->tensors()) {
        for (uint64_t i = 0; i < t.nbytes; ++i) sum += t.data[i];
      }
      EXPECT_GE(sum, 0u);
    }
  }
  EXPECT_GT(parsed, 0);
}

}  // namespace
}  // namespace mesa
