#include "client/cli/device_flags.h"

#include "client/cli/server_util.h"

namespace mesa::cli {

void AddKvTransportFlag(CLI::App* cmd, std::string* kv_transport) {
  cmd->add_option("--kv-transport", *kv_transport,
                  "How chunk K/V moves between workers: grpc (FetchKv streams), socket (one TCP link per pair "
                  "of workers, made once and reused) or nccl (one NCCL link per pair of GPU workers, --device "
                  "cuda only; never yet run on a GPU); a holder without a link of this kind is fetched from "
                  "over grpc. socket and nccl are unencrypted: not with TLS")
      ->check(CLI::IsMember({"grpc", "socket", "nccl"}))
      ->capture_default_str();
}

void AddKvPrefetchFlag(CLI::App* cmd, std::string* kv_prefetch) {
  cmd->add_option("--kv-prefetch", *kv_prefetch,
                  "Chunk K/V a final task fetches ahead (suffix K/M/G/T): its remote chunks start moving, up to 4 "
                  "at once, while it computes its anchor and lays earlier chunks into its cache; memory beyond "
                  "--kv-memory. 0: one chunk at a time")
      ->check([](const std::string& v) {
        absl::StatusOr<int64_t> bytes = ParseBytes(v);
        return bytes.ok() ? std::string() : std::string(bytes.status().message());
      })
      ->capture_default_str();
}

void AddKvLinksFlag(CLI::App* cmd, int* kv_links) {
  cmd->add_option("--kv-links", *kv_links,
                  "With --kv-transport socket|nccl: peer links this worker keeps at once, those it made and those "
                  "made to it together (each NCCL link holds a communicator and a staging stream on the GPU). The "
                  "least recently used idle link is closed to make room; when all are busy, a chunk moves over "
                  "gRPC instead. 0: no bound")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

void AddDeviceFlags(CLI::App* cmd, DeviceFlags* flags) {
  cmd->add_option("--device", flags->device,
                  "Where the model runs: cpu, cuda (= cuda:0) or cuda:N. CUDA needs a build with the toolkit, "
                  "the CUDA plugin next to the binary and a usable GPU; `mesa info --devices` says what this "
                  "machine has")
      ->check([](const std::string& v) { return DeviceSyntaxError(v); })
      ->capture_default_str();
  cmd->add_option("--kv-type", flags->kv_type,
                  "Element type of the K/V cache: auto (f32 on the CPU, bf16 on a GPU), f32, f16 or bf16 "
                  "(the CPU keeps f32 only)")
      ->check([](const std::string& v) { return KvTypeSyntaxError(v); })
      ->capture_default_str();
}

absl::StatusOr<std::unique_ptr<Backend>> OpenDevice(const DeviceFlags& flags, int threads) {
  return MakeBackend(flags.device, threads, flags.kv_type);
}

}  // namespace mesa::cli
