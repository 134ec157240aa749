#include "common/mapped_file.h"

#include <cstdio>
#include <fstream>

#include "gtest/gtest.h"
#include "tests/testing/temp_path.h"

namespace mesa {
namespace {

TEST(MappedFileTest, MapsContents) {
  std::string path = mesa::testing::UniqueTempPath("mapped_file_test.bin");
  { std::ofstream(path, std::ios::binary) << "hello"; }
  auto f = MappedFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*f)->data()), 5), "hello");
  std::remove(path.c_str());
}

TEST(MappedFileTest, MissingFileIsNotFound) {
  auto f = MappedFile::Open("/nonexistent/definitely/not/here.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(f.status().message().find("here.gguf"), std::string::npos);
}

TEST(MappedFileTest, DirectoryIsRejected) {
  auto f = MappedFile::Open("/tmp");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mesa
