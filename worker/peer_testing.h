// Test helper: a group of n socket links on loopback, one per rank, joined from n
// threads through the real bootstrap (JoinPeerGroup + InProcessIdChannel).
#pragma once

#include <memory>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/kv_peer.h"
#include "worker/socket_peer.h"

namespace mesa::worker {

// Runs fn(rank) on n threads at once and waits for all.
template <typename Fn>
void OnRanks(int n, Fn fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&fn, r] { fn(r); });
  for (std::thread& t : threads) t.join();
}

inline absl::StatusOr<std::vector<std::unique_ptr<PeerLink>>> MakeSocketGroup(int n, SocketPeerOptions options = {}) {
  SocketPeerTransport transport(std::move(options));
  InProcessIdChannel channel;
  std::vector<absl::StatusOr<std::unique_ptr<PeerLink>>> got(n);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  OnRanks(n, [&](int r) { got[r] = JoinPeerGroup(transport, channel, r, n, deadline); });
  std::vector<std::unique_ptr<PeerLink>> links;
  for (auto& g : got) {
    if (!g.ok()) return g.status();
    links.push_back(*std::move(g));
  }
  return links;
}

}  // namespace mesa::worker
