// Device query through the CUDA runtime, cuBLAS and NCCL. Any runtime error (no
// driver, no device) is reported as "no device", never as a crash.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <string>

#include "kernels/cuda/device_query.h"

namespace mesa {

CudaDeviceReport QueryCudaDevices() {
  CudaDeviceReport report;
  report.compiled_with_cuda = true;
  cudaRuntimeGetVersion(&report.runtime_version);
  ncclGetVersion(&report.nccl_version);
  report.cublas_version = static_cast<int>(cublasGetCudartVersion());
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    report.unavailable_reason = std::string("no CUDA device: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error
    return report;
  }
  if (count == 0) {
    report.unavailable_reason = "no CUDA device: the runtime found 0 devices";
    return report;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    CudaDeviceInfo info;
    info.index = i;
    info.name = prop.name;
    info.cc_major = prop.major;
    info.cc_minor = prop.minor;
    info.total_memory_bytes = prop.totalGlobalMem;
    info.multiprocessors = prop.multiProcessorCount;
    report.devices.push_back(info);
  }
  return report;
}

}  // namespace mesa
