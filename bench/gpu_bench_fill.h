// Device-side fills for bench/gpu_bench.cc: pseudo-random values from a hash of the
// index (never zeros: a matrix unit runs faster on zeros than on real data).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace mesa::bench {

// p[i] = uniform in [lo, hi) from hash(seed, i).
cudaError_t FillUniformF32(float* p, size_t n, uint64_t seed, float lo, float hi, cudaStream_t stream);
// The same values rounded to bf16 (as uint16 bit patterns).
cudaError_t FillUniformBf16(uint16_t* p, size_t n, uint64_t seed, float lo, float hi, cudaStream_t stream);
// p[i] = first + i (positions).
cudaError_t FillIota64(int64_t* p, size_t n, int64_t first, cudaStream_t stream);

}  // namespace mesa::bench
