// --metrics-listen, --log-level, --log-format (client/cli/ops_flags.h).
#include "client/cli/ops_flags.h"

#include "absl/strings/str_cat.h"
#include "ops/log.h"

namespace mesa::cli {

void AddOpsFlags(CLI::App* cmd, OpsFlags* flags, int default_metrics_port) {
  cmd->add_option("--metrics-listen", flags->metrics_listen,
                  absl::StrCat("Serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics (port 0: any "
                               "free port, logged; HOST alone: port ",
                               default_metrics_port, "). Off by default"));
  cmd->add_option("--log-level", flags->log_level, "Least severe events logged: debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}))
      ->capture_default_str();
  cmd->add_option("--log-format", flags->log_format,
                  "Event lines on stderr: text (ts level event key=value ...) or json (one object per line)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
}

absl::StatusOr<OpsRuntime> StartOps(const OpsFlags& flags, int default_metrics_port, const std::string& component) {
  ops::LogLevel level;
  ops::LogFormat format;
  if (!ops::ParseLogLevel(flags.log_level, &level)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown --log-level '", flags.log_level, "'"));
  }
  if (!ops::ParseLogFormat(flags.log_format, &format)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown --log-format '", flags.log_format, "'"));
  }
  ops::ConfigureLog(level, format);
  OpsRuntime rt;
  rt.metrics = ops::Metrics::Create();
  if (!flags.metrics_listen.empty()) {
    std::string host;
    int port = 0;
    absl::Status s = ops::SplitHostPort(flags.metrics_listen, default_metrics_port, &host, &port);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("--metrics-listen: ", s.message()));
    const std::string address = host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port)
                                                                    : absl::StrCat(host, ":", port);
    auto server = ops::MetricsServer::Start(address, rt.metrics);
    if (!server.ok()) return server.status();
    rt.server = *std::move(server);
    ops::LogInfo("metrics.listening", {{"address", rt.server->address()}, {"component", component},
                                       {"path", "/metrics"}});
  }
  return rt;
}

}  // namespace mesa::cli
