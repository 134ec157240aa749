// Prometheus metrics of Mesa's servers. The counters, gauges and histograms are
// prometheus-cpp's (Debian prometheus-cpp-dev: lock-free counters and gauges, its text
// serializer with exposition format 0.0.4); this file adds what a server needs around
// them: one Metrics object per process holding the registry, gauges computed at scrape
// time from state a core already holds (AddGaugeCallback), and the exposition text.
// The cores update a Metrics passed in their options and know nothing of HTTP; the
// /metrics endpoint is ops/metrics_server.h. Every metric: docs/RUNTIME.md.
//
// Thread-safe. Locking: a scrape (Collect) holds this object's mutex while it calls the
// gauge callbacks, which may take their core's locks; so code holding a core lock may
// update counters, gauges and histograms (they never take this mutex) but must not add
// or remove callbacks.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace mesa::ops {

// Bucket upper bounds (seconds) for task latencies: 5 ms .. 10 min.
const std::vector<double>& TaskSecondsBuckets();
// Bucket upper bounds (seconds) for one K/V transfer: 0.5 ms .. 60 s.
const std::vector<double>& TransferSecondsBuckets();

class Metrics {
 public:
  // One sample of a callback gauge: its labels and value.
  using Sample = std::pair<prometheus::Labels, double>;
  using GaugeFn = std::function<std::vector<Sample>()>;

  // Removes its callback when destroyed (waiting for a scrape that is calling it).
  class CallbackHandle {
   public:
    CallbackHandle() = default;
    CallbackHandle(CallbackHandle&& other) noexcept { *this = std::move(other); }
    CallbackHandle& operator=(CallbackHandle&& other) noexcept;
    ~CallbackHandle() { Reset(); }
    void Reset();

   private:
    friend class Metrics;
    CallbackHandle(std::weak_ptr<Metrics> owner, int id) : owner_(std::move(owner)), id_(id) {}
    std::weak_ptr<Metrics> owner_;
    int id_ = 0;
  };

  static std::shared_ptr<Metrics> Create();

  // Counters, gauges and histograms: prometheus::BuildCounter().Name(..).Help(..).Register(registry()).
  prometheus::Registry& registry() { return *registry_; }

  // A gauge family whose samples `fn` computes at each scrape. `name` must be a valid
  // metric name not used by the registry; `fn` must not call back into this object.
  [[nodiscard]] CallbackHandle AddGaugeCallback(const std::string& name, const std::string& help, GaugeFn fn);

  // Every family (registry and callbacks), sorted by name.
  std::vector<prometheus::MetricFamily> Collect() const;
  // The text exposition format 0.0.4 of Collect().
  std::string TextExposition() const;

 private:
  Metrics() : registry_(std::make_shared<prometheus::Registry>()) {}
  struct Callback {
    std::string name, help;
    GaugeFn fn;
  };
  void Remove(int id);

  std::weak_ptr<Metrics> self_;
  std::shared_ptr<prometheus::Registry> registry_;
  mutable std::mutex mu_;  // callbacks_; held while they run
  std::map<int, Callback> callbacks_;
  int next_id_ = 1;
};

// The content type of TextExposition (Prometheus text format 0.0.4).
inline constexpr const char* kExpositionContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace mesa::ops
