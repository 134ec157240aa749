// `mesa cluster`: a whole Mesa cluster started as one MPI job
//   mpirun -np N mesa cluster --model M [--input IN --output OUT] [--store DIR] ...
//   srun --mpi=pmix mesa cluster ...            (Slurm: deploy/slurm/mesa.sbatch)
// Rank 0 runs the coordinator (CoordinatorCore and its gRPC server) and a worker; every
// other rank runs a worker (worker::WorkerProcess). MPI is the launcher and the
// bootstrap only: rank 0 binds its port and broadcasts the address in the one
// collective of the run (MPI_Bcast); the workers register with it over gRPC. After
// that no rank enters an MPI collective again, since a peer may be dead: tasks,
// heartbeats and K/V go over gRPC, and the end of a batch reaches the other ranks as a
// non-blocking point-to-point message from rank 0 (MpiJob::SendDrain). A rank that
// dies is a dead worker to the coordinator, whose scheduler re-runs its tasks on the
// others (the job survives it when mpirun is told not to abort: docs/RUNTIME.md).
// With --input/--output rank 0 runs the file as one job, exactly as `mesa run --workers
// K` does through coordinator/local_run.cc (the same records, written in input order),
// then stops every rank; without --input it serves the JobService on --listen for
// `mesa submit` until SIGTERM/SIGINT. Built without MPI, the command exits 2.
#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/cli/attention_flags.h"
#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "client/cli/device_flags.h"
#include "kernels/cuda/device_query.h"
#include "client/cli/ops_flags.h"
#include "client/cli/security_flags.h"
#include "client/cli/server_util.h"
#include "common/status.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/local_run.h"
#include "engine/model_fingerprint.h"
#include "jobs/job_format.h"
#include "jobs/progress.h"
#include "worker/kv_wire.h"
#include "worker/worker_rpc.h"

#if MESA_HAVE_MPI
#include <mpi.h>
#endif

namespace mesa::cli {
namespace {

constexpr int kUsageError = 2;

struct ClusterArgs {
  std::string model, input, output, store, listen, advertise, address_file;
  std::string task = "summarize";
  std::string chat_template = "auto";
  std::string placement = "auto";
  std::string kv_memory = "0";
  std::string kv_prefetch = "1G";
  std::string kv_transport = "grpc";
  int kv_links = worker::WorkerProcessOptions{}.kv_links;
  int64_t max_tokens = 256;
  int64_t max_doc_bytes = 16 << 20;
  int threads = 0;
  DeviceFlags device;
  int max_attempts = 3;
  double heartbeat_timeout_s = 5;
  LongContextFlags lc;
  // The servers' security and operations flags, as on `mesa coordinator` and `mesa
  // worker` (TLS, tokens, health and metrics listeners, logging).
  TlsFlags tls;
  OpsFlags ops;
};

// "HOST:PORT" with PORT moved up by `offset` (a rank's local rank, so that the ranks of
// one machine do not ask for the same port); port 0 (any free port) stays 0. "HOST"
// alone takes `default_port` first. "" stays "".
std::string OffsetListen(const std::string& listen, int default_port, int offset) {
  if (listen.empty()) return listen;
  const size_t colon = listen.rfind(':');
  const bool has_port = colon != std::string::npos && listen.find(']', colon) == std::string::npos;
  std::string host = has_port ? listen.substr(0, colon) : listen;
  int port = default_port;
  if (has_port) {
    char* end = nullptr;
    const long v = std::strtol(listen.c_str() + colon + 1, &end, 10);
    if (end == listen.c_str() + colon + 1 || *end != 0 || v < 0 || v > 65535) return listen;  // StartOps says why
    port = static_cast<int>(v);
  }
  if (port == 0) return host + ":0";
  return absl::StrCat(host, ":", port + offset);
}

#if MESA_HAVE_MPI

// Everything the flags decide, checked identically on every rank before MPI starts
// (so a bad flag stops every rank the same way, and none waits in a collective).
struct Prepared {
  LongContextOptions attention;
  ServerSecurityConfig coordinator_security;  // rank 0's coordinator (verifies client certificates if presented)
  ServerSecurityConfig worker_security;       // every rank's worker (requires them under --tls-client-ca)
  coord::Placement placement = coord::Placement::kAuto;
  int64_t kv_memory_bytes = 0;
  int64_t kv_prefetch_bytes = 0;
  std::string listen;
  bool batch = false;  // --input given
};

absl::StatusOr<Prepared> Prepare(const ClusterArgs& a) {
  Prepared p;
  auto lc = ToLongContextOptions(a.lc);
  if (!lc.ok()) return lc.status();
  p.attention = *lc;
  if (!coord::ParsePlacement(a.placement, &p.placement)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown placement '", a.placement, "'"));
  }
  auto kv = ParseBytes(a.kv_memory);
  if (!kv.ok()) return kv.status();
  p.kv_memory_bytes = *kv;
  MESA_ASSIGN_OR_RETURN(p.kv_prefetch_bytes, ParseBytes(a.kv_prefetch));
  p.batch = !a.input.empty();
  p.listen = !a.listen.empty() ? a.listen : p.batch ? "0.0.0.0:0" : "0.0.0.0:50051";
  // Certificates, keys and token files are read and checked here, on every rank alike.
  MESA_ASSIGN_OR_RETURN(p.coordinator_security, ToServerSecurity(a.tls, rpc::ClientCertMode::kVerifyIfPresented));
  MESA_ASSIGN_OR_RETURN(p.worker_security, ToServerSecurity(a.tls, rpc::ClientCertMode::kRequire));
  return p;
}

coord::CoordinatorOptions CoordinatorOptionsFor(const ClusterArgs& a, const Prepared& p, const std::string& store) {
  // As `mesa run --workers K` sets its core up (coordinator/local_run.cc), so that the
  // records are the same; the heartbeat timeout is real here (ranks can die).
  coord::CoordinatorOptions co;
  co.store_dir = store;
  co.scheduler.placement = p.placement;
  co.scheduler.max_attempts = a.max_attempts;
  co.scheduler.heartbeat_timeout_ms = static_cast<int64_t>(a.heartbeat_timeout_s * 1000);
  co.attention = p.attention;
  co.default_max_tokens = a.max_tokens;
  co.max_doc_bytes = a.max_doc_bytes;
  co.chat_template = a.chat_template;
  return co;
}

coord::CoordinatorServerOptions CoordinatorServerOptionsFor(const ClusterArgs&, const Prepared& p,
                                                            const std::string& health_listen) {
  coord::CoordinatorServerOptions o;
  o.listen = p.listen;
  o.security = p.coordinator_security.server;
  o.worker_channels = p.coordinator_security.channels;
  o.tokens = p.coordinator_security.tokens;
  o.health_listen = health_listen;
  return o;
}

// `health_listen`: "" on rank 0 (its coordinator's health server speaks for the process).
worker::WorkerProcessOptions WorkerOptionsFor(const ClusterArgs& a, const Prepared& p, const std::string& coordinator,
                                              const std::string& name, const std::string& health_listen,
                                              std::shared_ptr<ops::Metrics> metrics) {
  worker::WorkerProcessOptions o;
  o.coordinator = coordinator;
  o.name = name;
  o.threads = a.threads;
  o.device = a.device.device;
  o.kv_type = a.device.kv_type;
  o.kv_memory_bytes = p.kv_memory_bytes;
  o.kv_prefetch_bytes = p.kv_prefetch_bytes;
  o.kv_transport = a.kv_transport;
  o.kv_links = a.kv_links;
  o.security = p.worker_security.server;
  o.channels = p.worker_security.channels;
  o.health_listen = health_listen;
  o.metrics = std::move(metrics);
  return o;
}

// This rank's operations flags: the metrics and health ports moved up by the local rank.
OpsFlags RankOps(const ClusterArgs& a, int local_rank) {
  OpsFlags o = a.ops;
  o.metrics_listen = OffsetListen(o.metrics_listen, 9090, local_rank);
  return o;
}
std::string RankHealthListen(const ClusterArgs& a, int local_rank) {
  return OffsetListen(a.tls.health_listen, 8081, local_rank);
}

std::string HostName() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return host[0] ? host : "localhost";
}

bool IsLoopback(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    return (ntohl(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) return IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr);
  return false;
}

// A host name or address other machines can dial to reach this one: the host name when
// it resolves to a non-loopback address, else the first non-loopback IPv4 address of an
// interface, else the loopback address (a one-machine cluster).
std::string ReachableHost() {
  const std::string name = HostName();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  bool name_ok = false;
  if (getaddrinfo(name.c_str(), nullptr, &hints, &res) == 0) {
    for (addrinfo* r = res; r; r = r->ai_next) name_ok = name_ok || !IsLoopback(r->ai_addr);
    freeaddrinfo(res);
  }
  if (name_ok) return name;
  ifaddrs* ifs = nullptr;
  std::string out = "127.0.0.1";
  if (getifaddrs(&ifs) == 0) {
    for (ifaddrs* i = ifs; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || IsLoopback(i->ifa_addr)) continue;
      char buf[INET_ADDRSTRLEN];
      if (inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof buf)) {
        out = buf;
        break;
      }
    }
    freeifaddrs(ifs);
  }
  return out;
}

// The HOST:PORT the other ranks dial, from the bound one: --advertise's host when given;
// the bound host unless it is a wildcard; else ReachableHost().
std::string AdvertisedAddress(const std::string& bound, const std::string& advertise) {
  const size_t colon = bound.rfind(':');
  const std::string host = bound.substr(0, colon), port = bound.substr(colon + 1);
  if (!advertise.empty()) return absl::StrCat(advertise, ":", port);
  if (!host.empty() && host != "0.0.0.0" && host != "[::]" && host != "::") return bound;
  return absl::StrCat(ReachableHost(), ":", port);
}

// Whether a TCP connection to HOST:PORT opens within `timeout_ms` (a probe of the
// coordinator's port: it says nothing of TLS or the service, only that rank 0 lives).
bool Reachable(const std::string& host_port, int timeout_ms) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = host_port.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), host_port.substr(colon + 1).c_str(), &hints, &res) != 0 || !res) return false;
  bool ok = false;
  for (addrinfo* r = res; r && !ok; r = r->ai_next) {
    const int fd = socket(r->ai_family, r->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, r->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, r->ai_addr, r->ai_addrlen) == 0) {
      ok = true;
    } else if (errno == EINPROGRESS) {
      pollfd pfd{fd, POLLOUT, 0};
      int err = 0;
      socklen_t len = sizeof err;
      ok = poll(&pfd, 1, timeout_ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
    }
    close(fd);
  }
  freeaddrinfo(res);
  return ok;
}

// The job's request id for an input file: a digest of the file's bytes and of every
// option that changes its records, so that a rerun with the same --store and --input
// finds the job it created (CreateJob's request_id idempotency) and only runs the items
// still unfinished, while other options or another file make a new job.
std::string BatchRequestId(const std::string& input_bytes, const ClusterArgs& a) {
  const LongContextFlags& f = a.lc;
  const std::string options = absl::StrCat(
      "task=", a.task, ";max_tokens=", a.max_tokens, ";template=", a.chat_template, ";max_doc_bytes=",
      a.max_doc_bytes, ";attention=", f.attention, ",", f.train_length, ",", f.anchor, ",", f.last_chunk, ",",
      f.margin, ",", f.max_chunk, ",", f.stair_n, ",", f.stair_e, ",", f.no_logn, ",", f.se_group, ",", f.se_window,
      ",", f.rerope_window);
  uint64_t fnv = 1469598103934665603ULL;  // FNV-1a 64 over the bytes, then the options
  for (const std::string* s : {&input_bytes, &options}) {
    for (unsigned char c : *s) fnv = (fnv ^ c) * 1099511628211ULL;
  }
  const uint32_t crc = worker::Crc32c(options.data(), options.size(),
                                      worker::Crc32c(input_bytes.data(), input_bytes.size()));
  return absl::StrFormat("mesa-cluster-%016x-%08x-%d", fnv, crc, input_bytes.size());
}

// Rank 0's batch: the input file as one job on the coordinator core (found again by its
// request id when the store already holds it), progress on stderr as `mesa run` shows
// it, and the records written to --output in input order once the job completes.
absl::StatusOr<jobs::BatchSummary> RunBatch(coord::CoordinatorCore& core, const ClusterArgs& a,
                                            const std::atomic<bool>& stop) {
  MESA_ASSIGN_OR_RETURN(std::string bytes, ReadTextFile(a.input));
  std::vector<std::string> lines;
  {
    std::istringstream in(bytes);
    std::string line;
    while (std::getline(in, line)) lines.push_back(line);  // blank lines are no items, as in `mesa run`
  }
  coord::JobRequest request;
  request.task = a.task;
  request.max_tokens = a.max_tokens;
  request.chat_template = a.chat_template;
  request.max_doc_bytes = a.max_doc_bytes;
  request.request_id = BatchRequestId(bytes, a);
  const int64_t started = static_cast<int64_t>(std::time(nullptr));
  MESA_ASSIGN_OR_RETURN(coord::JobRecord job, core.CreateJob(request, lines));
  MESA_ASSIGN_OR_RETURN(std::vector<coord::ItemRecord> items, core.Items(job.id));
  // A job created by an earlier run (its request id was in the store): the items it
  // settled stay as they are. A new job's settled items (lines that failed validation)
  // are this run's records.
  const bool resumed = job.created_at < started;
  std::set<int64_t> seen;  // items settled so far
  for (const coord::ItemRecord& item : items) {
    if (resumed && item.state != coord::ItemState::kPending && !item.result.empty()) seen.insert(item.idx);
  }
  jobs::BatchSummary summary;
  summary.skipped = static_cast<int64_t>(seen.size());
  const int64_t todo = static_cast<int64_t>(items.size()) - summary.skipped;
  std::fprintf(stderr, "mesa cluster: job %s (request %s): %lld items", job.id.c_str(), request.request_id.c_str(),
               static_cast<long long>(items.size()));
  if (summary.skipped > 0) {
    std::fprintf(stderr, ", %lld already done in the store (not recomputed)", static_cast<long long>(summary.skipped));
  }
  std::fprintf(stderr, "\n");

  jobs::ProgressPrinter progress(stderr, isatty(fileno(stderr)) != 0);
  progress.OnStart(todo, 0, jobs::ExistingOutput{});
  absl::Status followed = coord::FollowJob(
      core, job.id, seen, summary,
      [&](const coord::ItemRecord&, const jobs::JobResult& r) {
        progress.OnRecord(r, summary.processed, todo);
        return absl::OkStatus();
      },
      [&stop] { return stop.load(); }, 200);
  if (absl::IsAborted(followed)) {
    progress.Finish();
    return absl::AbortedError(absl::StrCat("interrupted; job ", job.id, " is unfinished (",
                                           a.store.empty() ? "its temporary store is removed"
                                                           : "rerun with the same --store and --input to resume",
                                           ")"));
  }
  if (!followed.ok()) {
    progress.Finish();
    return followed;
  }
  progress.Finish();
  // The records in input order, as `mesa run` leaves its output.
  MESA_ASSIGN_OR_RETURN(std::vector<std::string> records, core.Results(job.id, "mesa"));
  for (std::string& r : records) r += "\n";
  MESA_RETURN_IF_ERROR(jobs::RewriteFile(a.output, records));
  return summary;
}

// What rank 0 tells every rank at startup, in the run's one collective (MPI_Bcast of a
// fixed size).
struct Bootstrap {
  char ok = 0;              // 1: the coordinator serves at `text`; 0: `text` is rank 0's error
  char text[1023] = {};
  // GPU seam (no GPU backend yet, issue 7): in GPU builds rank 0's ncclGetUniqueId()
  // (ncclUniqueId, 128 bytes of host memory: fine for Debian's non-CUDA-aware OpenMPI)
  // travels in this same broadcast, and each rank then selects its GPU by local rank
  // (MpiJob::local_rank) before joining the NCCL communicator.
};

// MPI as this command uses it: initialized here only (no other command calls MPI), with
// errors returned rather than aborting the job; every MPI call comes from the main thread
// (MPI_THREAD_FUNNELED; gRPC's threads never call MPI).
class MpiJob {
 public:
  static constexpr int kDrainTag = 0x4d45;  // rank 0 -> every rank: the run is over, drain

  MpiJob() {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    // The rank among those on this machine, which selects the GPU in GPU builds: from
    // the launcher's environment (OpenMPI's mpirun, Slurm's srun), else from MPI.
    for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
      if (const char* v = std::getenv(var); v && *v) {
        local_rank_ = std::atoi(v);
        local_rank_source_ = var;
        return;
      }
    }
    MPI_Comm local;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
      MPI_Comm_rank(local, &local_rank_);
      MPI_Comm_free(&local);
      local_rank_source_ = "MPI_COMM_TYPE_SHARED";
    }
  }
  ~MpiJob() { (void)Finalize(1); }

  // Ends MPI and returns `code`, the process's exit code. MPI_Finalize waits for every
  // rank (OpenMPI: a PMIx fence in mpirun), and when a rank died it can wait forever
  // (seen with OpenMPI 4.1 under --enable-recovery, now and then): after
  // kFinalizeTimeout this process exits with `code` without it.
  int Finalize(int code) {
    if (finalized_) return code;
    finalized_ = true;
    if (drain_posted_) {
      int done = 0;
      MPI_Test(&drain_req_, &done, MPI_STATUS_IGNORE);
      if (!done) {
        MPI_Cancel(&drain_req_);
        MPI_Request_free(&drain_req_);
      }
    }
    std::fflush(stdout);
    std::fflush(stderr);
    std::mutex mu;
    std::condition_variable cv;
    bool finished = false;
    std::thread watchdog([&] {
      std::unique_lock<std::mutex> lock(mu);
      if (!cv.wait_for(lock, kFinalizeTimeout, [&] { return finished; })) {
        std::fprintf(stderr,
                     "mesa cluster: rank %d: MPI_Finalize still waits after %lld s (a rank died?); exiting without "
                     "it\n",
                     rank_, static_cast<long long>(kFinalizeTimeout.count()));
        std::fflush(stderr);
        std::_Exit(code);
      }
    });
    MPI_Finalize();
    {
      std::lock_guard<std::mutex> lock(mu);
      finished = true;
    }
    cv.notify_all();
    watchdog.join();
    return code;
  }
  MpiJob(const MpiJob&) = delete;
  MpiJob& operator=(const MpiJob&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  const std::string& local_rank_source() const { return local_rank_source_; }

  // Rank 0 sends `boot`, the others receive it.
  absl::Status Broadcast(Bootstrap* boot) {
    if (MPI_Bcast(boot, sizeof *boot, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
      return absl::UnavailableError("MPI_Bcast of the coordinator's address failed");
    }
    boot->text[sizeof boot->text - 1] = 0;
    if (rank_ != 0) PostDrainReceive();
    return absl::OkStatus();
  }

  // Rank 0: tells every other rank to drain, waiting at most `timeout_ms` for the sends
  // (a dead rank's never completes; the message is tiny, so a live one's does at once).
  void SendDrain(int timeout_ms) {
    if (size_ <= 1) return;
    int one = 1;
    std::vector<MPI_Request> reqs(size_ - 1, MPI_REQUEST_NULL);
    for (int r = 1; r < size_; ++r) MPI_Isend(&one, 1, MPI_INT, r, kDrainTag, MPI_COMM_WORLD, &reqs[r - 1]);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    int done = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS) break;
      if (done) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    for (MPI_Request& r : reqs) {
      if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
    }
  }

  // Other ranks: whether rank 0's drain message arrived.
  bool DrainRequested() {
    if (!drain_posted_) return false;
    int done = 0;
    if (MPI_Test(&drain_req_, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return false;
    if (done) drain_posted_ = false;
    return done != 0;
  }

 private:
  void PostDrainReceive() {
    drain_posted_ = MPI_Irecv(&drain_buf_, 1, MPI_INT, 0, kDrainTag, MPI_COMM_WORLD, &drain_req_) == MPI_SUCCESS;
  }

  static constexpr std::chrono::seconds kFinalizeTimeout{10};
  bool finalized_ = false;
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  std::string local_rank_source_ = "none";
  MPI_Request drain_req_ = MPI_REQUEST_NULL;
  int drain_buf_ = 0;
  bool drain_posted_ = false;
};

void Log(const std::string& message) {
  std::fprintf(stderr, "mesa cluster: %s\n", message.c_str());
  std::fflush(stderr);
}

// A worker of this rank, with its Wait() on a thread of its own so that the main thread
// can poll MPI and the coordinator meanwhile.
class RankWorker {
 public:
  static absl::StatusOr<std::unique_ptr<RankWorker>> Start(const Model& model, worker::WorkerProcessOptions options) {
    auto process = worker::WorkerProcess::Start(model, std::move(options));
    if (!process.ok()) return process.status();
    std::unique_ptr<RankWorker> w(new RankWorker());
    w->process_ = *std::move(process);
    w->waiter_ = std::thread([p = w.get()] {
      p->exit_ = p->process_->Wait();
      p->stopped_ = true;
    });
    return w;
  }
  ~RankWorker() { (void)Stop(); }
  bool stopped() const { return stopped_.load(); }
  const std::string& address() const { return process_->address(); }
  // Drains (the task at hand finishes, the worker deregisters) and returns how it ended.
  absl::Status Stop() {
    if (waiter_.joinable()) {
      process_->Drain();
      waiter_.join();
      process_.reset();
    }
    return exit_;
  }

 private:
  RankWorker() = default;
  std::unique_ptr<worker::WorkerProcess> process_;
  std::thread waiter_;
  std::atomic<bool> stopped_{false};
  absl::Status exit_;
};

int RunRankZero(MpiJob& mpi, const ClusterArgs& a, const Prepared& p, absl::StatusOr<std::unique_ptr<Model>> model,
                const std::atomic<bool>& stop) {
  coord::TempDir temp;
  std::unique_ptr<coord::CoordinatorCore> core;
  std::unique_ptr<coord::CoordinatorServer> server;
  std::string address;
  OpsRuntime ops_rt;
  absl::Status up = [&]() -> absl::Status {
    MESA_ASSIGN_OR_RETURN(ops_rt, StartOps(RankOps(a, mpi.local_rank()), 9090, "cluster"));
    if (!model.ok()) return model.status();
    if (!(*model)->tokenizer) return absl::FailedPreconditionError("the model has no tokenizer");
    if (a.store.empty()) {
      temp.Create("mesa-cluster");
      if (temp.path.empty()) return absl::InternalError("cannot create a temporary job store");
    }
    coord::CoordinatorOptions co = CoordinatorOptionsFor(a, p, a.store.empty() ? temp.path : a.store);
    co.metrics = ops_rt.metrics;  // one registry for this process's coordinator and worker
    MESA_ASSIGN_OR_RETURN(core, coord::CoordinatorCore::Create(**model, co));
    std::fputs(SecurityWarnings(p.coordinator_security, p.listen).c_str(), stderr);
    MESA_ASSIGN_OR_RETURN(server, coord::CoordinatorServer::Start(
                                      *core, CoordinatorServerOptionsFor(a, p, RankHealthListen(a, mpi.local_rank()))));
    address = AdvertisedAddress(server->address(), a.advertise);
    if (!a.address_file.empty()) MESA_RETURN_IF_ERROR(jobs::RewriteFile(a.address_file, {address + "\n"}));
    return absl::OkStatus();
  }();
  // Every rank waits in this broadcast: it must happen, with the address or the error.
  Bootstrap boot;
  boot.ok = up.ok() ? 1 : 0;
  std::snprintf(boot.text, sizeof boot.text, "%s", up.ok() ? address.c_str() : std::string(up.message()).c_str());
  if (absl::Status s = mpi.Broadcast(&boot); !s.ok()) return Fail(s);
  if (!up.ok()) return Fail(up);
  Log(absl::StrCat("coordinator on ", server->address(), " (ranks dial ", address, "), store ",
                   a.store.empty() ? temp.path + " (temporary)" : a.store, ", model ", DescribeModel(**model),
                   ", placement ", a.placement, ", heartbeat timeout ", a.heartbeat_timeout_s, " s"));

  if (!server->health_address().empty()) Log("health checks (plain text) on " + server->health_address());
  if (ops_rt.server) Log("metrics on http://" + ops_rt.metrics_address() + "/metrics");
  auto worker = RankWorker::Start(
      **model, WorkerOptionsFor(a, p, address, absl::StrCat("rank0@", HostName()), "", ops_rt.metrics));
  if (!worker.ok()) {
    mpi.SendDrain(2000);
    return Fail(worker.status());
  }

  int code = 0;
  if (p.batch) {
    std::fprintf(stderr,
                 "mesa cluster: %d ranks, task %s, template %s, attention %s, up to %lld new tokens per document\n",
                 mpi.size(), a.task.c_str(), a.chat_template.c_str(), a.lc.attention.c_str(),
                 static_cast<long long>(a.max_tokens));
    auto summary = RunBatch(*core, a, stop);
    if (summary.ok()) {
      std::fprintf(stderr, "mesa cluster: %lld ok, %lld error%s", static_cast<long long>(summary->ok),
                   static_cast<long long>(summary->errors), summary->errors == 1 ? "" : "s");
      if (summary->skipped > 0) std::fprintf(stderr, ", %lld already done", static_cast<long long>(summary->skipped));
      std::fprintf(stderr, "; results in %s\n", a.output.c_str());
    } else {
      code = Fail(summary.status());
    }
  } else {
    Log("serving the JobService (mesa submit --coordinator " + address +
        "); SIGTERM, SIGINT or SIGUSR1 stops the cluster");
    while (!stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }

  // The end: every rank drains (the task at hand finishes; each worker deregisters while
  // the coordinator still serves), then the coordinator stops.
  Log("stopping: the other ranks drain");
  mpi.SendDrain(2000);
  (void)(*worker)->Stop();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (core->stats().workers > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  server->Shutdown();
  server.reset();
  core.reset();
  return code;
}

int RunOtherRank(MpiJob& mpi, const ClusterArgs& a, const Prepared& p, absl::StatusOr<std::unique_ptr<Model>> model,
                 const std::atomic<bool>& stop) {
  Bootstrap boot;
  if (absl::Status s = mpi.Broadcast(&boot); !s.ok()) return Fail(s);
  if (!boot.ok) {
    return Fail(absl::UnavailableError(absl::StrCat("rank 0 could not start the coordinator: ", boot.text)));
  }
  const std::string coordinator = boot.text;
  if (!model.ok()) return Fail(model.status());
  auto ops_rt = StartOps(RankOps(a, mpi.local_rank()), 9090, "cluster");
  if (!ops_rt.ok()) return Fail(ops_rt.status());
  if (ops_rt->server) Log(absl::StrCat("rank ", mpi.rank(), ": metrics on http://", ops_rt->metrics_address(), "/metrics"));
  auto worker = RankWorker::Start(
      **model, WorkerOptionsFor(a, p, coordinator, absl::StrCat("rank", mpi.rank(), "@", HostName()),
                                RankHealthListen(a, mpi.local_rank()), ops_rt->metrics));
  if (!worker.ok()) return Fail(worker.status());

  // Rank 0 gone (its port closed) for this long ends the rank: the run cannot finish.
  const auto gone_after = std::chrono::milliseconds(static_cast<int64_t>(std::max(10.0, 3 * a.heartbeat_timeout_s) * 1000));
  auto last_seen = std::chrono::steady_clock::now();
  auto next_probe = last_seen;
  int code = 0;
  for (;;) {
    if (stop.load()) break;
    if (mpi.DrainRequested()) break;
    if ((*worker)->stopped()) break;
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_probe) {
      if (Reachable(coordinator, 1000)) {
        last_seen = now;
      } else if (now - last_seen > gone_after) {
        Log(absl::StrCat("rank ", mpi.rank(), ": the coordinator at ", coordinator, " (rank 0) is gone; stopping"));
        code = 1;
        break;
      }
      next_probe = now + std::chrono::seconds(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  absl::Status exit = (*worker)->Stop();
  if (!exit.ok()) return Fail(exit);
  return code;
}

// `--device cuda` (no index) on a rank: the GPU of its local rank, round robin over the
// GPUs this process sees, so that ranks sharing a node do not share a GPU (NCCL refuses
// two ranks of a communicator on one). Under Slurm's --gpus-per-task each task sees one
// GPU: cuda:0 of its own. Anything else is kept as given.
std::string RankDevice(const std::string& device, int local_rank) {
  if (device != "cuda" || local_rank <= 0) return device;
  const CudaDeviceReport report = QueryCudaDevices();
  if (report.devices.empty()) return device;  // the backend says why it cannot run
  return absl::StrCat("cuda:", local_rank % static_cast<int>(report.devices.size()));
}

int RunCluster(const ClusterArgs& given) {
  ClusterArgs a = given;
  auto prepared = Prepare(a);
  if (!prepared.ok()) return Fail(prepared.status());
  // Before MPI and gRPC start threads: only the SignalWaiter takes SIGTERM/SIGINT.
  BlockShutdownSignals(/*sigusr1=*/true);
  MpiJob mpi;
  std::atomic<bool> stop{false};
  SignalWaiter signals(
      [&stop, rank = mpi.rank()](int sig) {
        std::fprintf(stderr, "mesa cluster: rank %d: signal %d, stopping (the task at hand finishes)\n", rank, sig);
        stop = true;
      },
      /*sigusr1=*/true);
  a.device.device = RankDevice(a.device.device, mpi.local_rank());
  Log(absl::StrCat("rank ", mpi.rank(), " of ", mpi.size(), " on ", HostName(), ", pid ", getpid(), ", local rank ",
                   mpi.local_rank(), " (", mpi.local_rank_source(), "), device ", a.device.device));
  // Every rank loads the model at once; errors wait until after the broadcast, which
  // every rank must join.
  auto model = LoadModelForCli(a.model, /*compute=*/true, a.device.device);
  const int code = mpi.rank() == 0 ? RunRankZero(mpi, a, *prepared, std::move(model), stop)
                                   : RunOtherRank(mpi, a, *prepared, std::move(model), stop);
  return mpi.Finalize(code);
}

#else  // !MESA_HAVE_MPI

int RunCluster(const ClusterArgs&) {
  std::fprintf(stderr,
               "mesa: error: this mesa was built without MPI, so `mesa cluster` is not available (install "
               "libopenmpi-dev and rebuild; or start `mesa coordinator` and `mesa worker` processes)\n");
  return kUsageError;
}

#endif  // MESA_HAVE_MPI

}  // namespace

void RegisterMpiCluster(CLI::App& app) {
  auto a = std::make_shared<ClusterArgs>();
  CLI::App* cmd = app.add_subcommand(
      "cluster", "Run a whole cluster as one MPI job (mpirun/srun): rank 0 coordinates and works, the others work");
  cmd->footer(
      "Start it with `mpirun -np N mesa cluster ...` or `srun --mpi=pmix mesa cluster ...` (alone it is a cluster\n"
      "of one rank). Rank 0 runs the coordinator and a worker, every other rank a worker; they find the\n"
      "coordinator through MPI. With --input/--output the file runs as one job (the records of `mesa run`, in\n"
      "input order) and every rank exits when it is done; without them the cluster serves `mesa submit` on\n"
      "--listen until SIGTERM/SIGINT. A rank that dies is a dead worker: its tasks run on the others, when\n"
      "mpirun is told not to abort (OpenMPI: mpirun --enable-recovery; mpirun then exits 0 whatever the ranks\n"
      "return: OUT is written, in one rename, only when the batch completed). With --store, a rerun after\n"
      "rank 0 died finds its job in the store and runs only the unfinished items. SIGTERM, SIGINT or SIGUSR1\n"
      "(which mpirun forwards without ending the job) drain every rank.\n"
      "Example: mpirun --enable-recovery -np 4 mesa cluster --model m.gguf --input in.jsonl --output out.jsonl \\\n"
      "           --store /shared/mesa-store --threads 8");
  cmd->add_option("--model,-m", a->model, "GGUF file or Hugging Face model directory (every rank loads it)")
      ->required();
  cmd->add_option("--input,-i", a->input, "Input JSONL to run as one job (without it: serve until a signal)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--output,-o", a->output, "Output JSONL (with --input), written in input order at the end");
  cmd->add_option("--store", a->store,
                  "Job store directory on rank 0's machine (a shared path under Slurm); a rerun with the same "
                  "store resumes (default with --input: a temporary directory removed at the end)");
  cmd->add_option("--listen", a->listen,
                  "HOST:PORT of rank 0's coordinator (default 0.0.0.0:50051 when serving, 0.0.0.0:0 with --input)");
  cmd->add_option("--advertise", a->advertise,
                  "Host name or address the other ranks dial for rank 0 (default: the --listen host, or this "
                  "machine's name when listening on every address)");
  cmd->add_option("--address-file", a->address_file, "Rank 0 writes the coordinator's HOST:PORT here once serving");
  cmd->add_option("--task", a->task, "summarize, qa or prompt (as `mesa run`)")
      ->check(CLI::IsMember({"summarize", "qa", "prompt"}))
      ->capture_default_str();
  cmd->add_option("--max-tokens", a->max_tokens, "Tokens to generate at most per document (a line's max_tokens wins)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--template", a->chat_template, "Chat template: auto, llama2, llama3, chatml, mistral or raw")
      ->check(CLI::IsMember({"auto", "llama2", "llama3", "chatml", "mistral", "raw"}))
      ->capture_default_str();
  cmd->add_option("--max-doc-bytes", a->max_doc_bytes, "Longer documents get an error record (0 = no limit)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads of each rank's worker (default: all hardware threads)")
      ->check(CLI::NonNegativeNumber);
  AddDeviceFlags(cmd, &a->device);
  cmd->add_option("--placement", a->placement, "auto, whole or spread (as `mesa coordinator`)")
      ->check(CLI::IsMember({"auto", "whole", "spread"}))
      ->capture_default_str();
  cmd->add_option("--max-attempts", a->max_attempts, "Failed tries of one document before it fails for good")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  cmd->add_option("--heartbeat-timeout", a->heartbeat_timeout_s,
                  "Seconds of silence after which a rank's worker is dead and its tasks run elsewhere")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--kv-memory", a->kv_memory, "Bytes of chunk K/V each rank's worker may hold (K/M/G/T; 0 = no limit)")
      ->capture_default_str();
  AddKvTransportFlag(cmd, &a->kv_transport);
  AddKvPrefetchFlag(cmd, &a->kv_prefetch);
  AddKvLinksFlag(cmd, &a->kv_links);
  AddLongContextFlags(cmd, &a->lc);
  AddTlsServerFlags(cmd, &a->tls, /*tokens=*/true);
  AddOpsFlags(cmd, &a->ops, 9090);
  cmd->callback([a] {
    if (a->input.empty() != a->output.empty()) {
      std::fprintf(stderr, "mesa: error: --input and --output go together\n");
      ExitCode() = kUsageError;
      return;
    }
    if (!a->input.empty() && a->input == a->output) {
      std::fprintf(stderr, "mesa: error: --input and --output must differ\n");
      ExitCode() = kUsageError;
      return;
    }
    if (a->input.empty() && a->store.empty()) {
      std::fprintf(stderr, "mesa: error: a serving cluster needs --store DIR (its jobs outlive it)\n");
      ExitCode() = kUsageError;
      return;
    }
    ExitCode() = RunCluster(*a);
  });
}

}  // namespace mesa::cli
