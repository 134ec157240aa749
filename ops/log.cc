// Structured event logs (ops/log.h): logfmt or JSON lines, process-wide settings.
#include "ops/log.h"

#include <time.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace mesa::ops {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> g_format{static_cast<int>(LogFormat::kText)};
std::atomic<FILE*> g_sink{nullptr};  // null: stderr
std::mutex g_write_mu;               // one line at a time, never interleaved

std::string Timestamp(int64_t unix_ms) {
  const time_t secs = static_cast<time_t>(unix_ms / 1000);
  struct tm tm{};
  gmtime_r(&secs, &tm);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(unix_ms % 1000));
  return buf;
}

// Shortest text that reads back as the same double ("0.412", "1e-05"); nan/inf as words.
std::string DoubleText(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[32];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

struct TextValue {
  std::string operator()(std::string_view s) const { return LogfmtValue(s); }
  std::string operator()(const std::string& s) const { return LogfmtValue(s); }
  std::string operator()(int64_t v) const { return absl::StrCat(v); }
  std::string operator()(double v) const { return DoubleText(v); }
  std::string operator()(bool v) const { return v ? "true" : "false"; }
};

struct JsonValue {
  nlohmann::ordered_json operator()(std::string_view s) const { return std::string(s); }
  nlohmann::ordered_json operator()(const std::string& s) const { return s; }
  nlohmann::ordered_json operator()(int64_t v) const { return v; }
  nlohmann::ordered_json operator()(double v) const {
    if (!std::isfinite(v)) return DoubleText(v);  // JSON has no NaN or Infinity
    return v;
  }
  nlohmann::ordered_json operator()(bool v) const { return v; }
};

// ts, level and event cannot be overwritten; a field with an empty string value is left
// out (a job without a request_id, an item without a custom_id).
bool Skipped(const LogField& f) {
  const std::string_view key = f.key();
  if (key == "ts" || key == "level" || key == "event") return true;
  if (const auto* v = std::get_if<std::string_view>(&f.value())) return v->empty();
  if (const auto* v = std::get_if<std::string>(&f.value())) return v->empty();
  return false;
}

}  // namespace

bool ParseLogLevel(std::string_view text, LogLevel* level) {
  const std::string t = absl::AsciiStrToLower(std::string(text));
  if (t == "debug") *level = LogLevel::kDebug;
  else if (t == "info") *level = LogLevel::kInfo;
  else if (t == "warn" || t == "warning") *level = LogLevel::kWarn;
  else if (t == "error") *level = LogLevel::kError;
  else return false;
  return true;
}

bool ParseLogFormat(std::string_view text, LogFormat* format) {
  const std::string t = absl::AsciiStrToLower(std::string(text));
  if (t == "text") *format = LogFormat::kText;
  else if (t == "json") *format = LogFormat::kJson;
  else return false;
  return true;
}

const char* LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "info";
}

void ConfigureLog(LogLevel level, LogFormat format, FILE* sink) {
  g_level.store(static_cast<int>(level));
  g_format.store(static_cast<int>(format));
  g_sink.store(sink == stderr ? nullptr : sink);
}

LogLevel CurrentLogLevel() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }
LogFormat CurrentLogFormat() { return static_cast<LogFormat>(g_format.load(std::memory_order_relaxed)); }
bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed); }

std::string LogfmtValue(std::string_view value) {
  bool bare = !value.empty();
  for (unsigned char c : value) {
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f) {
      bare = false;
      break;
    }
  }
  if (bare) return std::string(value);
  std::string out = "\"";
  for (unsigned char c : value) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);  // UTF-8 passes through
        }
    }
  }
  out += '"';
  return out;
}

std::string FormatLogLine(LogFormat format, int64_t unix_ms, LogLevel level, std::string_view event,
                          LogFields fields) {
  if (format == LogFormat::kJson) {
    nlohmann::ordered_json line;
    line["ts"] = Timestamp(unix_ms);
    line["level"] = LogLevelName(level);
    line["event"] = std::string(event);
    for (const LogField& f : fields) {
      if (Skipped(f)) continue;
      line[std::string(f.key())] = std::visit(JsonValue{}, f.value());
    }
    // Invalid UTF-8 (a hostile custom_id) becomes U+FFFD rather than an exception.
    return line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  }
  std::string out = absl::StrCat(Timestamp(unix_ms), " ", LogLevelName(level), " ", LogfmtValue(event));
  // (absl::string_view is not std::string_view here: keys are appended by hand.)
  for (const LogField& f : fields) {
    if (Skipped(f)) continue;
    out += ' ';
    out.append(f.key());
    out += '=';
    out += std::visit(TextValue{}, f.value());
  }
  out += '\n';
  return out;
}

void Log(LogLevel level, std::string_view event, LogFields fields) {
  if (!LogEnabled(level)) return;
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  const std::string line = FormatLogLine(CurrentLogFormat(), now_ms, level, event, fields);
  FILE* sink = g_sink.load();
  if (sink == nullptr) sink = stderr;
  std::lock_guard<std::mutex> lock(g_write_mu);
  std::fwrite(line.data(), 1, line.size(), sink);
  std::fflush(sink);
}

}  // namespace mesa::ops
