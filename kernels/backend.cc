#include "kernels/backend.h"

#include <cctype>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"

namespace mesa {
namespace {

// -1: cpu; else the CUDA device index. Returns false on a malformed value.
bool ParseDevice(const std::string& device, int* cuda_index) {
  if (device == "cpu") {
    *cuda_index = -1;
    return true;
  }
  if (device == "cuda") {
    *cuda_index = 0;
    return true;
  }
  if (device.rfind("cuda:", 0) == 0) {
    const std::string n = device.substr(5);
    if (n.empty() || n.size() > 4) return false;
    for (char c : n) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    }
    return absl::SimpleAtoi(n, cuda_index);
  }
  return false;
}

}  // namespace

std::string DeviceSyntaxError(const std::string& device) {
  int index = 0;
  if (ParseDevice(device, &index)) return "";
  return absl::StrCat("unknown device '", device, "': expected cpu, cuda or cuda:N (N = 0, 1, ...)");
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, int threads) {
  int index = 0;
  if (!ParseDevice(device, &index)) return absl::InvalidArgumentError(DeviceSyntaxError(device));
  if (index < 0) return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(threads));
  return MakeCudaBackend(index);
}

}  // namespace mesa
