// ops/log.h: logfmt and JSON lines, escaping of hostile values, levels.
#include "ops/log.h"

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mesa::ops {
namespace {

constexpr int64_t kT = 1735787045678;  // 2025-01-02T03:04:05.678Z

TEST(LogTest, TextLineIsLogfmt) {
  const std::string line = FormatLogLine(LogFormat::kText, kT, LogLevel::kInfo, "task.done",
                                         {{"job", "job_1f"}, {"item", int64_t{3}}, {"attempt", 2},
                                          {"seconds", 0.25}, {"ok", true}, {"custom_id", "doc 7"}});
  EXPECT_EQ(line,
            "2025-01-02T03:04:05.678Z info task.done job=job_1f item=3 attempt=2 seconds=0.25 ok=true "
            "custom_id=\"doc 7\"\n");
}

TEST(LogTest, JsonLineIsOneObject) {
  const std::string line = FormatLogLine(LogFormat::kJson, kT, LogLevel::kWarn, "item.failed",
                                         {{"job", "job_1f"}, {"item", 4}, {"seconds", 1.5},
                                          {"error", absl::UnavailableError("worker w1 left")}});
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["ts"], "2025-01-02T03:04:05.678Z");
  EXPECT_EQ(j["level"], "warn");
  EXPECT_EQ(j["event"], "item.failed");
  EXPECT_EQ(j["job"], "job_1f");
  EXPECT_EQ(j["item"], 4);
  EXPECT_DOUBLE_EQ(j["seconds"].get<double>(), 1.5);
  EXPECT_EQ(j["error"], "UNAVAILABLE: worker w1 left");
  // Keys in the order given, after ts, level, event.
  EXPECT_EQ(line.rfind("{\"ts\":", 0), 0u);
}

TEST(LogTest, HostileValuesCannotSplitOrForgeLines) {
  const std::string hostile = "a\nb\"c=d\\e\r\t\x01 f";
  const std::string text = FormatLogLine(LogFormat::kText, kT, LogLevel::kInfo, "x", {{"custom_id", hostile}});
  EXPECT_EQ(text.find('\n'), text.size() - 1) << text;
  EXPECT_NE(text.find("custom_id=\"a\\nb\\\"c=d\\\\e\\r\\t\\x01 f\""), std::string::npos) << text;
  const std::string json = FormatLogLine(LogFormat::kJson, kT, LogLevel::kInfo, "x", {{"custom_id", hostile}});
  EXPECT_EQ(json.find('\n'), json.size() - 1);
  EXPECT_EQ(nlohmann::json::parse(json)["custom_id"], hostile);
  // Invalid UTF-8 does not throw; it is replaced.
  const std::string bad = FormatLogLine(LogFormat::kJson, kT, LogLevel::kInfo, "x", {{"v", "\xff\xfe"}});
  EXPECT_TRUE(nlohmann::json::accept(bad));
  // The reserved keys cannot be overwritten by a field.
  auto j = nlohmann::json::parse(FormatLogLine(LogFormat::kJson, kT, LogLevel::kInfo, "x", {{"event", "forged"}}));
  EXPECT_EQ(j["event"], "x");
  EXPECT_EQ(FormatLogLine(LogFormat::kText, kT, LogLevel::kInfo, "x", {{"level", "error"}}),
            "2025-01-02T03:04:05.678Z info x\n");
  // Empty strings are left out (no request_id="" on every line of a job without one).
  EXPECT_EQ(FormatLogLine(LogFormat::kText, kT, LogLevel::kInfo, "x", {{"request_id", ""}, {"n", 0}}),
            "2025-01-02T03:04:05.678Z info x n=0\n");
  EXPECT_EQ(FormatLogLine(LogFormat::kJson, kT, LogLevel::kInfo, "x", {{"request_id", std::string()}}),
            "{\"ts\":\"2025-01-02T03:04:05.678Z\",\"level\":\"info\",\"event\":\"x\"}\n");
}

TEST(LogTest, LogfmtValueQuotesOnlyWhenNeeded) {
  EXPECT_EQ(LogfmtValue("w1-node"), "w1-node");
  EXPECT_EQ(LogfmtValue("127.0.0.1:50051"), "127.0.0.1:50051");
  EXPECT_EQ(LogfmtValue(""), "\"\"");
  EXPECT_EQ(LogfmtValue("a b"), "\"a b\"");
  EXPECT_EQ(LogfmtValue("k=v"), "\"k=v\"");
  EXPECT_EQ(LogfmtValue("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
}

TEST(LogTest, ParsesLevelsAndFormats) {
  LogLevel l;
  LogFormat f;
  EXPECT_TRUE(ParseLogLevel("debug", &l));
  EXPECT_EQ(l, LogLevel::kDebug);
  EXPECT_TRUE(ParseLogLevel("WARN", &l));
  EXPECT_EQ(l, LogLevel::kWarn);
  EXPECT_FALSE(ParseLogLevel("verbose", &l));
  EXPECT_TRUE(ParseLogFormat("json", &f));
  EXPECT_EQ(f, LogFormat::kJson);
  EXPECT_FALSE(ParseLogFormat("xml", &f));
}

// Lines from many threads reach the sink whole, filtered by level.
TEST(LogTest, ConcurrentLinesStayWholeAndLevelsFilter) {
  FILE* sink = std::tmpfile();
  ASSERT_NE(sink, nullptr);
  ConfigureLog(LogLevel::kInfo, LogFormat::kJson, sink);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 200; ++i) {
        LogInfo("tick", {{"thread", t}, {"i", i}, {"pad", std::string(300, 'x')}});
        LogDebug("hidden", {{"i", i}});
      }
    });
  }
  for (auto& th : threads) th.join();
  ConfigureLog(LogLevel::kInfo, LogFormat::kText);
  std::rewind(sink);
  char buf[4096];
  int lines = 0;
  while (std::fgets(buf, sizeof buf, sink)) {
    auto j = nlohmann::json::parse(buf, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << buf;
    EXPECT_EQ(j["event"], "tick");
    ++lines;
  }
  std::fclose(sink);
  EXPECT_EQ(lines, 800);
}

}  // namespace
}  // namespace mesa::ops
