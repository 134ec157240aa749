// Random weight matrices in any supported DType, for kernel tests and benchmarks.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/dtype.h"

namespace mesa::testing {

// Writes f as an f16 at p (unaligned), as GGUF blocks store their scales.
void StoreF16At(uint8_t* p, float f);

// Uniform in +-[0.05, 1]: never zero, so every element contributes.
float NonZero(std::mt19937& rng);

// A random `rows` x `cols` matrix in `type`, row after row: float types from NonZero
// floats; 32-blocks from the reference quantizers; K-quant blocks from random bytes with
// sane f16 scales (every bit pattern of the quants and packed scales is valid).
std::vector<uint8_t> RandomWeights(DType type, int64_t rows, int64_t cols, std::mt19937& rng);

}  // namespace mesa::testing
