// Progress bar and per-document log lines for batch runs.
#include "jobs/progress.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mesa::jobs {

std::string FormatDuration(double seconds) {
  if (!(seconds >= 0) || std::isinf(seconds)) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

std::string FormatProgressBar(int64_t done, int64_t total, double tokens_per_s, double eta_s, int width) {
  const int filled = total > 0 ? static_cast<int>(width * std::min<int64_t>(done, total) / total) : width;
  std::string bar = absl::StrCat("[", std::string(filled, '#'), std::string(width - filled, '.'), "]");
  absl::StrAppendFormat(&bar, " %d/%d docs  %.0f tok/s", done, total, tokens_per_s);
  if (done < total) absl::StrAppend(&bar, "  ETA ", done > 0 ? FormatDuration(eta_s) : "?");
  return bar;
}

std::string FormatRecordLine(const JobResult& r, int64_t done, int64_t total, double tokens_per_s, double eta_s) {
  const std::string id = r.custom_id.empty() ? absl::StrCat("line ", r.line) : r.custom_id;
  std::string s = absl::StrFormat("[%d/%d] %s ", done, total, id);
  if (!r.status.ok()) {
    absl::StrAppend(&s, "error: ", r.status.message());
  } else {
    std::string how = r.attention;
    if (r.plan.contains("plan") && r.plan["plan"].value("chunked", false)) {
      absl::StrAppend(&how, ", ", r.plan["plan"]["middle"].size(), " middle chunks");
    }
    absl::StrAppendFormat(&s, "ok: %d prompt + %d generated tokens (%s) in %.1fs", r.prompt_tokens,
                          r.generated_tokens, how, r.prefill_s + r.decode_s);
  }
  absl::StrAppendFormat(&s, "; %.0f tok/s", tokens_per_s);
  if (done < total) absl::StrAppend(&s, ", ETA ", FormatDuration(eta_s));
  return s;
}

ProgressPrinter::ProgressPrinter(std::FILE* out, bool tty) : out_(out), tty_(tty) {}

void ProgressPrinter::OnStart(int64_t todo, int64_t skipped, const ExistingOutput& existing) {
  start_ = std::chrono::steady_clock::now();
  if (skipped > 0 || existing.dropped_partial > 0 || existing.dropped_errors > 0) {
    std::fprintf(out_, "resuming: %lld lines already done", static_cast<long long>(skipped));
    if (existing.dropped_errors > 0) {
      std::fprintf(out_, ", %lld error records retried", static_cast<long long>(existing.dropped_errors));
    }
    if (existing.dropped_partial > 0) std::fprintf(out_, ", a truncated last record dropped");
    std::fprintf(out_, "\n");
  }
  if (tty_) {
    std::fprintf(out_, "\r%s", FormatProgressBar(0, todo, 0, 0).c_str());
    bar_drawn_ = true;
  }
  std::fflush(out_);
}

void ProgressPrinter::OnRecord(const JobResult& r, int64_t done, int64_t todo) {
  tokens_ += r.prompt_tokens + r.generated_tokens;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? tokens_ / elapsed : 0;
  const double eta = done > 0 ? elapsed / done * (todo - done) : 0;
  if (tty_) {
    // Errors are worth a line of their own above the bar.
    if (!r.status.ok()) {
      std::fprintf(out_, "\r\033[K%s\n", FormatRecordLine(r, done, todo, rate, eta).c_str());
    }
    std::fprintf(out_, "\r\033[K%s", FormatProgressBar(done, todo, rate, eta).c_str());
    bar_drawn_ = true;
  } else {
    std::fprintf(out_, "%s\n", FormatRecordLine(r, done, todo, rate, eta).c_str());
  }
  std::fflush(out_);
}

void ProgressPrinter::Finish() {
  if (bar_drawn_) std::fprintf(out_, "\n");
  bar_drawn_ = false;
  std::fflush(out_);
}

}  // namespace mesa::jobs
