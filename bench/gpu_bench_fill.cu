// Fills for gpu_bench (see gpu_bench_fill.h). Grid-stride loops, every launch checked.
#include <cuda_bf16.h>

#include "bench/gpu_bench_fill.h"

namespace mesa::bench {
namespace {

__device__ __forceinline__ float Uniform01(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // 24 bits: exact in f32
}

__global__ void FillF32Kernel(float* p, size_t n, uint64_t seed, float lo, float span) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    p[i] = lo + span * Uniform01(seed, i);
  }
}

__global__ void FillBf16Kernel(uint16_t* p, size_t n, uint64_t seed, float lo, float span) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    p[i] = __bfloat16_as_ushort(__float2bfloat16(lo + span * Uniform01(seed, i)));
  }
}

__global__ void Iota64Kernel(int64_t* p, size_t n, int64_t first) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    p[i] = first + static_cast<int64_t>(i);
  }
}

unsigned Blocks(size_t n) {
  const size_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 65535 ? (b ? b : 1) : 65535);
}

}  // namespace

cudaError_t FillUniformF32(float* p, size_t n, uint64_t seed, float lo, float hi, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillF32Kernel<<<Blocks(n), 256, 0, stream>>>(p, n, seed, lo, hi - lo);
  return cudaGetLastError();
}

cudaError_t FillUniformBf16(uint16_t* p, size_t n, uint64_t seed, float lo, float hi, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillBf16Kernel<<<Blocks(n), 256, 0, stream>>>(p, n, seed, lo, hi - lo);
  return cudaGetLastError();
}

cudaError_t FillIota64(int64_t* p, size_t n, int64_t first, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  Iota64Kernel<<<Blocks(n), 256, 0, stream>>>(p, n, first);
  return cudaGetLastError();
}

}  // namespace mesa::bench
