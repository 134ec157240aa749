// The CUDA backend, host side: loads the plugin (libmesa_cuda.so) and drives its op
// table (kernels/cuda/backend_abi.h). Compiled in every build; where the plugin, the
// CUDA libraries or a device is missing, MakeCudaBackend says which.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

struct MesaCudaBackendOps;  // kernels/cuda/backend_abi.h

namespace mesa {

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int device_index);

// The plugin's op table (backend_abi.h) and the context behind a backend that
// MakeCudaBackend made, for code that drives entries beyond kernels/backend.h (NCCL:
// worker/nccl_peer.h); null ops for any other backend. Valid while the backend lives.
struct CudaPluginContext {
  const ::MesaCudaBackendOps* ops = nullptr;
  void* ctx = nullptr;
  int device = -1;
};
CudaPluginContext CudaPluginContextOf(Backend& backend);

}  // namespace mesa
