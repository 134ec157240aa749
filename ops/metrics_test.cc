// ops/metrics.h and ops/metrics_server.h: the exposition (escaping, cumulative histogram
// buckets, callback gauges), counters under concurrency, the HTTP endpoint, and the
// exposition read back by a parser nobody here wrote (python3 prometheus_client; also
// promtool when it is installed).
#include "ops/metrics.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "httplib.h"
#include "ops/metrics_server.h"

namespace mesa::ops {
namespace {

bool Contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(MetricsTest, ExpositionHasHelpTypeAndEscapedLabels) {
  auto m = Metrics::Create();
  auto& fam = prometheus::BuildCounter().Name("mesa_test_total").Help("A test counter.").Register(m->registry());
  fam.Add({{"custom_id", "a\"b\\c\nd"}}).Increment(3);
  const std::string text = m->TextExposition();
  EXPECT_TRUE(Contains(text, "# HELP mesa_test_total A test counter.\n")) << text;
  EXPECT_TRUE(Contains(text, "# TYPE mesa_test_total counter\n")) << text;
  EXPECT_TRUE(Contains(text, "mesa_test_total{custom_id=\"a\\\"b\\\\c\\nd\"} 3")) << text;
}

TEST(MetricsTest, HistogramBucketsAreCumulativeWithInf) {
  auto m = Metrics::Create();
  auto& h = prometheus::BuildHistogram()
                .Name("mesa_test_seconds")
                .Help("Latency.")
                .Register(m->registry())
                .Add({{"kind", "chunk"}}, prometheus::Histogram::BucketBoundaries{0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 2.0, 20.0}) h.Observe(v);
  const std::string text = m->TextExposition();
  // le is an upper bound, inclusive: 0.1 falls in the 0.1 bucket.
  EXPECT_TRUE(Contains(text, "mesa_test_seconds_bucket{kind=\"chunk\",le=\"0.1\"} 2")) << text;
  EXPECT_TRUE(Contains(text, "mesa_test_seconds_bucket{kind=\"chunk\",le=\"1\"} 3")) << text;
  EXPECT_TRUE(Contains(text, "mesa_test_seconds_bucket{kind=\"chunk\",le=\"10\"} 4")) << text;
  EXPECT_TRUE(Contains(text, "mesa_test_seconds_bucket{kind=\"chunk\",le=\"+Inf\"} 5")) << text;
  EXPECT_TRUE(Contains(text, "mesa_test_seconds_count{kind=\"chunk\"} 5")) << text;
  EXPECT_TRUE(Contains(text, "mesa_test_seconds_sum{kind=\"chunk\"} 22.65")) << text;
}

TEST(MetricsTest, CountersAreExactUnderConcurrency) {
  auto m = Metrics::Create();
  auto& c = prometheus::BuildCounter().Name("mesa_c_total").Help("c").Register(m->registry()).Add({});
  auto& h = prometheus::BuildHistogram().Name("mesa_h").Help("h").Register(m->registry()).Add({}, TaskSecondsBuckets());
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.Increment();
        h.Observe(0.01);
      }
    });
  }
  // Scrapes while they count: never torn, never fail.
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Contains(m->TextExposition(), "mesa_c_total"));
  for (auto& th : threads) th.join();
  EXPECT_EQ(c.Value(), 80000);
  EXPECT_TRUE(Contains(m->TextExposition(), "mesa_h_count 80000")) << m->TextExposition();
}

TEST(MetricsTest, CallbackGaugesAreComputedAtScrapeAndRemoved) {
  auto m = Metrics::Create();
  int jobs = 2;
  {
    auto handle = m->AddGaugeCallback("mesa_jobs", "Jobs by state.", [&] {
      return std::vector<Metrics::Sample>{{{{"state", "in_progress"}}, double(jobs)}, {{{"state", "completed"}}, 7}};
    });
    EXPECT_TRUE(Contains(m->TextExposition(), "# TYPE mesa_jobs gauge\n"));
    EXPECT_TRUE(Contains(m->TextExposition(), "mesa_jobs{state=\"in_progress\"} 2\n"));
    jobs = 5;
    EXPECT_TRUE(Contains(m->TextExposition(), "mesa_jobs{state=\"in_progress\"} 5\n"));
    EXPECT_TRUE(Contains(m->TextExposition(), "mesa_jobs{state=\"completed\"} 7\n"));
  }
  EXPECT_FALSE(Contains(m->TextExposition(), "mesa_jobs")) << "the handle's destruction removes the gauge";
  EXPECT_THROW((void)m->AddGaugeCallback("bad name", "x", [] { return std::vector<Metrics::Sample>{}; }),
               std::invalid_argument);
  // A handle that outlives its Metrics is harmless.
  auto other = Metrics::Create();
  auto late = other->AddGaugeCallback("mesa_x", "x", [] { return std::vector<Metrics::Sample>{}; });
  other.reset();
  late.Reset();
}

TEST(MetricsServerTest, ServesMetricsAnd404ElsewhereOnAnEphemeralPort) {
  auto m = Metrics::Create();
  prometheus::BuildGauge().Name("mesa_up").Help("Up.").Register(m->registry()).Add({}).Set(1);
  auto server = MetricsServer::Start("127.0.0.1:0", m);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string addr = (*server)->address();
  const int port = std::stoi(addr.substr(addr.rfind(':') + 1));
  ASSERT_GT(port, 0);
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), kExpositionContentType);
  EXPECT_TRUE(Contains(res->body, "mesa_up 1")) << res->body;
  auto other = client.Get("/");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
  auto post = client.Post("/metrics", "x", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_NE(post->status, 200);
  // The port is taken: a second server on it fails with a clear error.
  auto again = MetricsServer::Start(addr, m);
  ASSERT_FALSE(again.ok());
  EXPECT_TRUE(absl::IsUnavailable(again.status())) << again.status();
  server->reset();  // stops and joins
  EXPECT_FALSE(httplib::Client("127.0.0.1", port).Get("/metrics"));
}

TEST(MetricsServerTest, RejectsMalformedAddresses) {
  auto m = Metrics::Create();
  for (const char* bad : {"", ":9090", "127.0.0.1:x", "127.0.0.1:70000", "[::1", "::1:9090"}) {
    auto s = MetricsServer::Start(bad, m);
    EXPECT_TRUE(absl::IsInvalidArgument(s.status())) << bad << ": " << s.status();
  }
  std::string host;
  int port = 0;
  ASSERT_TRUE(SplitHostPort("0.0.0.0", 9091, &host, &port).ok());
  EXPECT_EQ(host, "0.0.0.0");
  EXPECT_EQ(port, 9091);
  ASSERT_TRUE(SplitHostPort("[::1]:0", 9091, &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 0);
}

// The exposition, with every kind of metric and hostile label values, as Prometheus'
// own parsers read it.
TEST(MetricsTest, ExpositionParsesWithPrometheusClientAndPromtool) {
  // Debian's python3 (a python3 earlier on PATH, e.g. pyenv's, may lack the package).
  std::string python;
  for (const char* p : {"python3", "/usr/bin/python3"}) {
    if (std::system((std::string(p) + " -c 'import prometheus_client' 2>/dev/null").c_str()) == 0) {
      python = p;
      break;
    }
  }
  if (python.empty()) GTEST_SKIP() << "python3-prometheus-client is not installed (scripts/setup.sh installs it)";
  auto m = Metrics::Create();
  auto& c = prometheus::BuildCounter().Name("mesa_items_done_total").Help("Items done.").Register(m->registry());
  c.Add({{"custom_id", "quote\" back\\ nl\n"}}).Increment(2);
  prometheus::BuildHistogram()
      .Name("mesa_task_seconds")
      .Help("Task latency in seconds.")
      .Register(m->registry())
      .Add({{"kind", "final"}}, TaskSecondsBuckets())
      .Observe(0.3);
  auto handle = m->AddGaugeCallback("mesa_workers", "Registered workers.", [] {
    return std::vector<Metrics::Sample>{{{}, 3}};
  });
  const std::string path = ::testing::TempDir() + "/exposition.txt";
  std::ofstream(path) << m->TextExposition();
  const std::string check = python + " - '" + path + R"(' <<'PY'
import sys
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}
assert fams["mesa_items_done"].type == "counter", fams
s = fams["mesa_items_done"].samples[0]
assert s.labels["custom_id"] == 'quote" back\\ nl\n', s
assert s.value == 2, s
h = fams["mesa_task_seconds"]
assert h.type == "histogram"
buckets = [x for x in h.samples if x.name.endswith("_bucket")]
assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 1, buckets
assert all(a.value <= b.value for a, b in zip(buckets, buckets[1:])), buckets
assert fams["mesa_workers"].samples[0].value == 3
PY)";
  EXPECT_EQ(std::system(check.c_str()), 0) << m->TextExposition();
  if (std::system("command -v promtool >/dev/null 2>&1") == 0) {
    EXPECT_EQ(std::system(("promtool check metrics < '" + path + "'").c_str()), 0);
  }
}

}  // namespace
}  // namespace mesa::ops
