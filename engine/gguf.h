// GGUF reader (versions 2 and 3): metadata of every value type, tensor infos, and
// memory-mapped tensor data. Every malformed input (truncation, bad counts, unknown
// types, overlapping or out-of-file tensors, bad alignment) is an InvalidArgument
// error that names the problem and the file; the reader never crashes or allocates
// unbounded memory on hostile input. Immutable after Open: thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "kernels/dtype.h"

namespace mesa {

enum class GgufType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5,
  kFloat32 = 6, kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11,
  kFloat64 = 12,
};
const char* GgufTypeName(GgufType t);

struct GgufValue;
struct GgufArray {
  GgufType elem_type = GgufType::kUint8;
  std::vector<GgufValue> items;
};

// One metadata value. Integers keep their signedness in the variant; use the
// GgufFile accessors for checked conversions.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string, GgufArray> value;
};

struct GgufTensorInfo {
  std::string name;
  DType type = DType::kF32;
  std::vector<int64_t> shape;  // ggml order: shape[0] is the contiguous (fastest) dim
  uint64_t offset = 0;         // from the start of the data section
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  int64_t elements() const;
};

class GgufFile {
 public:
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::unique_ptr<MappedFile> file);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return file_->path(); }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(const std::string& name) const;
  const GgufValue* Find(const std::string& key) const;
  // See MappedFile::DropPages (for tensor data copied elsewhere, e.g. repacked).
  void DropPages(const void* p, size_t n) const { file_->DropPages(p, n); }

  // Typed accessors: NotFound if the key is absent, InvalidArgument if its type does
  // not convert (integers convert between widths when the value fits).
  absl::StatusOr<std::string> GetString(const std::string& key) const;
  absl::StatusOr<int64_t> GetInt(const std::string& key) const;
  absl::StatusOr<double> GetFloat(const std::string& key) const;  // accepts integers too
  absl::StatusOr<bool> GetBool(const std::string& key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(const std::string& key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(const std::string& key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(const std::string& key) const;
  // Same, with a default when the key is absent (still an error on a wrong type).
  absl::StatusOr<int64_t> GetIntOr(const std::string& key, int64_t def) const;
  absl::StatusOr<double> GetFloatOr(const std::string& key, double def) const;
  absl::StatusOr<bool> GetBoolOr(const std::string& key, bool def) const;
  absl::StatusOr<std::string> GetStringOr(const std::string& key, std::string def) const;

 private:
  GgufFile() = default;
  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Writes GGUF v3 files: used by tests (random-weight models) and tools.
class GgufWriter {
 public:
  void SetValue(const std::string& key, GgufValue value);
  void SetString(const std::string& key, std::string v);
  void SetUint32(const std::string& key, uint32_t v);
  void SetInt32(const std::string& key, int32_t v);
  void SetFloat32(const std::string& key, float v);
  void SetBool(const std::string& key, bool v);
  void SetStringArray(const std::string& key, const std::vector<std::string>& v);
  void SetFloat32Array(const std::string& key, const std::vector<float>& v);
  void SetInt32Array(const std::string& key, const std::vector<int32_t>& v);
  // `shape` in ggml order (shape[0] contiguous); `bytes` must be RowBytes-consistent.
  void AddTensor(const std::string& name, DType type, std::vector<int64_t> shape,
                 std::vector<uint8_t> bytes);
  void set_alignment(uint64_t a) { alignment_ = a; }
  absl::Status Write(const std::string& path) const;
  std::vector<uint8_t> Serialize() const;

 private:
  struct PendingTensor {
    std::string name;
    DType type;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<PendingTensor> tensors_;
  uint64_t alignment_ = 32;
};

}  // namespace mesa
