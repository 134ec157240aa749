// Progress of a batch run on stderr: a redrawn bar (documents done/total, tokens/s, ETA)
// when the stream is a terminal, otherwise one log line per document.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "jobs/batch_runner.h"

namespace mesa::jobs {

// "1m05s", "2h03m", "42s".
std::string FormatDuration(double seconds);

// The bar: "[#######.............] 3/10 docs  1234 tok/s  ETA 1m05s". Width of the bar
// in characters: `width`.
std::string FormatProgressBar(int64_t done, int64_t total, double tokens_per_s, double eta_s, int width = 24);

// One line per record, e.g. "[3/10] doc-7 ok: 4123 prompt + 256 generated tokens (mesa,
// 11 chunks) in 12.3s; 1234 tok/s, ETA 1m05s".
std::string FormatRecordLine(const JobResult& r, int64_t done, int64_t total, double tokens_per_s, double eta_s);

// Not thread-safe; RunBatch calls it from one thread.
class ProgressPrinter : public BatchObserver {
 public:
  // `tty`: draw the bar (use isatty(fileno(out))).
  ProgressPrinter(std::FILE* out, bool tty);
  void OnStart(int64_t todo, int64_t skipped, const ExistingOutput& existing) override;
  void OnRecord(const JobResult& result, int64_t done, int64_t todo) override;
  // Ends the bar's line.
  void Finish();

 private:
  std::FILE* out_;
  bool tty_;
  bool bar_drawn_ = false;
  int64_t tokens_ = 0;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace mesa::jobs
