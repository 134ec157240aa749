// PeerLink over TCP (host memory): the fallback for ranks without NCCL, and the
// transport the K/V gather protocol is tested over on machines without a GPU.
//
// Bootstrap: rank 0's transport listens (NewGroupId) and puts its address and a random
// 16-byte nonce in the group id. Every other rank listens too, connects to rank 0 with a
// hello (nonce, rank, n, its own address) and gets back everyone's addresses; then rank
// i connects to every rank 0 < j < i and accepts from every j > i, each connection
// opened with a hello. So each pair has exactly one connection, and a connection without
// the group's nonce is dropped. All of it by the Join deadline.
//
// Data: each message is a 24-byte header (magic, per-direction sequence number, byte
// count) and the bytes, written straight from and read straight into the posted
// buffers (nothing is read before its receive is posted: TCP's flow control holds the
// sender). A header whose byte count differs from the posted receive (the two ranks
// posted in different orders or sizes) fails the group with INVALID_ARGUMENT instead of
// hanging or half-filling. Run drives every connection of the group from the calling
// thread with poll(); Abort (any thread) wakes it and shuts the connections down, so
// the peers' operations fail at once rather than at their deadlines.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "worker/kv_peer.h"

namespace mesa::worker {

struct SocketPeerOptions {
  // The numeric IPv4 address this rank listens on and the others dial.
  std::string host = "127.0.0.1";
  // Called on Run's thread after bytes arrive from `peer`, with the bytes received from
  // it over the link's life (progress logs; tests that act mid-transfer).
  std::function<void(int peer, int64_t received)> on_received;
};

// Thread-safe. Holds rank 0's listening socket from NewGroupId until Join.
class SocketPeerTransport final : public PeerTransport {
 public:
  explicit SocketPeerTransport(SocketPeerOptions options = {});
  ~SocketPeerTransport() override;

  std::string Name() const override { return "socket"; }
  absl::StatusOr<PeerGroupId> NewGroupId() override;
  absl::StatusOr<std::unique_ptr<PeerLink>> Join(const PeerGroupId& id, int rank, int n,
                                                 absl::Time deadline) override;

 private:
  SocketPeerOptions options_;
  std::mutex mu_;
  absl::flat_hash_map<std::string, int> listening_;  // nonce -> rank 0's listening fd
};

}  // namespace mesa::worker
