// For the gpu-labelled tests: skip visibly where no CUDA device can be used, and
// helpers to move test data to and from the device.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mesa::cuda::testing {

// "" when a device is usable, else why not.
inline std::string NoDeviceReason() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("no CUDA device: ") + cudaGetErrorString(err);
  }
  if (count == 0) return "no CUDA device: the runtime found 0 devices";
  return "";
}

#define MESA_REQUIRE_GPU()                                              \
  do {                                                                  \
    const std::string mesa_reason = ::mesa::cuda::testing::NoDeviceReason(); \
    if (!mesa_reason.empty()) GTEST_SKIP() << mesa_reason;              \
  } while (0)

#define MESA_CUDA_OK(expr)                                                        \
  do {                                                                            \
    cudaError_t mesa_err = (expr);                                                \
    ASSERT_EQ(mesa_err, cudaSuccess) << #expr << ": " << cudaGetErrorString(mesa_err); \
  } while (0)

// Device copy of a host vector; freed by the owner.
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t n = 0;
  DeviceArray() = default;
  explicit DeviceArray(size_t count) : n(count) {
    if (cudaMalloc(&ptr, count * sizeof(T) + 1) != cudaSuccess) ptr = nullptr;
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    if (ptr && n) cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { if (ptr) cudaFree(ptr); }
  // Fills with NaN bytes (0xFF) so unwritten elements fail comparisons.
  void Poison() { if (ptr) cudaMemset(ptr, 0xFF, n * sizeof(T)); }
  std::vector<T> ToHost() const {
    std::vector<T> out(n);
    if (ptr && n) cudaMemcpy(out.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
    return out;
  }
};

}  // namespace mesa::cuda::testing
