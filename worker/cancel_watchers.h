// Cancellation of a worker's task calls: the sync gRPC API has no callback for a call
// whose client cancelled or whose deadline passed, so a watcher polls
// ServerContext::IsCancelled and sets the task's CancelFlag, which the core checks
// between steps. One thread (started at the first Watch) for all of a worker's calls,
// rather than one per call.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "worker/worker_core.h"

namespace mesa::worker {

// Thread-safe. Polls every `period` (20 ms by default).
class CancelWatchers {
 public:
  explicit CancelWatchers(std::chrono::milliseconds period = std::chrono::milliseconds(20)) : period_(period) {}
  CancelWatchers(const CancelWatchers&) = delete;
  CancelWatchers& operator=(const CancelWatchers&) = delete;
  ~CancelWatchers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // Watches `ctx` for as long as the handle lives (the call's handler; `ctx` and `flag`
  // must outlive it). The check never touches them once the handle is gone.
  class Handle {
   public:
    Handle(CancelWatchers* owner, uint64_t id) : owner_(owner), id_(id) {}
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    ~Handle() { owner_->Remove(id_); }

   private:
    CancelWatchers* owner_;
    uint64_t id_;
  };
  [[nodiscard]] std::unique_ptr<Handle> Watch(grpc::ServerContext* ctx, CancelFlag* flag) {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t id = next_++;
    calls_[id] = {ctx, flag};
    if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
    return std::make_unique<Handle>(this, id);
  }
  size_t watched() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_.size();
  }

 private:
  void Remove(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.erase(id);
  }
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      for (auto& [id, call] : calls_) {
        if (!call.second->load() && call.first->IsCancelled()) call.second->store(true);
      }
      cv_.wait_for(lock, period_);
    }
  }

  const std::chrono::milliseconds period_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  uint64_t next_ = 1;
  std::map<uint64_t, std::pair<grpc::ServerContext*, CancelFlag*>> calls_;  // guarded by mu_
  std::thread thread_;
};

}  // namespace mesa::worker
