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

std::string KvTypeSyntaxError(const std::string& kv_type) {
  if (kv_type == "auto" || kv_type == "f32" || kv_type == "f16" || kv_type == "bf16") return "";
  return absl::StrCat("unknown K/V type '", kv_type, "': expected auto, f32, f16 or bf16");
}

absl::Status Backend::set_kv_type(DType type) {
  if (!SupportsKvType(type)) {
    return absl::InvalidArgumentError(absl::StrCat("the ", Name(), " backend cannot keep K/V as ",
                                                   std::string(DTypeName(type)),
                                                   Name() == "cpu" ? " (the CPU attention reads f32 K/V)" : ""));
  }
  kv_type_ = type;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, int threads,
                                                     const std::string& kv_type) {
  int index = 0;
  if (!ParseDevice(device, &index)) return absl::InvalidArgumentError(DeviceSyntaxError(device));
  if (std::string e = KvTypeSyntaxError(kv_type); !e.empty()) return absl::InvalidArgumentError(e);
  std::unique_ptr<Backend> backend;
  if (index < 0) {
    backend = std::make_unique<CpuBackend>(threads);
  } else {
    absl::StatusOr<std::unique_ptr<Backend>> cuda = MakeCudaBackend(index);
    if (!cuda.ok()) return cuda.status();
    backend = *std::move(cuda);
  }
  if (kv_type != "auto") {
    const DType t = kv_type == "f32" ? DType::kF32 : kv_type == "f16" ? DType::kF16 : DType::kBF16;
    if (absl::Status s = backend->set_kv_type(t); !s.ok()) return s;
  }
  return backend;
}

}  // namespace mesa
