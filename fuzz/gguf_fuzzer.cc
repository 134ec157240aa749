// libFuzzer target: the GGUF reader and the GGUF model config reader on arbitrary bytes.
// Every input must give a result or a clean error: no crash, hang or huge allocation.
#include <cstddef>
#include <cstdint>

#include "common/mapped_file.h"
#include "engine/gguf.h"
#include "engine/model_loader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = mesa::GgufFile::Parse(mesa::MappedFile::FromBytes({data, size}, "fuzz.gguf"));
  if (!file.ok()) return 0;
  // Touch what a loader would read.
  unsigned sum = 0;
  for (const mesa::GgufTensorInfo& t : (*file)->tensors()) {
    if (t.nbytes > 0) sum += t.data[0] + t.data[t.nbytes - 1];
    sum += static_cast<unsigned>(t.elements());
  }
  for (const auto& [key, value] : (*file)->metadata()) {
    (void)(*file)->GetInt(key);
    (void)(*file)->GetFloat(key);
    (void)(*file)->GetStringArray(key);
    (void)(*file)->GetIntArray(key);
    (void)(*file)->GetFloatArray(key);
  }
  (void)mesa::ConfigFromGguf(**file);
  return static_cast<int>(sum & 0);
}
