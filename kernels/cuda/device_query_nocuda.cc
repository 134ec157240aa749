#include "kernels/cuda/device_query.h"

namespace mesa {

CudaDeviceReport QueryCudaDevices() {
  CudaDeviceReport report;
  report.unavailable_reason = "this build of mesa was compiled without CUDA (MESA_WITH_CUDA=OFF or no toolkit found)";
  return report;
}

}  // namespace mesa
