// Large read-mostly buffers (model weights) in transparent huge pages where the kernel
// offers them: streaming weights from DRAM through 2 MiB pages instead of 4 KiB ones
// saves the page walks (an F16 matrix-vector product read 31 GB/s from such memory
// against 27 GB/s from the file's memory map, on a 2-core Zen 4).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace mesa {

// Zero-filled, 2 MiB aligned, advised as huge pages (MADV_HUGEPAGE; plain pages where
// unsupported). Null on allocation failure.
std::shared_ptr<uint8_t> AllocateHugeBuffer(size_t bytes);

// Bytes of memory the system could give this process now (MemAvailable), or 0 if
// unknown.
uint64_t AvailableMemoryBytes();

}  // namespace mesa
