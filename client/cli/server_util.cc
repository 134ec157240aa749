#include "client/cli/server_util.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace mesa::cli {

sigset_t ShutdownSignals(bool sigusr1) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  if (sigusr1) sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGUSR2);  // internal: wakes the waiter when no signal came
  return set;
}

void BlockShutdownSignals(bool sigusr1) {
  sigset_t set = ShutdownSignals(sigusr1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

SignalWaiter::SignalWaiter(std::function<void(int)> on_signal, bool sigusr1)
    : thread_([on_signal = std::move(on_signal), sigusr1] {
        sigset_t set = ShutdownSignals(sigusr1);
        int sig = 0;
        if (sigwait(&set, &sig) == 0 && sig != SIGUSR2) on_signal(sig);
      }) {}

SignalWaiter::~SignalWaiter() {
  pthread_kill(thread_.native_handle(), SIGUSR2);  // harmless if it already returned
  thread_.join();
}

absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  std::string t = text;
  int64_t mult = 1;
  if (!t.empty()) {
    switch (t.back()) {
      case 'K': case 'k': mult = 1LL << 10; t.pop_back(); break;
      case 'M': case 'm': mult = 1LL << 20; t.pop_back(); break;
      case 'G': case 'g': mult = 1LL << 30; t.pop_back(); break;
      case 'T': case 't': mult = 1LL << 40; t.pop_back(); break;
      default: break;
    }
  }
  int64_t v = 0;
  if (!absl::SimpleAtoi(t, &v) || v < 0 || v > (int64_t{1} << 62) / mult) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a byte count (e.g. 8G, 512M, 1073741824)"));
  }
  return v * mult;
}

}  // namespace mesa::cli
