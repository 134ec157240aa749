#include "worker/kv_prefetch.h"

#include <algorithm>
#include <chrono>

namespace mesa::worker {

KvPrefetcher::KvPrefetcher(KvFetcher& fetcher, std::vector<PrefetchRequest> requests, PrefetchOptions options)
    : fetcher_(fetcher), requests_(std::move(requests)), options_(options), done_(requests_.size()) {
  const size_t n = std::min(requests_.size(), static_cast<size_t>(std::max(1, options_.parallel)));
  threads_.reserve(n);
  for (size_t i = 0; i < n; ++i) threads_.emplace_back([this] { Loop(); });
}

KvPrefetcher::~KvPrefetcher() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void KvPrefetcher::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    // The next chunk to take is always started; any later one only within the window.
    cv_.wait(l, [&] {
      return stop_ || failed_ || next_start_ >= requests_.size() || next_start_ == next_take_ ||
             pending_bytes_ + requests_[next_start_].bytes <= options_.window_bytes;
    });
    if (stop_ || failed_ || next_start_ >= requests_.size()) return;
    const size_t i = next_start_++;
    pending_bytes_ += requests_[i].bytes;
    peak_bytes_ = std::max(peak_bytes_, pending_bytes_);
    l.unlock();

    const PrefetchRequest& r = requests_[i];
    const auto t0 = std::chrono::steady_clock::now();
    Prefetched got;
    got.index = i;
    got.kv = fetcher_.Fetch(r.address, r.key, std::max<int64_t>(1, options_.timeout_ms));
    got.fetch_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (got.kv.ok() && !*got.kv) got.kv = absl::DataLossError("the fetcher returned no K/V");

    l.lock();
    if (!got.kv.ok() && !failed_) failed_ = i;
    done_[i] = std::move(got);
    cv_.notify_all();
  }
}

Prefetched KvPrefetcher::Next() {
  std::unique_lock<std::mutex> l(mu_);
  auto refused = [&](std::string why) {
    Prefetched p;
    p.index = next_take_;
    p.kv = absl::FailedPreconditionError(std::move(why));
    return p;
  };
  if (failure_taken_) return refused("the prefetch already failed");
  if (next_take_ >= requests_.size()) return refused("every chunk was taken");
  cv_.wait(l, [&] { return failed_ || done_[next_take_].has_value(); });
  if (failed_) {
    failure_taken_ = true;
    return *std::move(done_[*failed_]);
  }
  Prefetched p = *std::move(done_[next_take_]);
  done_[next_take_].reset();
  pending_bytes_ -= requests_[next_take_].bytes;
  ++next_take_;
  l.unlock();
  cv_.notify_all();
  return p;
}

int64_t KvPrefetcher::peak_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return peak_bytes_;
}

}  // namespace mesa::worker
