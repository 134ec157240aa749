// Lists the CUDA devices visible to this process. Works in every build: without CUDA
// support compiled in, or with no usable GPU/driver, it says so instead of failing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mesa {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  uint64_t total_memory_bytes = 0;
  int multiprocessors = 0;
};

struct CudaDeviceReport {
  bool compiled_with_cuda = false;
  int runtime_version = 0;        // e.g. 13000
  int nccl_version = 0;           // e.g. 22703; 0: built without NCCL
  int cublas_version = 0;
  int backend_abi = 0;            // the plugin's backend op table ABI (0: none)
  int expected_backend_abi = 0;   // the ABI this build of mesa drives
  std::string unavailable_reason; // non-empty when no device can be used
  std::vector<CudaDeviceInfo> devices;
};

CudaDeviceReport QueryCudaDevices();

// The loaded plugin (dlopen handle; loaded once per process, never unloaded), or null
// with the reason in `why`. Looked for at $MESA_CUDA_PLUGIN, beside the executable,
// then where the build put it.
void* LoadCudaPlugin(std::string* why);

}  // namespace mesa
