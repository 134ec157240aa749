// --device and --kv-type, shared by every command that runs the model (generate,
// logits, bench, run, eval, worker, cluster): where the forward pass runs and how the
// K/V cache keeps its numbers. One definition so the commands cannot drift.
#pragma once

#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace mesa::cli {

struct DeviceFlags {
  std::string device = "cpu";
  std::string kv_type = "auto";
};

// Adds --device cpu|cuda|cuda:N (default cpu) and --kv-type auto|f32|f16|bf16; a
// malformed value is a usage error.
void AddDeviceFlags(CLI::App* cmd, DeviceFlags* flags);
// --kv-transport grpc|socket|nccl for the commands that start workers (worker, cluster):
// how chunk K/V moves between workers (WorkerProcessOptions::kv_transport).
void AddKvTransportFlag(CLI::App* cmd, std::string* kv_transport);
// --kv-prefetch BYTES (K/M/G/T) for the same commands: how much chunk K/V a final task
// fetches ahead of laying it into its cache (WorkerProcessOptions::kv_prefetch_bytes).
void AddKvPrefetchFlag(CLI::App* cmd, std::string* kv_prefetch);
// --kv-links N for the same commands: the peer links a worker keeps at once
// (WorkerProcessOptions::kv_links; 0 = no bound).
void AddKvLinksFlag(CLI::App* cmd, int* kv_links);
// The backend for the flags with `threads` CPU threads; a clear error when the device
// cannot be used (no CUDA in this build, no driver, no such device) or cannot keep the
// K/V type asked for.
absl::StatusOr<std::unique_ptr<Backend>> OpenDevice(const DeviceFlags& flags, int threads);

}  // namespace mesa::cli
