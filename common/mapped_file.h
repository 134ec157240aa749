// A read-only memory-mapped file. Owns the mapping; hands out views.
// Thread-safe after Open (the mapping is immutable).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mesa {

class MappedFile {
 public:
  // Maps `path` read-only. An empty file maps to an empty span.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  // Wraps a copy of `bytes` (for tests and fuzzers that have data in memory).
  static std::unique_ptr<MappedFile> FromBytes(absl::Span<const uint8_t> bytes,
                                               std::string name = "<memory>");
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  absl::Span<const uint8_t> bytes() const { return {data_, size_}; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Tells the kernel the pages wholly inside [p, p + n) are not needed now (a copy of
  // them was made): they leave this process's resident memory and are read back from
  // the page cache or disk if touched again. Contents never change. No-op for
  // in-memory data and for ranges outside the mapping.
  void DropPages(const void* p, size_t n) const;

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mmapped_ = false;
  std::unique_ptr<uint8_t[]> owned_;
  std::string path_;
};

}  // namespace mesa
