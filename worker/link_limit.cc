#include "worker/link_limit.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mesa::worker {

LinkLimit::LinkLimit(int max_links, std::function<void(const std::string&)> on_closed_for_room)
    : max_(std::max(0, max_links)), on_closed_(std::move(on_closed_for_room)) {}

absl::StatusOr<std::shared_ptr<LinkLimit::Place>> LinkLimit::Take(const std::string& peer,
                                                                  std::function<void()> close) {
  std::shared_ptr<Place> victim;
  std::shared_ptr<Place> place(new Place(peer, std::move(close)));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (max_ > 0 && static_cast<int>(places_.size()) >= max_) {
      auto lru = places_.end();
      for (auto it = places_.begin(); it != places_.end(); ++it) {
        if (!(*it)->busy_ && (lru == places_.end() || (*it)->last_used_ < (*lru)->last_used_)) lru = it;
      }
      if (lru == places_.end()) {
        return absl::ResourceExhaustedError(
            absl::StrCat("all ", max_, " peer links of this worker are in use (--kv-links)"));
      }
      victim = *lru;
      victim->live_ = false;
      places_.erase(lru);
      ++closed_;
    }
    place->last_used_ = ++tick_;
    places_.push_back(place);
  }
  if (victim) {
    if (victim->close_) victim->close_();
    if (on_closed_) on_closed_(victim->peer_);
  }
  return place;
}

bool LinkLimit::Begin(Place& place) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!place.live_) return false;
  place.busy_ = true;
  return true;
}

void LinkLimit::End(Place& place) {
  std::lock_guard<std::mutex> lock(mu_);
  place.busy_ = false;
  place.last_used_ = ++tick_;
}

void LinkLimit::Release(Place& place) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!place.live_) return;
  place.live_ = false;
  places_.erase(std::remove_if(places_.begin(), places_.end(), [&](const auto& p) { return p.get() == &place; }),
                places_.end());
}

int LinkLimit::live() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(places_.size());
}

int64_t LinkLimit::closed_for_room() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

}  // namespace mesa::worker
