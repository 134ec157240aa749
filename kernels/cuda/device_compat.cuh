// The few CUDA intrinsics the device headers (dequant.cuh, matvec_lanes.cuh) use, or —
// when MESA_CUDA_HOST_SIM is defined — host stand-ins with the same rounding, so that a
// CPU test (ops_basic_sim_test.cc) runs the very same decoding and lane-indexing code
// against the refs on machines without a GPU.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/dtype.h"

#ifdef MESA_CUDA_HOST_SIM

#define MESA_DEVICE inline
#define MESA_UNROLL
#define MESA_UNROLL4

namespace mesa::cuda::internal {
// Aligned loads of little-endian words (memcpy: no aliasing questions on the host).
inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline float LoadF32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}
// volatile: one rounding per operation, never contracted into an FMA.
inline float MulRn(float a, float b) {
  volatile float r = a * b;
  return r;
}
inline float SubRn(float a, float b) {
  volatile float r = a - b;
  return r;
}
inline float Fmaf(float a, float b, float c) { return std::fma(a, b, c); }
template <typename T>
inline T Ldg(const T* p) {
  return *p;
}
inline float F16BitsToF32(uint16_t h) { return F16ToF32(h); }
inline float F32FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace mesa::cuda::internal

#else

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define MESA_DEVICE __device__ __forceinline__
#define MESA_UNROLL _Pragma("unroll")
#define MESA_UNROLL4 _Pragma("unroll 4")  // several loads in flight per lane

namespace mesa::cuda::internal {
// Aligned loads (the callers guarantee the alignment; see RequiredAlignment).
MESA_DEVICE uint16_t LoadU16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
MESA_DEVICE uint32_t LoadU32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
MESA_DEVICE float LoadF32(const uint8_t* p) { return *reinterpret_cast<const float*>(p); }
MESA_DEVICE float MulRn(float a, float b) { return __fmul_rn(a, b); }
MESA_DEVICE float SubRn(float a, float b) { return __fsub_rn(a, b); }
MESA_DEVICE float Fmaf(float a, float b, float c) { return fmaf(a, b, c); }
template <typename T>
MESA_DEVICE T Ldg(const T* p) {
  return __ldg(p);
}
MESA_DEVICE float F16BitsToF32(uint16_t h) { return __half2float(__ushort_as_half(h)); }
MESA_DEVICE float F32FromBits(uint32_t u) { return __uint_as_float(u); }
}  // namespace mesa::cuda::internal

#endif
