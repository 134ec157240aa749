#include "tests/testing/random_weights.h"

#include <cstring>

#include "kernels/ref/quant_ref.h"

namespace mesa::testing {

void StoreF16At(uint8_t* p, float f) {
  const uint16_t h = F32ToF16(f);
  std::memcpy(p, &h, 2);
}

float NonZero(std::mt19937& rng) {
  std::uniform_real_distribution<float> mag(0.05f, 1.0f);
  return (rng() & 1) ? mag(rng) : -mag(rng);
}

std::vector<uint8_t> RandomWeights(DType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const int64_t row_bytes = RowBytes(type, cols);
  std::vector<uint8_t> w(rows * row_bytes);
  std::vector<float> f(cols);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = w.data() + r * row_bytes;
    for (float& v : f) v = NonZero(rng);
    switch (type) {
      case DType::kF32:
        std::memcpy(row, f.data(), cols * 4);
        break;
      case DType::kF16:
        for (int64_t c = 0; c < cols; ++c) StoreF16At(row + 2 * c, f[c]);
        break;
      case DType::kBF16:
        for (int64_t c = 0; c < cols; ++c) {
          const uint16_t h = F32ToBF16(f[c]);
          std::memcpy(row + 2 * c, &h, 2);
        }
        break;
      case DType::kQ8_0:
        ref::QuantizeRowQ8_0(f.data(), row, cols);
        break;
      case DType::kQ4_0:
        ref::QuantizeRowQ4_0(f.data(), row, cols);
        break;
      default: {  // K-quants
        const int block_bytes = GetDTypeInfo(type).block_bytes;
        for (int64_t i = 0; i < row_bytes; ++i) row[i] = static_cast<uint8_t>(rng());
        std::uniform_real_distribution<float> scale(0.001f, 0.02f);
        for (int64_t b = 0; b < cols / 256; ++b) {
          uint8_t* blk = row + b * block_bytes;
          if (type == DType::kQ6_K) {
            StoreF16At(blk + 208, scale(rng));
          } else {
            StoreF16At(blk, scale(rng));
            StoreF16At(blk + 2, scale(rng));
          }
        }
      }
    }
  }
  return w;
}

}  // namespace mesa::testing
