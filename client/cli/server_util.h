// Helpers of the CLI's long-running server commands (`mesa coordinator`, `mesa worker`,
// `mesa cluster`): shutdown signals taken on a thread of their own, byte
// counts with K/M/G/T suffixes.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace mesa::cli {

// SIGTERM and SIGINT, and SIGUSR1 when `sigusr1` (mpirun forwards SIGUSR1 to every
// rank without ending the job, as it does with SIGTERM); SIGUSR2 is in the set too, used
// internally to wake the waiter.
sigset_t ShutdownSignals(bool sigusr1 = false);
// Blocks the shutdown signals in the calling thread; call it before any other thread
// starts (gRPC's, MPI's), so that they inherit the mask and only SignalWaiter takes them.
void BlockShutdownSignals(bool sigusr1 = false);

// Runs `on_signal` on a thread of its own when a shutdown signal arrives.
class SignalWaiter {
 public:
  explicit SignalWaiter(std::function<void(int)> on_signal, bool sigusr1 = false);
  ~SignalWaiter();
  SignalWaiter(const SignalWaiter&) = delete;
  SignalWaiter& operator=(const SignalWaiter&) = delete;

 private:
  std::thread thread_;
};

// "8G", "512M", "64k", "1073741824" -> bytes.
absl::StatusOr<int64_t> ParseBytes(const std::string& text);

}  // namespace mesa::cli
