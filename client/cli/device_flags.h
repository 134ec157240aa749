// --device, shared by every command that runs the model (generate, logits, bench, run,
// eval, worker, cluster): where the forward pass runs. One definition so the commands
// cannot drift.
#pragma once

#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace mesa::cli {

// Adds --device cpu|cuda|cuda:N (default cpu); a malformed value is a usage error.
void AddDeviceFlag(CLI::App* cmd, std::string* device);
// The backend for --device with --threads CPU threads; a clear error when the device
// cannot be used (no CUDA in this build, no driver, no such device).
absl::StatusOr<std::unique_ptr<Backend>> OpenDevice(const std::string& device, int threads);

}  // namespace mesa::cli
