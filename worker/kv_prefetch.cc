#include "worker/kv_prefetch.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace mesa::worker {

KvPrefetcher::KvPrefetcher(KvFetcher& fetcher, std::vector<PrefetchRequest> requests, PrefetchOptions options)
    : fetcher_(fetcher),
      requests_(std::move(requests)),
      options_(options),
      started_(requests_.size(), false),
      done_(requests_.size()) {
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
  if (options_.pending_gauge) options_.pending_gauge->fetch_sub(pending_bytes_);
}

void KvPrefetcher::AddPendingLocked(int64_t bytes) {
  pending_bytes_ += bytes;
  peak_bytes_ = std::max(peak_bytes_, pending_bytes_);
  if (options_.pending_gauge) options_.pending_gauge->fetch_add(bytes);
}

bool KvPrefetcher::MayStartLocked(size_t i) const {
  return i == next_take_ || pending_bytes_ + requests_[i].bytes <= options_.window_bytes;
}

void KvPrefetcher::Loop() {
  const size_t n = requests_.size();
  const size_t max_batch = static_cast<size_t>(std::max(1, std::min(options_.max_batch, fetcher_.MaxBatch())));
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    // The first chunk not started yet goes next: always when it is the next to take (so
    // the final never waits on a chunk nobody fetches), else only within the window.
    cv_.wait(l, [&] { return stop_ || failed_ || head_ >= n || MayStartLocked(head_); });
    if (stop_ || failed_ || head_ >= n) return;
    std::vector<size_t> batch = {head_};
    started_[head_] = true;
    AddPendingLocked(requests_[head_].bytes);
    // Later chunks of the same holder join it, in plan order, within the window.
    for (size_t j = head_ + 1; j < n && batch.size() < max_batch; ++j) {
      if (started_[j] || requests_[j].address != requests_[head_].address) continue;
      if (pending_bytes_ + requests_[j].bytes > options_.window_bytes) break;
      started_[j] = true;
      AddPendingLocked(requests_[j].bytes);
      batch.push_back(j);
    }
    while (head_ < n && started_[head_]) ++head_;
    l.unlock();

    const PrefetchRequest& first = requests_[batch.front()];
    const int64_t timeout_ms = std::max<int64_t>(1, options_.timeout_ms);
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<Prefetched> got(batch.size());
    if (batch.size() == 1) {
      got[0].kv = fetcher_.Fetch(first.address, first.key, timeout_ms);
    } else {
      std::vector<KvKey> keys;
      for (size_t i : batch) keys.push_back(requests_[i].key);
      absl::StatusOr<std::vector<KvFetcher::Fetched>> many = fetcher_.FetchMany(first.address, keys, timeout_ms);
      if (many.ok() && many->size() != batch.size()) {
        many = absl::DataLossError(
            absl::StrCat("the fetcher returned ", many->size(), " chunks for ", batch.size(), " keys"));
      }
      for (size_t b = 0; b < batch.size(); ++b) {
        got[b].kv = many.ok() ? absl::StatusOr<std::shared_ptr<const ChunkKv>>((*many)[b].kv) : many.status();
      }
    }
    // A batch's seconds are shared among its chunks, so that they add up to the time spent.
    const double fetch_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (size_t b = 0; b < batch.size(); ++b) {
      got[b].index = batch[b];
      got[b].fetch_s = fetch_s / static_cast<double>(batch.size());
      if (got[b].kv.ok() && !*got[b].kv) got[b].kv = absl::DataLossError("the fetcher returned no K/V");
    }

    l.lock();
    for (size_t b = 0; b < batch.size(); ++b) {
      if (!got[b].kv.ok() && !failed_) failed_ = batch[b];
      done_[batch[b]] = std::move(got[b]);
    }
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
  AddPendingLocked(-requests_[next_take_].bytes);
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
