// Tests for the safetensors reader: valid single and sharded files, the shared HF
// model, and clear errors on malformed headers.
#include "engine/safetensors.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_path.h"

namespace mesa {
namespace {

std::vector<uint8_t> Make(const std::string& header, size_t data_bytes) {
  const uint64_t n = header.size();
  std::vector<uint8_t> out(8 + n + data_bytes);
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), n);
  for (size_t i = 0; i < data_bytes; ++i) out[8 + n + i] = static_cast<uint8_t>(i);
  return out;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> ParseBytes(const std::vector<uint8_t>& b) {
  return SafetensorsFile::Parse(MappedFile::FromBytes(b, "test.safetensors"));
}

void ExpectInvalid(const std::vector<uint8_t>& b, const std::string& needle) {
  auto r = ParseBytes(b);
  ASSERT_FALSE(r.ok()) << needle;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), needle)) << r.status() << "\nwant: " << needle;
  EXPECT_TRUE(absl::StrContains(r.status().message(), "test.safetensors")) << r.status();
}

const char kGood[] =
    R"({"__metadata__":{"format":"pt"},)"
    R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
    R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},)"
    R"("c":{"dtype":"F16","shape":[],"data_offsets":[32,34]},)"
    R"("d":{"dtype":"I64","shape":[1],"data_offsets":[34,42]}})";

TEST(SafetensorsTest, ParsesValidFile) {
  auto r = ParseBytes(Make(kGood, 42));
  ASSERT_TRUE(r.ok()) << r.status();
  const SafetensorsFile& f = **r;
  EXPECT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const SafetensorsTensor* a = f.Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(a->supported);
  EXPECT_EQ(a->type, DType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->nbytes, 24u);
  EXPECT_EQ(a->data[1], 1);
  EXPECT_EQ(f.Find("b")->type, DType::kBF16);
  EXPECT_EQ(f.Find("b")->data[0], 24);
  EXPECT_EQ(f.Find("c")->type, DType::kF16);
  EXPECT_EQ(f.Find("c")->elements(), 1);
  EXPECT_FALSE(f.Find("d")->supported);
  EXPECT_EQ(f.Find("d")->dtype, "I64");
  EXPECT_EQ(f.Find("zz"), nullptr);
}

TEST(SafetensorsTest, MalformedHeaders) {
  ExpectInvalid({1, 2, 3}, "no header length");
  std::vector<uint8_t> b = Make(kGood, 42);
  uint64_t huge = uint64_t{1} << 60;
  std::memcpy(b.data(), &huge, 8);
  ExpectInvalid(b, "exceeds the file size");
  ExpectInvalid(Make("{not json", 0), "not valid JSON");
  ExpectInvalid(Make("[1,2]", 0), "not a JSON object");
  ExpectInvalid(Make(R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1), "unknown dtype 'Q4'");
  ExpectInvalid(Make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", 8), "need 4");
  ExpectInvalid(Make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 2), "outside the data buffer");
  ExpectInvalid(Make(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "non-negative");
  ExpectInvalid(Make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4), "outside");
  ExpectInvalid(Make(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "data_offsets");
  ExpectInvalid(Make(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})", 4),
                "overflow");
  ExpectInvalid(Make(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                     R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})", 8),
                "overlap");
  ExpectInvalid(Make(R"({"__metadata__":{"x":1}})", 0), "not a string");
  ExpectInvalid(Make(R"({"a":5})", 0), "not an object");
}

TEST(SafetensorsTest, TruncationsAndCorruptionNeverCrash) {
  const std::vector<uint8_t> good = Make(kGood, 42);
  for (size_t n = 0; n < good.size(); ++n) {
    auto r = ParseBytes(std::vector<uint8_t>(good.begin(), good.begin() + n));
    EXPECT_FALSE(r.ok()) << n;
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> b = good;
    b[rng() % b.size()] = static_cast<uint8_t>(rng());
    auto r = ParseBytes(b);
    if (r.ok()) {
      for (const auto& t : (*r)->tensors()) {
        unsigned s = 0;
        for (uint64_t k = 0; k < t.nbytes; ++k) s += t.data[k];
        EXPECT_GE(s, 0u);
      }
    }
  }
}

TEST(SafetensorsTest, ShardedDirectory) {
  const std::string dir = mesa::testing::UniqueTempPath("st_sharded");
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::vector<uint8_t>& b) {
    std::ofstream(dir + "/" + name, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
  };
  write("s1.safetensors", Make(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4));
  write("s2.safetensors", Make(R"({"y":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", 4));
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"metadata":{},"weight_map":{"x":"s1.safetensors","y":"s2.safetensors"}})";
  auto m = SafetensorsModel::OpenDir(dir);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->files().size(), 2u);
  ASSERT_NE((*m)->Find("y"), nullptr);
  EXPECT_EQ((*m)->Find("y")->type, DType::kF16);
  EXPECT_EQ((*m)->names(), (std::vector<std::string>{"x", "y"}));

  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map":{"x":"../etc/passwd"}})";
  auto bad = SafetensorsModel::OpenDir(dir);
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "plain file name")) << bad.status();
  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map":{"x":"missing.safetensors"}})";
  EXPECT_FALSE(SafetensorsModel::OpenDir(dir).ok());
}

TEST(SafetensorsTest, SharedHfModel) {
  const char* shared = std::getenv("MESA_SHARED_DIR");
  if (shared == nullptr) GTEST_SKIP() << "MESA_SHARED_DIR not set: shared models unavailable";
  const std::string dir = std::string(shared) + "/models/tinystories-656k-hf";
  if (!std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP() << dir << " absent";
  auto m = SafetensorsModel::OpenDir(dir);
  ASSERT_TRUE(m.ok()) << m.status();
  const SafetensorsTensor* t = (*m)->Find("model.layers.0.mlp.down_proj.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{128, 384}));
  EXPECT_EQ(t->type, DType::kF32);
}

}  // namespace
}  // namespace mesa
