#include "worker/kv_peer.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace mesa::worker {

absl::StatusOr<std::unique_ptr<PeerLink>> JoinPeerGroup(PeerTransport& transport, PeerIdChannel& channel,
                                                        int rank, int n, absl::Time deadline) {
  PeerGroupId id;
  if (rank == 0) {
    absl::StatusOr<PeerGroupId> made = transport.NewGroupId();
    if (!made.ok()) return made.status();
    id = *made;
  }
  absl::StatusOr<PeerGroupId> shared = channel.Share(rank, id, deadline);
  if (!shared.ok()) {
    return absl::Status(shared.status().code(),
                        absl::StrCat("rank ", rank, ": sharing the group id: ", shared.status().message()));
  }
  return transport.Join(*shared, rank, n, deadline);
}

absl::StatusOr<PeerGroupId> InProcessIdChannel::Share(int rank, const PeerGroupId& id, absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (rank == 0) {
    id_ = id;
    cv_.notify_all();
    return id;
  }
  const auto until = absl::ToChronoTime(deadline);
  if (!cv_.wait_until(lock, until, [&] { return id_.has_value(); })) {
    return absl::DeadlineExceededError("rank 0 did not publish the group id in time");
  }
  return *id_;
}

}  // namespace mesa::worker
