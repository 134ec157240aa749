// Reference (scalar) quantizers for the block formats of kernels/dtype.h. They follow
// ggml's round-to-nearest reference quantizers, so tests and tools can make weight
// rows without a model file. The decoders live in kernels/matmul.h (ref::DequantizeRow).
#pragma once

#include <cstdint>

namespace mesa::ref {

// Quantizes n floats (n a multiple of 32) into n / 32 Q8_0 blocks (34 bytes each):
// d = max|x| / 127 stored as f16, q = round(x / d).
void QuantizeRowQ8_0(const float* x, void* out, int64_t n);

// Quantizes n floats (n a multiple of 32) into n / 32 Q4_0 blocks (18 bytes each):
// d = (the value of largest magnitude) / -8, q = min(15, trunc(x / d + 8.5)).
void QuantizeRowQ4_0(const float* x, void* out, int64_t n);

// Quantizes n floats (n a multiple of 256) into n / 256 Q4_K blocks (144 bytes each,
// ggml's layout): per sub-block of 32, x ~ d * sc * q - dmin * m with q in 0..15 and
// 6-bit sc, m; d and dmin (f16) per super-block of 256. Simple, not ggml's search:
// the min rounds up (so x + dmin * m >= 0) and the step rounds up (so q never clips),
// hence |x - DequantizeRow(x)| <= d * sc / 2 per element, d * sc <= (max - min(0,
// min)) / 15 + d + dmin / 15 of its sub-block.
void QuantizeRowQ4_K(const float* x, void* out, int64_t n);

// The 6-bit scale and min of sub-block j (of 8) from the 12 packed bytes of a Q4_K or
// Q5_K block (the bytes after d and dmin).
void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m);

}  // namespace mesa::ref
