// Point-to-point links within a group of workers (ranks 0..n-1), the layer K/V moves
// over between GPUs (NCCL: worker/nccl_peer.h) or between hosts without NCCL (TCP:
// worker/socket_peer.h). Transport-free: the gather protocol (worker/kv_gather.h) is
// written against this interface and tested over sockets.
//
// The rules are NCCL's, so that code correct over one transport is correct over both:
// - No tags, no "any source": the k-th send from rank a to rank b matches the k-th
//   receive at b from a, counted over the link's whole life. Sizes must be equal; a
//   mismatch is the caller's bug (NCCL may hang or half-fill; the socket link detects
//   it). Protocols agree sizes and order on a control plane BEFORE posting.
// - Operations are posted as one group (Run): sends and receives to and from many peers
//   progress together, so two ranks that send to each other in one group cannot
//   deadlock.
// - One deadline per group. When it passes, or on any error, the link aborts: it is
//   dead from then on (every later call fails at once; status() says why) and its peers
//   see their own operations fail. A new group needs a new link.
#pragma once

#include <array>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace mesa::worker {

// The bootstrap secret of one group (NCCL: ncclUniqueId, 128 bytes), made by rank 0 and
// handed to the other ranks by a control plane (PeerIdChannel).
struct PeerGroupId {
  std::array<uint8_t, 128> bytes{};
  bool operator==(const PeerGroupId&) const = default;
};

struct PeerOp {
  enum class Kind { kSend, kRecv };
  Kind kind = Kind::kSend;
  int peer = 0;             // may be this rank (a send to self matches a receive from self)
  void* data = nullptr;     // the link's memory kind (PeerLink::HostMemory)
  int64_t bytes = 0;        // > 0
  static PeerOp Send(int peer, const void* data, int64_t bytes) {
    return {Kind::kSend, peer, const_cast<void*>(data), bytes};
  }
  static PeerOp Recv(int peer, void* data, int64_t bytes) { return {Kind::kRecv, peer, data, bytes}; }
};

// One rank's end of a group's links. Not thread-safe, except Abort and status, which
// any thread may call while Run is in progress (Run then returns at once).
class PeerLink {
 public:
  virtual ~PeerLink() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "socket" or "nccl" (for messages and logs).
  virtual std::string Transport() const = 0;
  // PeerOp::data is host memory (true) or the backend's device memory (false).
  virtual bool HostMemory() const = 0;

  // Posts `ops` as one group and waits until all completed or `deadline` passed. On
  // failure the link is aborted and the status names the peer (and, where the transport
  // knows it, the failing op: *failed_op = its index in `ops`, else -1). Codes:
  // DEADLINE_EXCEEDED (the deadline passed), UNAVAILABLE (a peer's connection broke),
  // INVALID_ARGUMENT (a bad op, or sizes that do not match the peer's), INTERNAL (the
  // transport failed), FAILED_PRECONDITION (the link was already dead).
  virtual absl::Status Run(absl::Span<const PeerOp> ops, absl::Time deadline, int* failed_op) = 0;
  absl::Status Run(absl::Span<const PeerOp> ops, absl::Time deadline) { return Run(ops, deadline, nullptr); }

  // Ends the link now (idempotent; the first reason sticks).
  virtual void Abort(const absl::Status& why) = 0;
  // OK while the link lives; the reason it died afterwards.
  virtual absl::Status status() const = 0;
};

// How rank 0's group id reaches the others: the coordinator's gRPC for workers started
// by hand or by Kubernetes, MPI_Bcast under mpirun, a shared object in tests. Every
// rank calls Share once per group: rank 0 with its id (which it returns), the others
// with anything (they get rank 0's), all by `deadline` (DEADLINE_EXCEEDED otherwise).
class PeerIdChannel {
 public:
  virtual ~PeerIdChannel() = default;
  virtual absl::StatusOr<PeerGroupId> Share(int rank, const PeerGroupId& id, absl::Time deadline) = 0;
};

// Makes links of one kind. Thread-safe.
class PeerTransport {
 public:
  virtual ~PeerTransport() = default;
  // "socket" or "nccl": the kind of the links it makes (PeerLink::Transport).
  virtual std::string Name() const = 0;
  // Rank 0 only: a fresh group id (the transport may hold resources for it until Join).
  virtual absl::StatusOr<PeerGroupId> NewGroupId() = 0;
  // This rank's link of the group `id` of `n` ranks; every rank joins by `deadline`.
  virtual absl::StatusOr<std::unique_ptr<PeerLink>> Join(const PeerGroupId& id, int rank, int n,
                                                         absl::Time deadline) = 0;
};

// The whole bootstrap: rank 0 makes the id, `channel` shares it, every rank joins.
absl::StatusOr<std::unique_ptr<PeerLink>> JoinPeerGroup(PeerTransport& transport, PeerIdChannel& channel,
                                                        int rank, int n, absl::Time deadline);

// A PeerIdChannel for ranks that are threads of one process (tests, and `mesa run`).
// Thread-safe; one group per object.
class InProcessIdChannel final : public PeerIdChannel {
 public:
  absl::StatusOr<PeerGroupId> Share(int rank, const PeerGroupId& id, absl::Time deadline) override;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<PeerGroupId> id_;
};

}  // namespace mesa::worker
