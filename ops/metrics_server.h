// The Prometheus endpoint: GET /metrics over plain HTTP (cpp-httplib) on HOST:PORT,
// answering the text exposition of a Metrics (ops/metrics.h); every other path is 404.
// Plain text on purpose (Prometheus scrapes it; bind it to an address only the scraper
// reaches). Two handler threads; a scrape costs one Collect.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "ops/metrics.h"

namespace httplib {
class Server;
}

namespace mesa::ops {

class MetricsServer {
 public:
  // Binds HOST:PORT ("[::1]:9090" for IPv6; port 0: any free port) before returning.
  // INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host_port,
                                                              std::shared_ptr<Metrics> metrics);
  ~MetricsServer();  // stops serving and joins
  // HOST:PORT actually bound (the port filled in).
  const std::string& address() const { return address_; }

 private:
  MetricsServer() = default;
  std::shared_ptr<Metrics> metrics_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::string address_;
};

// Splits "HOST:PORT" / "[V6]:PORT" / "HOST" (port `default_port`). INVALID_ARGUMENT for
// an empty host, a bad or out-of-range port.
absl::Status SplitHostPort(const std::string& host_port, int default_port, std::string* host, int* port);

}  // namespace mesa::ops
