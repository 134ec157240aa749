// The CUDA backend, host side: loads the plugin (libmesa_cuda.so) and drives its op
// table (kernels/cuda/backend_abi.h). Compiled in every build; where the plugin, the
// CUDA libraries or a device is missing, MakeCudaBackend says which.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace mesa {

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int device_index);

}  // namespace mesa
