// A bound on the peer links one worker keeps at once, at either end of a pair
// (`mesa worker --kv-links N`). Pairs are made at their first fetch and kept for the
// next (worker/peer_kv.h), and each costs while it lives: over NCCL a communicator
// (tens of MB of GPU memory; vLLM measured ~52 MB at 8 channels) and a staging backend
// with its own stream and buffers, over TCP a connection. Without a bound a worker in a
// cluster of N ends up with up to N-1 links as a receiver and as many as a holder.
//
// A new link takes a place. When every place is taken, the least recently used idle
// link is closed to make room (its closer runs on the thread that asked, outside this
// object's lock); when every link is in use, the new one is refused with
// RESOURCE_EXHAUSTED and the caller moves that chunk another way (FetchKv). A link is
// in use between Begin and End; a place is taken in use (the link is being made).
//
// Transport-free and thread-safe; tested alone (link_limit_test) and in peer_kv_test.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mesa::worker {

class LinkLimit {
 public:
  // One link's place. Opaque: pass it back to Begin, End and Release.
  class Place {
   private:
    friend class LinkLimit;
    Place(std::string peer, std::function<void()> close) : peer_(std::move(peer)), close_(std::move(close)) {}
    const std::string peer_;
    const std::function<void()> close_;
    bool busy_ = true;       // guarded by the limit's mutex
    bool live_ = true;       // false once released or closed for room
    uint64_t last_used_ = 0;
  };

  // At most `max_links` links at once; 0 or less: no bound. `on_closed_for_room`
  // (optional) runs after each link closed to make room (a counter, a log line).
  explicit LinkLimit(int max_links, std::function<void(const std::string& peer)> on_closed_for_room = nullptr);

  // A place for a new link with `peer` (for messages), in use until End. `close` ends
  // the link when it is chosen to make room: it is called at most once, after the place
  // has left this object (Begin on it returns false), from whichever thread asked for
  // room. It may block until the link's current holder lets go of it, but must not wait
  // for another Take.
  absl::StatusOr<std::shared_ptr<Place>> Take(const std::string& peer, std::function<void()> close);
  // Before using the link: false when it was closed to make room (use it no more).
  bool Begin(Place& place);
  // After using it: idle again, and the most recently used.
  void End(Place& place);
  // The link ended on its own (failed, its peer went, the worker stops): the place is
  // free. Idempotent; harmless after the place was closed for room.
  void Release(Place& place);

  int max_links() const { return max_; }
  int live() const;                 // places taken now
  int64_t closed_for_room() const;  // links closed to make room so far

 private:
  const int max_;
  const std::function<void(const std::string&)> on_closed_;
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<Place>> places_;  // guarded by mu_
  uint64_t tick_ = 0;                           // guarded by mu_
  int64_t closed_ = 0;                          // guarded by mu_
};

}  // namespace mesa::worker
