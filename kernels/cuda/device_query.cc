// QueryCudaDevices(): loads the CUDA plugin (libmesa_cuda.so, built when the toolkit is
// found) with dlopen and asks it. Builds without CUDA, or machines where the plugin or
// the CUDA libraries cannot be loaded, get a report that says why.
#include "kernels/cuda/device_query.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "kernels/cuda/backend_abi.h"
#include "kernels/cuda/device_query_abi.h"

namespace mesa {
#ifdef MESA_CUDA_PLUGIN_PATH
namespace {

[[maybe_unused]] std::string ExecutableDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, n);
  return path.substr(0, path.rfind('/'));
}

}  // namespace
#endif  // MESA_CUDA_PLUGIN_PATH

void* LoadCudaPlugin(std::string* why) {
#ifndef MESA_CUDA_PLUGIN_PATH
  *why = "this build of mesa was compiled without CUDA (MESA_WITH_CUDA=OFF or no toolkit found)";
  return nullptr;
#else
  static std::mutex mu;
  static void* handle = nullptr;
  static std::string failure;
  std::lock_guard<std::mutex> lock(mu);
  if (handle) return handle;
  std::string tried;
  std::string candidates[] = {std::getenv("MESA_CUDA_PLUGIN") ? std::getenv("MESA_CUDA_PLUGIN") : "",
                              ExecutableDir() + "/libmesa_cuda.so", MESA_CUDA_PLUGIN_PATH};
  for (const std::string& c : candidates) {
    if (c.empty()) continue;
    handle = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle) return handle;  // stays loaded: the CUDA runtime does not like dlclose
    const char* e = dlerror();
    tried += "\n  " + c + ": " + (e ? e : "not loadable");
  }
  *why = "the CUDA plugin could not be loaded:" + tried;
  return nullptr;
#endif
}

CudaDeviceReport QueryCudaDevices() {
  CudaDeviceReport report;
#ifndef MESA_CUDA_PLUGIN_PATH
  report.unavailable_reason =
      "this build of mesa was compiled without CUDA (MESA_WITH_CUDA=OFF or no toolkit found)";
  return report;
#else
  report.compiled_with_cuda = true;
  report.expected_backend_abi = MESA_CUDA_BACKEND_ABI;
  void* handle = LoadCudaPlugin(&report.unavailable_reason);
  if (!handle) return report;
  using TableFn = const MesaCudaBackendOps* (*)();
  if (auto table = reinterpret_cast<TableFn>(dlsym(handle, "MesaCudaBackend"))) {
    if (const MesaCudaBackendOps* ops = table()) report.backend_abi = static_cast<int>(ops->abi_version);
  }
  using QueryFn = int (*)(MesaCudaReportC*);
  auto fn = reinterpret_cast<QueryFn>(dlsym(handle, "MesaCudaQueryDevices"));
  if (!fn) {
    report.unavailable_reason = "the CUDA plugin has no MesaCudaQueryDevices";
    return report;
  }
  MesaCudaReportC c;
  fn(&c);
  report.runtime_version = c.runtime_version;
  report.nccl_version = c.nccl_version;
  report.cublas_version = c.cublas_version;
  report.unavailable_reason = c.unavailable_reason;
  for (int i = 0; i < c.n_devices; ++i) {
    CudaDeviceInfo d;
    d.index = c.devices[i].index;
    d.name = c.devices[i].name;
    d.cc_major = c.devices[i].cc_major;
    d.cc_minor = c.devices[i].cc_minor;
    d.total_memory_bytes = c.devices[i].total_memory_bytes;
    d.multiprocessors = c.devices[i].multiprocessors;
    report.devices.push_back(d);
  }
  return report;
#endif
}

}  // namespace mesa
