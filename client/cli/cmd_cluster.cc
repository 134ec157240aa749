// `mesa coordinator` and `mesa worker`: the two server processes of a cluster, as thin
// commands over coordinator/coordinator_service.h and worker/worker_rpc.h.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <fstream>
#include <memory>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/cli/attention_flags.h"
#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "client/cli/device_flags.h"
#include "client/cli/server_util.h"
#include "client/cli/security_flags.h"
#include "client/cli/ops_flags.h"
#include "coordinator/coordinator_service.h"
#include "engine/model_fingerprint.h"
#include "jobs/job_format.h"
#include "ops/log.h"
#include "worker/worker_rpc.h"

namespace mesa::cli {
namespace {

absl::Status WriteAddressFile(const std::string& path, const std::string& address) {
  if (path.empty()) return absl::OkStatus();
  return jobs::RewriteFile(path, {address + "\n"});
}

// ---------------------------------------------------------------- coordinator

struct CoordinatorArgs {
  std::string listen = "0.0.0.0:50051";
  std::string store, model, placement = "auto", address_file;
  int max_attempts = 3;
  int64_t max_tokens = 256;
  std::string chat_template = "auto";
  double heartbeat_timeout_s = 15;
  LongContextFlags lc;
  TlsFlags tls;
  OpsFlags ops;  // --metrics-listen, --log-level, --log-format
};

int RunCoordinator(const CoordinatorArgs& a) {
  BlockShutdownSignals();
  auto ops_rt = StartOps(a.ops, 9090, "coordinator");
  if (!ops_rt.ok()) return Fail(ops_rt.status());
  auto lc = ToLongContextOptions(a.lc);
  if (!lc.ok()) return Fail(lc.status());
  auto security = ToServerSecurity(a.tls, rpc::ClientCertMode::kVerifyIfPresented);
  if (!security.ok()) return Fail(security.status());
  coord::Placement placement;
  if (!coord::ParsePlacement(a.placement, &placement)) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("unknown placement '", a.placement, "'")));
  }
  // The coordinator tokenizes and plans; it never runs the model (matrices stay mapped).
  auto model = LoadModelForCli(a.model, /*compute=*/false);
  if (!model.ok()) return Fail(model.status());
  coord::CoordinatorOptions options;
  options.store_dir = a.store;
  options.scheduler.placement = placement;
  options.scheduler.max_attempts = a.max_attempts;
  options.scheduler.heartbeat_timeout_ms = static_cast<int64_t>(a.heartbeat_timeout_s * 1000);
  options.attention = *lc;
  options.default_max_tokens = a.max_tokens;
  options.chat_template = a.chat_template;
  options.metrics = ops_rt->metrics;
  auto core = coord::CoordinatorCore::Create(**model, options);
  if (!core.ok()) return Fail(core.status());
  coord::CoordinatorServerOptions server_options;
  server_options.listen = a.listen;
  server_options.security = security->server;
  server_options.worker_channels = security->channels;
  server_options.tokens = security->tokens;
  server_options.health_listen = security->health_listen;
  std::fputs(SecurityWarnings(*security, a.listen).c_str(), stderr);
  auto server = coord::CoordinatorServer::Start(**core, server_options);
  if (!server.ok()) return Fail(server.status());
  if (absl::Status s = WriteAddressFile(a.address_file, (*server)->address()); !s.ok()) return Fail(s);
  ops::LogInfo("coordinator.listening", {{"address", (*server)->address()}, {"store", a.store},
                                         {"model", DescribeModel(**model)}, {"placement", a.placement},
                                         {"metrics", ops_rt->metrics_address()}});

  ops::LogInfo("coordinator.security",
               {{"transport", security->server.tls() ? "tls" : "plaintext"},
                {"workers", security->server.client_ca ? "client certificate required" : "unauthenticated"},
                {"job_service", security->tokens ? "bearer token required" : "open"}});
  if (!(*server)->health_address().empty()) {
    ops::LogInfo("health.listening", {{"address", (*server)->health_address()}, {"note", "plain text, grpc.health.v1 only"}});
  }
  coord::CoordinatorServer* srv = server->get();
  {
    SignalWaiter signals([srv](int sig) {
      ops::LogInfo("coordinator.stopping", {{"signal", sig}, {"note", "unfinished jobs resume on restart"}});
      srv->Shutdown();
    });
    srv->Wait();
  }
  server->reset();
  core->reset();
  return 0;
}

// ---------------------------------------------------------------- worker

struct WorkerArgs {
  std::string coordinator, model, listen, name, kv_memory = "0", kv_prefetch = "1G", address_file;
  int threads = 0;
  DeviceFlags device;
  int kv_lanes = 2;
  std::string kv_transport = "grpc";
  int kv_links = worker::WorkerProcessOptions{}.kv_links;
  double register_timeout_s = 0;
  TlsFlags tls;
  OpsFlags ops;  // --metrics-listen, --log-level, --log-format
};

int RunWorker(const WorkerArgs& a) {
  BlockShutdownSignals();
  auto ops_rt = StartOps(a.ops, 9091, "worker");
  if (!ops_rt.ok()) return Fail(ops_rt.status());
  std::string coordinator = a.coordinator;
  if (coordinator.empty()) {
    const char* env = std::getenv("MESA_COORDINATOR");
    if (env) coordinator = env;
  }
  if (coordinator.empty()) {
    return Fail(absl::InvalidArgumentError("no coordinator: pass --coordinator HOST:PORT or set MESA_COORDINATOR"));
  }
  auto kv = ParseBytes(a.kv_memory);
  if (!kv.ok()) return Fail(kv.status());
  auto prefetch = ParseBytes(a.kv_prefetch);
  if (!prefetch.ok()) return Fail(prefetch.status());
  auto security = ToServerSecurity(a.tls, rpc::ClientCertMode::kRequire);
  if (!security.ok()) return Fail(security.status());
  std::fputs(SecurityWarnings(*security, a.listen.empty() ? "(an address of this host)" : a.listen).c_str(), stderr);
  auto model = LoadModelForCli(a.model, /*compute=*/true, a.device.device);
  if (!model.ok()) return Fail(model.status());
  worker::WorkerProcessOptions options;
  options.coordinator = coordinator;
  options.listen = a.listen;
  options.name = a.name;
  options.threads = a.threads;
  options.device = a.device.device;
  options.kv_type = a.device.kv_type;
  options.kv_memory_bytes = *kv;
  options.kv_lanes = a.kv_lanes;
  options.kv_prefetch_bytes = *prefetch;
  options.kv_transport = a.kv_transport;
  options.kv_links = a.kv_links;
  options.register_timeout_ms = static_cast<int64_t>(a.register_timeout_s * 1000);
  options.security = security->server;
  options.channels = security->channels;
  options.health_listen = security->health_listen;
  options.metrics = ops_rt->metrics;
  auto process = worker::WorkerProcess::Start(**model, options);
  if (!process.ok()) return Fail(process.status());
  if (absl::Status s = WriteAddressFile(a.address_file, (*process)->address()); !s.ok()) return Fail(s);
  worker::WorkerProcess* p = process->get();
  absl::Status exit;
  {
    SignalWaiter signals([p](int sig) {
      ops::LogInfo("worker.draining", {{"signal", sig}, {"note", "finishing the task at hand"}});
      p->Drain();
    });
    exit = p->Wait();
  }
  process->reset();
  if (!exit.ok()) return Fail(exit);
  return 0;
}

}  // namespace

void RegisterClusterCommands(CLI::App& app) {
  {
    auto a = std::make_shared<CoordinatorArgs>();
    CLI::App* cmd = app.add_subcommand(
        "coordinator", "Serve the job service: accept batch jobs, plan them, run them on registered workers");
    cmd->footer(
        "The coordinator tokenizes, templates and plans every document with the model's tokenizer and metadata\n"
        "(it never loads the matrices), keeps jobs, items and results in DIR/mesa.db (SQLite, WAL) and writes\n"
        "each finished job's results to DIR/results/JOB.jsonl. Restarting it on the same --store resumes every\n"
        "unfinished job; finished items are never recomputed. Workers (`mesa worker`) register with it.\n"
        "Placement: whole runs each document on one worker; spread computes a long document's middle chunks\n"
        "on every worker and gathers their K/V on one; auto chooses whole while queued documents outnumber\n"
        "idle workers, spread when workers would otherwise idle.\n"
        "Example: mesa coordinator --listen 0.0.0.0:50051 --store /data/mesa --model model.gguf");
    cmd->add_option("--listen", a->listen, "HOST:PORT to serve on (port 0: any free port)")->capture_default_str();
    cmd->add_option("--store", a->store, "Directory for the job store and result files (created)")->required();
    cmd->add_option("--model,-m", a->model, "GGUF file or Hugging Face directory (the workers' model)")->required();
    cmd->add_option("--placement", a->placement, "auto, whole or spread")
        ->check(CLI::IsMember({"auto", "whole", "spread"}))
        ->capture_default_str();
    cmd->add_option("--max-attempts", a->max_attempts, "Failed tries of one document before it fails for good")
        ->check(CLI::Range(1, 100))
        ->capture_default_str();
    cmd->add_option("--max-tokens", a->max_tokens, "Default generation budget of jobs that set none")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    cmd->add_option("--template", a->chat_template, "Default chat template (auto, llama2, llama3, chatml, mistral, raw)")
        ->check(CLI::IsMember({"auto", "llama2", "llama3", "chatml", "mistral", "raw"}))
        ->capture_default_str();
    cmd->add_option("--heartbeat-timeout", a->heartbeat_timeout_s, "Seconds of silence after which a worker is dead")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    cmd->add_option("--address-file", a->address_file, "Write the bound HOST:PORT to this file once serving");
    AddLongContextFlags(cmd, &a->lc);
    AddTlsServerFlags(cmd, &a->tls, /*tokens=*/true);
    AddOpsFlags(cmd, &a->ops, 9090);
    cmd->callback([a] { ExitCode() = RunCoordinator(*a); });
  }
  {
    auto a = std::make_shared<WorkerArgs>();
    CLI::App* cmd = app.add_subcommand(
        "worker", "Serve chunk and final tasks for a coordinator (registers, beats, drains on SIGTERM)");
    cmd->footer(
        "The worker loads the model, registers with the coordinator (retrying with backoff until it answers;\n"
        "a coordinator restart is noticed and the worker registers again), runs the tasks it is sent, keeps\n"
        "chunk K/V in memory under --kv-memory until released (with a lease, so K/V orphaned by a crash is\n"
        "freed) and streams it to final workers. SIGTERM/SIGINT drain: the task at hand finishes, no new one\n"
        "is taken, the worker deregisters and exits 0. A worker killed outright is survived by the job: its\n"
        "tasks run elsewhere. The model must be the coordinator's (checked by fingerprint at registration).\n"
        "Example: mesa worker --coordinator 10.0.0.1:50051 --model model.gguf --threads 16 --kv-memory 32G");
    cmd->add_option("--coordinator", a->coordinator, "HOST:PORT of the coordinator (default: $MESA_COORDINATOR)");
    cmd->add_option("--model,-m", a->model, "GGUF file or Hugging Face directory (the coordinator's model)")
        ->required();
    cmd->add_option("--listen", a->listen,
                    "HOST:PORT to serve on (default: an ephemeral port on the address that reaches the coordinator)");
    cmd->add_option("--threads", a->threads, "CPU threads (default: all hardware threads)")
        ->check(CLI::NonNegativeNumber);
    AddDeviceFlags(cmd, &a->device);
    cmd->add_option("--kv-memory", a->kv_memory,
                    "Bytes of chunk K/V this worker may hold (suffix K/M/G/T; 0 = no limit); a task beyond it is "
                    "refused and placed elsewhere")
        ->capture_default_str();
    cmd->add_option("--kv-lanes", a->kv_lanes,
                    "Streams (each its own connection) one chunk's K/V is fetched over at once; the sender uses "
                    "one per 4 MiB at most")
        ->check(CLI::Range(1, 16))
        ->capture_default_str();
    AddKvTransportFlag(cmd, &a->kv_transport);
    AddKvPrefetchFlag(cmd, &a->kv_prefetch);
    AddKvLinksFlag(cmd, &a->kv_links);
    cmd->add_option("--name", a->name, "Name shown in the coordinator's logs (default: the host name)");
    cmd->add_option("--register-timeout", a->register_timeout_s,
                    "Give up when the coordinator cannot be reached for this many seconds (0: keep trying)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--address-file", a->address_file, "Write the bound HOST:PORT to this file once serving");
    AddTlsServerFlags(cmd, &a->tls, /*tokens=*/false);
    AddOpsFlags(cmd, &a->ops, 9091);
    cmd->callback([a] { ExitCode() = RunWorker(*a); });
  }
}

}  // namespace mesa::cli
