// MetricsServer (ops/metrics_server.h): cpp-httplib serving GET /metrics.
#include "ops/metrics_server.h"

#include <sys/socket.h>

#include <chrono>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"

namespace mesa::ops {

absl::Status SplitHostPort(const std::string& host_port, int default_port, std::string* host, int* port) {
  std::string h = host_port, p;
  if (!h.empty() && h.front() == '[') {
    const size_t close = h.find(']');
    if (close == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("'", host_port, "': no ']'"));
    const std::string rest = h.substr(close + 1);
    h = h.substr(1, close - 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return absl::InvalidArgumentError(absl::StrCat("'", host_port, "' is not [HOST]:PORT"));
      p = rest.substr(1);
    }
  } else if (const size_t colon = h.rfind(':'); colon != std::string::npos) {
    if (h.find(':') != colon) {
      return absl::InvalidArgumentError(absl::StrCat("'", host_port, "': write IPv6 addresses as [ADDR]:PORT"));
    }
    p = h.substr(colon + 1);
    h = h.substr(0, colon);
  }
  if (h.empty()) return absl::InvalidArgumentError(absl::StrCat("'", host_port, "' has no host (e.g. 127.0.0.1:9090)"));
  int v = default_port;
  if (!p.empty() || host_port.back() == ':') {
    if (!absl::SimpleAtoi(p, &v) || v < 0 || v > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("'", host_port, "': port '", p, "' is not 0-65535"));
    }
  }
  *host = h;
  *port = v;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host_port,
                                                                    std::shared_ptr<Metrics> metrics) {
  if (!metrics) return absl::InvalidArgumentError("MetricsServer without metrics");
  std::string host;
  int port = 0;
  if (absl::Status s = SplitHostPort(host_port, 0, &host, &port); !s.ok()) return s;
  std::unique_ptr<MetricsServer> m(new MetricsServer());
  m->metrics_ = std::move(metrics);
  m->server_ = std::make_unique<httplib::Server>();
  httplib::Server& srv = *m->server_;
  srv.new_task_queue = [] { return new httplib::ThreadPool(2); };
  srv.set_read_timeout(5, 0);
  srv.set_write_timeout(5, 0);
  srv.set_payload_max_length(64 << 10);
  // cpp-httplib's default sets SO_REUSEPORT, with which a second process binds the same
  // port and the kernel splits the scrapes between the two: SO_REUSEADDR only (a restart
  // can rebind at once; a port in use is an error).
  srv.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  Metrics* metrics_ptr = m->metrics_.get();
  srv.Get("/metrics", [metrics_ptr](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_ptr->TextExposition(), kExpositionContentType);
  });
  // Unmatched paths and methods: cpp-httplib answers 404 (no body); give it one line.
  srv.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404) res.set_content("not found: only GET /metrics is served\n", "text/plain");
    (void)req;
  });
  int bound = port;
  if (port == 0) {
    bound = srv.bind_to_any_port(host);
    if (bound <= 0) bound = -1;
  } else if (!srv.bind_to_port(host, port)) {
    bound = -1;
  }
  if (bound < 0) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on '", host_port,
                                               "' (address in use, or not an address of this host)"));
  }
  m->address_ = host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", bound)
                                                   : absl::StrCat(host, ":", bound);
  m->thread_ = std::thread([s = m->server_.get()] { s->listen_after_bind(); });
  // stop() does nothing before the loop runs: wait for it, so that the destructor can
  // always stop the server.
  for (int i = 0; i < 5000 && !srv.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!srv.is_running()) return absl::InternalError("metrics: the HTTP server did not start");
  return m;
}

MetricsServer::~MetricsServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace mesa::ops
