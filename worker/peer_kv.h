// K/V between two workers over a peer link (worker/kv_peer.h: TCP, or NCCL between GPUs
// with the chunks staged through a backend per pair) with gRPC as the control plane: the
// PeerKv stream of mesa.v1.WorkerService (its protocol is written beside the message in
// worker_service.proto).
//
// The receiver (the worker that fetches, rank 0) opens one stream per holder and keeps
// it, with the pair's link, for as long as both live: the link is made once per pair
// (its group id travels on the stream, so the bootstrap needs no other channel) and
// carries every later chunk between them. Each chunk is one gather of the protocol in
// worker/kv_gather.h: the holder's offer (the manifest), then the manifest checked
// against the plan both sides build from it, one group of receives, CRC32C. So what is
// tested here over TCP is the code NCCL runs.
//
// Fallback: a holder without a link of the receiver's kind (a worker started with
// `--kv-transport grpc`, a CPU worker beside GPU ones, an older worker without PeerKv),
// or one the link cannot be made to (a firewall between hosts), is fetched from over
// the gRPC FetchKv stream instead, and asked again only after `retry_peer_ms`.
// A transfer that fails once the link is up is not retried another way: the fetch
// fails (fail closed; the final reports its source ABORTED and the coordinator
// recomputes the chunk) and the pair's link is dropped, to be made anew next time.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "mesa/v1/worker_service.grpc.pb.h"
#include "ops/metrics.h"
#include "worker/worker_metrics.h"
#include "worker/grpc_kv.h"
#include "worker/kv_peer.h"
#include "worker/kv_pool.h"
#include "worker/link_limit.h"
#include "kernels/backend.h"
#include "worker/kv_transport.h"

namespace mesa::worker {

// What one pair's link is made with: its transport and, for links over device memory
// (NCCL), the backend its bytes are staged through. Held chunks are host memory
// (ChunkKv), so over such a link the holder copies a chunk into `staging` buffers before
// it sends, and the receiver copies what it received out of them (then checks the
// holder's CRC32C on the host, which the link itself cannot). Each pair has its own
// endpoint, so pairs never share a stream. Members in destruction order: the
// transport (and the links made with it) before the backend they use.
struct PeerEndpoint {
  std::unique_ptr<Backend> staging;  // null for host-memory links
  std::shared_ptr<PeerTransport> transport;
};

// How a worker makes its pairs' endpoints. Thread-safe.
class PeerEndpoints {
 public:
  virtual ~PeerEndpoints() = default;
  // The links' kind, offered in the hello ("socket", "nccl").
  virtual std::string Name() const = 0;
  virtual absl::StatusOr<PeerEndpoint> Make() = 0;
};
// Host-memory links, all from one transport (sockets).
class SharedTransportEndpoints final : public PeerEndpoints {
 public:
  explicit SharedTransportEndpoints(std::shared_ptr<PeerTransport> transport) : transport_(std::move(transport)) {}
  std::string Name() const override { return transport_->Name(); }
  absl::StatusOr<PeerEndpoint> Make() override { return PeerEndpoint{nullptr, transport_}; }

 private:
  const std::shared_ptr<PeerTransport> transport_;
};

// Holder side: serves one PeerKv stream until the receiver closes it or the link dies.
// `endpoints` null: this worker has no peer links (the hello is answered
// FAILED_PRECONDITION, and the receiver falls back to FetchKv). `lookup` finds a held
// chunk (KvStreamingWorkerService's lookup). The link (and its endpoint) is this
// stream's alone: it ends with it. `limit` (null: none) is the worker's bound on live
// links, shared with its fetcher: a hello when every link is in use is answered
// RESOURCE_EXHAUSTED (the receiver falls back for that fetch), and an idle link closed to
// make room ends this call.
using PeerKvStream = grpc::ServerReaderWriterInterface<mesa::v1::PeerKvMessage, mesa::v1::PeerKvMessage>;
grpc::Status ServePeerKv(grpc::ServerContext* ctx, PeerKvStream* stream, PeerEndpoints* endpoints,
                         const KvStreamingWorkerService::Lookup& lookup,
                         const std::shared_ptr<LinkLimit>& limit = nullptr);

struct PeerKvFetcherOptions {
  // How links are made (required); their kind is offered to every holder.
  std::shared_ptr<PeerEndpoints> endpoints;
  // Used for holders that have no link of this kind (null: such fetches fail).
  std::shared_ptr<KvFetcher> fallback;
  // After a holder refused a link or it could not be made, fetch from it over the
  // fallback for this long before offering a link again.
  int64_t retry_peer_ms = 60000;
  // The largest chunk accepted (checked against the offer before allocating).
  int64_t max_kv_bytes = int64_t{8} << 30;
  // The receive memory (KvBufferPool); null: fresh memory per chunk.
  std::shared_ptr<KvBufferPool> kv_pool;
  // The control stream's channel: nullptr credentials = insecure.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  grpc::ChannelArguments channel_args;
  // Log each link made (kv.link), each refusal or failure to make one (kv.link_fallback)
  // and each link lost (kv.link_lost) through ops/log.h.
  bool log = false;
  // The worker's bound on live links, shared with its PeerKv handlers (null: none). A
  // link closed to make room is made anew at its pair's next fetch; when every link is
  // in use (here or at the holder) a fetch goes over the fallback, and the next asks again.
  std::shared_ptr<LinkLimit> link_limit;
  // Chunks of one holder a final asks for in one gather at most (MaxBatch; 1..64).
  int max_batch = 1;
  // Where the counters go (null: none): mesa_worker_kv_link_chunks_total{route="link" |
  // "fallback"} and mesa_worker_kv_links_total{event="made" | "refused" | "lost"}.
  std::shared_ptr<ops::Metrics> metrics;
};

// Thread-safe: fetches from different holders run at once, each over its own link;
// fetches from one holder take turns on its link.
class PeerKvFetcher final : public CrcCheckingKvFetcher {
 public:
  explicit PeerKvFetcher(PeerKvFetcherOptions options);
  ~PeerKvFetcher() override;

  // Errors say "PeerKv <key> from <address> over <transport>: ..." and keep the gather's
  // code (worker/kv_gather.h): DEADLINE_EXCEEDED, UNAVAILABLE, DATA_LOSS, NOT_FOUND, ...
  // A fallback fetch returns the fallback's result as it is. `*crc32c`: the holder's
  // CRC32C when the bytes were checked against it (always over a link; the fallback's
  // word otherwise).
  absl::StatusOr<std::shared_ptr<const ChunkKv>> FetchWithCrc(const std::string& address, const KvKey& key,
                                                              int64_t timeout_ms,
                                                              std::optional<uint32_t>* crc32c) override;
  // The chunks as one gather over the pair's link (one group of receives in `keys`'
  // order; PeerKv's fetch with more_keys), all or nothing, with the errors above naming
  // the first key and how many more. A holder without a link: the fallback's FetchMany.
  absl::StatusOr<std::vector<Fetched>> FetchMany(const std::string& address, absl::Span<const KvKey> keys,
                                                 int64_t timeout_ms) override;
  int MaxBatch() const override;  // options.max_batch, within 1..64

  struct Counts {
    int64_t peer_fetches = 0;      // chunks received over a link
    int64_t fallback_fetches = 0;  // chunks asked of the fallback
    int64_t links_made = 0;        // pairs joined
    int64_t links_lost = 0;        // links dropped after a failure
  };
  Counts counts() const;
  const std::string& transport() const { return transport_name_; }

 private:
  class Session;
  // Takes the pair's place under the link limit, opens its stream and joins the link.
  // `*busy`: it failed for want of a free link (here, or the holder said so), not refused.
  absl::Status MakeLink(const std::shared_ptr<Session>& session, const std::string& address, absl::Time deadline,
                        bool* busy);
  absl::StatusOr<std::vector<Fetched>> Fallback(const std::string& address, absl::Span<const KvKey> keys,
                                                int64_t timeout_ms, const absl::Status& why);
  std::shared_ptr<grpc::Channel> ChannelFor(const std::string& address);
  void CountLinkLost();  // counts() and the links_total{event="lost"} counter

  const PeerKvFetcherOptions options_;
  const std::string transport_name_;
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Session>> sessions_;     // guarded by mu_
  absl::flat_hash_map<std::string, std::shared_ptr<grpc::Channel>> channels_;  // guarded by mu_
  absl::flat_hash_map<std::string, absl::Time> no_peer_until_;              // guarded by mu_
  std::atomic<int64_t> peer_fetches_{0}, fallback_fetches_{0}, links_made_{0}, links_lost_{0};
  std::unique_ptr<KvLinkMetrics> counters_;  // null without options.metrics
};

}  // namespace mesa::worker
