#include "client/cli/device_flags.h"

namespace mesa::cli {

void AddDeviceFlag(CLI::App* cmd, std::string* device) {
  cmd->add_option("--device", *device,
                  "Where the model runs: cpu, cuda (= cuda:0) or cuda:N (default cpu). CUDA needs a build "
                  "with the toolkit, the CUDA plugin next to the binary and a usable GPU; `mesa info` says "
                  "what this machine has")
      ->check([](const std::string& v) { return DeviceSyntaxError(v); })
      ->capture_default_str();
}

absl::StatusOr<std::unique_ptr<Backend>> OpenDevice(const std::string& device, int threads) {
  return MakeBackend(device, threads);
}

}  // namespace mesa::cli
