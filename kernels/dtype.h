// Element and block types of weight tensors. The numeric values are ggml's type ids
// (GGUF stores them), so a GGUF tensor's type maps to DType by value.
#pragma once

#include <cstdint>
#include <string_view>

namespace mesa {

enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

struct DTypeInfo {
  DType type;
  std::string_view name;   // ggml's name: "f32", "q4_K", ...
  int block_elems;         // elements per block (1 for plain floats)
  int block_bytes;         // bytes per block
  bool supported;          // Mesa can compute with it
};

// Info for a ggml type id, or nullptr for an id Mesa does not know at all.
const DTypeInfo* FindDTypeInfo(uint32_t ggml_type);
// Info for a known DType (never null).
const DTypeInfo& GetDTypeInfo(DType type);
inline std::string_view DTypeName(DType t) { return GetDTypeInfo(t).name; }

// Bytes of a row of `n` elements; n must be a multiple of the block size.
inline int64_t RowBytes(DType t, int64_t n) {
  const DTypeInfo& info = GetDTypeInfo(t);
  return n / info.block_elems * info.block_bytes;
}

// IEEE half and bfloat16 conversions (round-to-nearest-even).
float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);
inline float BF16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
uint16_t F32ToBF16(float f);

}  // namespace mesa
