// Structured event logs of Mesa's servers: one line per event, either logfmt text
//   2025-01-02T03:04:05.678Z info task.done job=job_1f2e item=3 attempt=1 worker=w1-a seconds=0.412
// or one JSON object per line
//   {"ts":"2025-01-02T03:04:05.678Z","level":"info","event":"task.done","job":"job_1f2e","item":3,...}
// The event names and their fields are listed in docs/RUNTIME.md ("Metrics and logs").
// Process-wide (one stderr per process): ConfigureLog once at startup (`--log-level`,
// `--log-format`); Log is thread-safe, a line is written whole, and a disabled level
// costs one atomic load. Values are escaped so that no input (a custom_id, an error
// message with newlines or quotes) can forge or split a line.
#pragma once

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include "absl/status/status.h"

namespace mesa::ops {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class LogFormat { kText, kJson };

// "debug", "info", "warn" (or "warning"), "error"; false for anything else.
bool ParseLogLevel(std::string_view text, LogLevel* level);
// "text" or "json".
bool ParseLogFormat(std::string_view text, LogFormat* format);
const char* LogLevelName(LogLevel level);

// One key=value of an event. Strings are viewed, not copied: a field lives only for
// the Log call's full expression. A field whose string is empty is left out.
class LogField {
 public:
  using Value = std::variant<std::string_view, std::string, int64_t, double, bool>;
  LogField(std::string_view key, std::string_view value) : key_(key), value_(value) {}
  LogField(std::string_view key, const char* value) : key_(key), value_(std::string_view(value ? value : "")) {}
  LogField(std::string_view key, const std::string& value) : key_(key), value_(std::string_view(value)) {}
  LogField(std::string_view key, std::string&& value) : key_(key), value_(std::move(value)) {}
  template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  LogField(std::string_view key, T value) : key_(key), value_(static_cast<int64_t>(value)) {}
  LogField(std::string_view key, double value) : key_(key), value_(value) {}
  LogField(std::string_view key, bool value) : key_(key), value_(value) {}
  // An error: its code and message ("NOT_FOUND: no K/V held for ...").
  LogField(std::string_view key, const absl::Status& status) : key_(key), value_(status.ToString()) {}

  std::string_view key() const { return key_; }
  const Value& value() const { return value_; }

 private:
  std::string_view key_;
  Value value_;
};

using LogFields = std::initializer_list<LogField>;

// Process-wide settings (default: info, text, stderr). `sink` must outlive every Log
// call; tests pass a tmpfile.
void ConfigureLog(LogLevel level, LogFormat format, FILE* sink = stderr);
LogLevel CurrentLogLevel();
LogFormat CurrentLogFormat();
bool LogEnabled(LogLevel level);

// Writes the event if `level` is enabled.
void Log(LogLevel level, std::string_view event, LogFields fields = {});
inline void LogDebug(std::string_view event, LogFields fields = {}) { Log(LogLevel::kDebug, event, fields); }
inline void LogInfo(std::string_view event, LogFields fields = {}) { Log(LogLevel::kInfo, event, fields); }
inline void LogWarn(std::string_view event, LogFields fields = {}) { Log(LogLevel::kWarn, event, fields); }
inline void LogError(std::string_view event, LogFields fields = {}) { Log(LogLevel::kError, event, fields); }

// The line Log writes (with its '\n'), for a time in milliseconds since the Unix epoch.
std::string FormatLogLine(LogFormat format, int64_t unix_ms, LogLevel level, std::string_view event,
                          LogFields fields);
// A logfmt value: bare when it is non-empty printable ASCII without space, '"', '=' or
// '\\'; else quoted, with \" \\ \n \r \t and \xNN for other control bytes.
std::string LogfmtValue(std::string_view value);

}  // namespace mesa::ops
