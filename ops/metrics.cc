// Metrics (ops/metrics.h): prometheus-cpp's registry plus gauges computed at scrape.
#include "ops/metrics.h"

#include <algorithm>
#include <stdexcept>

#include "prometheus/check_names.h"
#include "prometheus/text_serializer.h"

namespace mesa::ops {

const std::vector<double>& TaskSecondsBuckets() {
  static const std::vector<double> kBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                               2.5,   5,    10,    30,   60,  120,  300, 600};
  return kBuckets;
}

const std::vector<double>& TransferSecondsBuckets() {
  static const std::vector<double> kBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                               0.25,   0.5,   1,      2.5,   5,    10,    30,    60};
  return kBuckets;
}

std::shared_ptr<Metrics> Metrics::Create() {
  std::shared_ptr<Metrics> m(new Metrics());
  m->self_ = m;
  return m;
}

Metrics::CallbackHandle& Metrics::CallbackHandle::operator=(CallbackHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    owner_ = std::move(other.owner_);
    id_ = other.id_;
    other.owner_.reset();
    other.id_ = 0;
  }
  return *this;
}

void Metrics::CallbackHandle::Reset() {
  if (auto owner = owner_.lock()) owner->Remove(id_);
  owner_.reset();
  id_ = 0;
}

Metrics::CallbackHandle Metrics::AddGaugeCallback(const std::string& name, const std::string& help, GaugeFn fn) {
  if (!prometheus::CheckMetricName(name)) throw std::invalid_argument("invalid metric name: " + name);
  std::lock_guard<std::mutex> lock(mu_);
  const int id = next_id_++;
  callbacks_[id] = Callback{name, help, std::move(fn)};
  return CallbackHandle(self_, id);
}

void Metrics::Remove(int id) {
  std::lock_guard<std::mutex> lock(mu_);
  callbacks_.erase(id);
}

std::vector<prometheus::MetricFamily> Metrics::Collect() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, cb] : callbacks_) {
      prometheus::MetricFamily f;
      f.name = cb.name;
      f.help = cb.help;
      f.type = prometheus::MetricType::Gauge;
      for (auto& [labels, value] : cb.fn()) {
        prometheus::ClientMetric m;
        for (auto& [k, v] : labels) m.label.push_back(prometheus::ClientMetric::Label{k, v});
        m.gauge.value = value;
        f.metric.push_back(std::move(m));
      }
      families.push_back(std::move(f));
    }
  }
  std::stable_sort(families.begin(), families.end(),
                   [](const prometheus::MetricFamily& a, const prometheus::MetricFamily& b) { return a.name < b.name; });
  return families;
}

std::string Metrics::TextExposition() const {
  return prometheus::TextSerializer().Serialize(Collect());
}

}  // namespace mesa::ops
