// K/V over gRPC (the FetchKv server stream of mesa.v1.WorkerService): the server side
// streams one chunk's manifest then its bytes in ~1 MiB KvData pieces (worker/kv_wire.h);
// the client side, GrpcKvFetcher, reads such a stream into a KvAssembler under a
// deadline. A fetch returns the whole, CRC-checked cache or an error whose message names
// the peer and the key: never a partial or corrupt cache, never a wait without a limit.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/mesa_phases.h"
#include "mesa/v1/worker_service.grpc.pb.h"
#include "worker/kv_transport.h"
#include "worker/kv_wire.h"

namespace mesa::worker {

void ToProto(const KvKey& key, mesa::v1::KvKey* out);
KvKey FromProto(const mesa::v1::KvKey& key);
void ToProto(const KvManifestInfo& manifest, mesa::v1::KvManifest* out);
KvManifestInfo FromProto(const mesa::v1::KvManifest& manifest);

namespace internal {
// One raw message of a FetchKv stream (as GrpcKvFetcher receives it) into `kv`: the
// manifest starts the assembler (KvAssembler::Start with max_bytes and pool), data
// pieces are added to it. DATA_LOSS for a message that does not parse, a second
// manifest, data before the manifest or an empty message; the assembler's errors pass
// through. Exposed for the RPC fuzzer (fuzz/rpc_fuzzer.cc).
absl::Status AcceptKvMessage(const grpc::ByteBuffer& buffer, int64_t max_bytes, KvBufferPool* pool,
                             std::optional<KvAssembler>& kv);
// The same for lane `lane` > 0 of a fetch whose lane 0 started `kv`: the lane's own
// manifest first (it must equal lane 0's, else DATA_LOSS), then its pieces.
absl::Status AcceptKvLaneMessage(const grpc::ByteBuffer& buffer, int lane, KvAssembler& kv,
                                 bool& manifest_seen);
}  // namespace internal

// What a FetchKv request asks for: lane `lane` of up to `lanes` (FetchKvRequest).
struct KvLaneAsk {
  int lane = 0;
  int lanes = 0;
};
KvLaneAsk LaneAsk(const mesa::v1::FetchKvRequest& request);

// Writes `kv` to a FetchKv stream: the manifest, then pieces of `piece_bytes` in order:
// all of them, or the share of the lane asked for (lane 0 decides the number of lanes,
// KvLanesFor; a lane out of range is INVALID_ARGUMENT).
// CANCELLED when the client cancels or goes away midway; INTERNAL when `kv`'s vectors do
// not match its shape (a caller's bug: refuse rather than send what a receiver rejects).
// `crc32c`, when given, must be KvCrc32c(kv) (computed when the chunk was stored); else
// it is computed here. Blocks the calling (sync-server) thread for the whole transfer.
//
// Two writers, one stream: a KvMessage writer (any generated FetchKv handler) gets each
// piece copied into a message; the raw writer of KvStreamingWorkerService gets messages
// whose piece bytes are slices of `kv`'s own memory, which the slices keep alive, so that
// the only copy on the sending side is the kernel's.
grpc::Status ServeKvStream(const ChunkKv& kv, grpc::ServerContext* ctx,
                           grpc::ServerWriterInterface<mesa::v1::KvMessage>* writer,
                           int64_t piece_bytes = kKvPieceBytes,
                           std::optional<uint32_t> crc32c = std::nullopt, KvLaneAsk ask = {});
using RawKvStream = grpc::ServerReaderWriterInterface<grpc::ByteBuffer, mesa::v1::FetchKvRequest>;
grpc::Status ServeKvStream(std::shared_ptr<const ChunkKv> kv, grpc::ServerContext* ctx,
                           RawKvStream* writer, int64_t piece_bytes = kKvPieceBytes,
                           std::optional<uint32_t> crc32c = std::nullopt, KvLaneAsk ask = {});

// A WorkerService whose FetchKv is served by the raw ServeKvStream above (the same
// messages on the wire as a generated handler sends; clients see no difference): derive
// the service from this instead of WorkerService::Service, and give it how to find a
// chunk. A request without a key is INVALID_ARGUMENT; lookup errors keep their code.
class KvStreamingWorkerService : public mesa::v1::WorkerService::Service {
 public:
  struct Held {
    std::shared_ptr<const ChunkKv> kv;
    std::optional<uint32_t> crc32c;  // KvCrc32c(*kv) when the holder has it
  };
  using Lookup = std::function<absl::StatusOr<Held>(const KvKey&)>;
  explicit KvStreamingWorkerService(Lookup lookup, int64_t piece_bytes = kKvPieceBytes);

  // Not called: FetchKv's handler is the raw one (final, so that no subclass overrides
  // it in vain).
  grpc::Status FetchKv(grpc::ServerContext* ctx, const mesa::v1::FetchKvRequest* request,
                       grpc::ServerWriter<mesa::v1::KvMessage>* writer) final;

 protected:
  // How a chunk is found (for other handlers that serve held chunks: PeerKv).
  const Lookup& lookup() const { return lookup_; }

 private:
  grpc::Status ServeRaw(grpc::ServerContext* ctx, RawKvStream* stream);

  const Lookup lookup_;
  const int64_t piece_bytes_;
};

struct GrpcKvFetcherOptions {
  // The largest cache a fetch accepts (checked against the manifest before allocating).
  int64_t max_kv_bytes = int64_t{8} << 30;
  // Per message; pieces are ~1 MiB, so this leaves room without accepting anything.
  int max_receive_message_bytes = 8 << 20;
  // nullptr = insecure (loopback and trusted cluster networks only).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Further channel arguments (keepalive, HTTP/2 windows); the receive limit above is
  // set on top of them.
  grpc::ChannelArguments channel_args;
  // Where a fetch gets the memory it receives into, and where the chunk's memory goes
  // back when its last reference drops (KvBufferPool::Share); nullptr: fresh memory per
  // fetch, freed with the chunk.
  std::shared_ptr<KvBufferPool> kv_pool;
  // The most streams one fetch uses at once, each on its own connection (the sender uses
  // fewer for small chunks: one per 4 MiB, KvLanesFor). 1 = one stream. 2: the best of
  // 1, 2, 4 and 8 on 2-core loopback (bench/results/kv_transfer.md).
  int lanes = 2;
};

// Thread-safe: concurrent Fetch calls share the channels of an address (one per lane,
// each its own connection, created on first use, kept for the fetcher's lifetime). A
// fetch over several lanes reads lane 0 on the calling thread and each other lane on a
// thread of its own; an error on any lane cancels the others.
class GrpcKvFetcher : public CrcCheckingKvFetcher {
 public:
  explicit GrpcKvFetcher(GrpcKvFetcherOptions options = {});

  // Errors keep the stream's code (DEADLINE_EXCEEDED, UNAVAILABLE, NOT_FOUND, ... from
  // the call; DATA_LOSS, INVALID_ARGUMENT, RESOURCE_EXHAUSTED from the checks) and say
  // "FetchKv <key> from <address>: ...". timeout_ms must be positive. `*crc32c`: the
  // manifest's CRC32C, which the assembled bytes were checked against.
  absl::StatusOr<std::shared_ptr<const ChunkKv>> FetchWithCrc(const std::string& address, const KvKey& key,
                                                              int64_t timeout_ms,
                                                              std::optional<uint32_t>* crc32c) override;

 private:
  std::shared_ptr<grpc::Channel> ChannelFor(const std::string& address, int lane);

  const GrpcKvFetcherOptions options_;
  std::mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<grpc::Channel>> channels_;  // guarded by mu_
};

}  // namespace mesa::worker
