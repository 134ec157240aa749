// libFuzzer target: the safetensors reader on arbitrary bytes. Every input must give a
// result or a clean error: no crash, exception, hang or huge allocation.
#include <cstddef>
#include <cstdint>

#include "common/mapped_file.h"
#include "engine/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = mesa::SafetensorsFile::Parse(mesa::MappedFile::FromBytes({data, size}, "fuzz.safetensors"));
  if (!file.ok()) return 0;
  unsigned sum = 0;
  for (const mesa::SafetensorsTensor& t : (*file)->tensors()) {
    if (t.nbytes > 0) sum += t.data[0] + t.data[t.nbytes - 1];
  }
  return static_cast<int>(sum & 0);
}
