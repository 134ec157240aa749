// The operations flags of the server commands (`mesa coordinator`, `mesa worker`, and
// `mesa cluster` under MPI): --metrics-listen, --log-level, --log-format. AddOpsFlags
// declares them on a command; StartOps applies them (configures ops/log.h, starts the
// /metrics endpoint) and hands back the Metrics the command passes to its cores.
#pragma once

#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "ops/metrics.h"
#include "ops/metrics_server.h"

namespace mesa::cli {

struct OpsFlags {
  std::string metrics_listen;   // "" = no metrics endpoint; "HOST" = HOST:default_metrics_port
  std::string log_level = "info";
  std::string log_format = "text";
};

// `default_metrics_port`: the port taken when --metrics-listen names a host only
// (9090 coordinator, 9091 worker).
void AddOpsFlags(CLI::App* cmd, OpsFlags* flags, int default_metrics_port);

struct OpsRuntime {
  std::shared_ptr<ops::Metrics> metrics;          // always set
  std::unique_ptr<ops::MetricsServer> server;     // set with --metrics-listen
  std::string metrics_address() const { return server ? server->address() : std::string(); }
};

// Configures logging, then (with --metrics-listen) binds the metrics endpoint and logs
// `metrics.listening address=HOST:PORT component=...`. Start it after the signal mask is
// set (it starts threads). INVALID_ARGUMENT / UNAVAILABLE as MetricsServer::Start.
absl::StatusOr<OpsRuntime> StartOps(const OpsFlags& flags, int default_metrics_port, const std::string& component);

}  // namespace mesa::cli
