// The CUDA plugin's device query through the CUDA runtime, cuBLAS and NCCL (nccl_version
// 0 in a build without NCCL). Any runtime error (no driver, no device) is reported as
// "no device", never as a crash.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#if defined(MESA_HAVE_NCCL)
#include <nccl.h>
#endif

#include <cstdio>
#include <cstring>

#include "kernels/cuda/device_query_abi.h"

extern "C" int MesaCudaQueryDevices(MesaCudaReportC* out) {
  std::memset(out, 0, sizeof(*out));
  cudaRuntimeGetVersion(&out->runtime_version);
#if defined(MESA_HAVE_NCCL)
  ncclGetVersion(&out->nccl_version);
#endif
  out->cublas_version = static_cast<int>(cublasGetCudartVersion());
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    std::snprintf(out->unavailable_reason, sizeof(out->unavailable_reason), "no CUDA device: %s",
                  cudaGetErrorString(err));
    cudaGetLastError();  // clear the sticky error
    return 0;
  }
  if (count == 0) {
    std::snprintf(out->unavailable_reason, sizeof(out->unavailable_reason),
                  "no CUDA device: the runtime found 0 devices");
    return 0;
  }
  for (int i = 0; i < count && out->n_devices < 16; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    MesaCudaDeviceC& d = out->devices[out->n_devices++];
    d.index = i;
    std::snprintf(d.name, sizeof(d.name), "%s", prop.name);
    d.cc_major = prop.major;
    d.cc_minor = prop.minor;
    d.total_memory_bytes = prop.totalGlobalMem;
    d.multiprocessors = prop.multiProcessorCount;
  }
  return 0;
}
