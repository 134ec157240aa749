// The long-context flags shared by every command that runs a model on long input
// (`mesa generate/logits/bench/plan/run`): the attention method and the Mesa planner,
// Self-Extend and ReRoPE parameters. One definition so the commands cannot drift.
#pragma once

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "engine/long_context.h"

namespace mesa::cli {

// Raw flag values as parsed; 0 means "the default" where the help text says so.
struct LongContextFlags {
  std::string attention = "auto";
  int64_t train_length = 0;   // 0: the model's context length
  int64_t anchor = 100;
  int64_t last_chunk = 512;
  int64_t margin = 64;
  int64_t max_chunk = 0;      // 0: no cap
  int64_t stair_n = 0;        // 0: min(512, T / 2)
  int64_t stair_e = 50;
  bool no_logn = false;
  int64_t se_group = 0;       // 0: the smallest that keeps positions below T
  int64_t se_window = 0;      // 0: T / 4
  int64_t rerope_window = 0;  // 0: min(512, T / 2)
};

// Adds --attention, --train-length, --anchor, --last-chunk, --margin, --max-chunk,
// --stair-n, --stair-e, --no-logn, --se-group, --se-window and --rerope-window to `cmd`
// (in a "Long context" option group), writing into `*flags` (which must outlive it).
void AddLongContextFlags(CLI::App* cmd, LongContextFlags* flags);

// Validates the flags and converts them. train_length stays 0 when not given: the
// runner then uses the model's context length.
absl::StatusOr<LongContextOptions> ToLongContextOptions(const LongContextFlags& flags);

}  // namespace mesa::cli
