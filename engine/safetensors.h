// Safetensors reader (Hugging Face weights): one memory-mapped file, or a sharded set
// described by model.safetensors.index.json. Like the GGUF reader it validates every
// length, offset and shape, so hostile files give InvalidArgument errors naming the
// file and the problem. Immutable after Open: thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "kernels/dtype.h"

namespace mesa {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;            // as written: "F32", "BF16", "I64", ...
  bool supported = false;       // dtype is F32, F16 or BF16 (then `type` is meaningful)
  DType type = DType::kF32;
  std::vector<int64_t> shape;   // row-major as written: shape.back() is contiguous
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  int64_t elements() const;
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(std::unique_ptr<MappedFile> file);

  const std::string& path() const { return file_->path(); }
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* Find(const std::string& name) const;
  // The optional "__metadata__" string map.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::unique_ptr<MappedFile> file_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a Hugging Face model directory: model.safetensors, or the shards
// listed in model.safetensors.index.json (shard names must be plain file names).
class SafetensorsModel {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsModel>> OpenDir(const std::string& dir);

  const SafetensorsTensor* Find(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  SafetensorsModel() = default;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsTensor*> index_;
};

}  // namespace mesa
