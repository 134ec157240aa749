#include "common/huge_buffer.h"

#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace mesa {

std::shared_ptr<uint8_t> AllocateHugeBuffer(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t size = (bytes + kHuge - 1) / kHuge * kHuge;
  if (size == 0) return nullptr;
  void* p = std::aligned_alloc(kHuge, size);
  if (p == nullptr) return nullptr;
#if defined(MADV_HUGEPAGE)
  ::madvise(p, size, MADV_HUGEPAGE);  // advice only: failure leaves ordinary pages
#endif
  std::memset(p, 0, size);
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [](uint8_t* q) { std::free(q); });
}

uint64_t AvailableMemoryBytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    unsigned long long kb = 0;
    if (std::sscanf(line.c_str(), "MemAvailable: %llu kB", &kb) == 1) return kb * 1024;
  }
  return 0;
}

}  // namespace mesa
