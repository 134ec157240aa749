// Pieces of ops.h shared by every kernel file.
#include "kernels/cuda/ops.h"

namespace mesa::cuda {

bool SupportedWeightType(DType type) {
  switch (type) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ4_0:
    case DType::kQ8_0:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return true;
    default:
      return false;
  }
}

}  // namespace mesa::cuda
