// Load test of one coordinator: a real CoordinatorServer (over a CoordinatorCore on a
// temporary store) and real gRPC workers in this process (WorkerProcess on loopback) on
// the tiny shared model, and --clients client threads, each with its own mesa::client
// connection, submitting small jobs for --seconds: each job is followed to its end
// (odd clients watch it with Wait, even ones poll GetJob every --poll-ms; all poll the
// final state), then its results are read. After the time is up, every client finishes
// the job it has in flight.
// Checks: no RPC errors, every job completed, every submitted line has exactly one
// result record (same custom_ids, no loss, no duplicate, status ok), and every record of
// one document has the same text (greedy decoding is deterministic), and the coordinator
// lists exactly the jobs submitted. Reports CreateJob and GetJob latency
// (p50/p90/p99/max) and throughput, and appends a row to --out (bench/results/load.md,
// with the machine: CPU model, cores, load average). Exit 1 when a check fails.
//   load_bench [--seconds 30] [--clients 64] [--workers 2] [--max-tokens 4]
//              [--model ../shared/models/stories260K-f32.gguf] [--out bench/results/load.md]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "bench/bench_report.h"
#include "client/lib/client.h"
#include "client/lib/grpc_connection.h"
#include "coordinator/coordinator_core.h"
#include "coordinator/coordinator_service.h"
#include "engine/model.h"
#include "grpc/grpc.h"
#include "nlohmann/json.hpp"
#include "worker/worker_rpc.h"

namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point since) { return std::chrono::duration<double, std::milli>(Clock::now() - since).count(); }

struct Args {
  double seconds = 30;
  int clients = 64;
  int workers = 2;
  int64_t max_tokens = 4;
  int poll_ms = 20;
  std::string model;
  std::string text;
  std::string out = "bench/results/load.md";
};

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr,
               "load_bench: %s\nusage: load_bench [--seconds S] [--clients N] [--workers W] [--max-tokens T]\n"
               "                  [--poll-ms MS] [--model GGUF] [--text TXT] [--out FILE]\n",
               why.c_str());
  std::exit(2);
}

Args Parse(int argc, char** argv) {
  Args a;
  const char* shared = std::getenv("MESA_SHARED_DIR");
  const std::string dir = shared ? shared : "../shared";
  a.model = dir + "/models/stories260K-f32.gguf";
  a.text = dir + "/text/tinystories_valid_part1.txt";
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) Usage("missing value for " + k);
    const std::string v = argv[++i];
    try {
      if (k == "--seconds") a.seconds = std::stod(v);
      else if (k == "--clients") a.clients = std::stoi(v);
      else if (k == "--workers") a.workers = std::stoi(v);
      else if (k == "--max-tokens") a.max_tokens = std::stoll(v);
      else if (k == "--poll-ms") a.poll_ms = std::stoi(v);
      else if (k == "--model") a.model = v;
      else if (k == "--text") a.text = v;
      else if (k == "--out") a.out = v;
      else Usage("unknown flag " + k);
    } catch (const std::exception&) {
      Usage("bad value '" + v + "' for " + k);
    }
  }
  if (a.seconds <= 0 || a.clients < 1 || a.workers < 1 || a.max_tokens < 1 || a.poll_ms < 1) {
    Usage("--seconds, --clients, --workers, --max-tokens and --poll-ms must be positive");
  }
  return a;
}

// Distinct short documents (the shared stories, or synthetic ones without them).
std::vector<std::string> Documents(const std::string& text_path, int n) {
  std::string src;
  std::ifstream f(text_path, std::ios::binary);
  if (f) {
    src.assign(200000, '\0');
    f.read(src.data(), static_cast<std::streamsize>(src.size()));
    src.resize(static_cast<size_t>(f.gcount()));
  }
  while (src.size() < 100000) src += "Once upon a time there was a dog named Sam. He liked to run and play in the park. ";
  std::vector<std::string> docs;
  for (int i = 0; i < n; ++i) {
    const size_t bytes = 200 + 90 * static_cast<size_t>(i % 8);
    size_t begin = (static_cast<size_t>(i) * 7919 + 13) % (src.size() - bytes - 100);
    begin = src.find(' ', begin) + 1;
    docs.push_back(absl::StrCat("[", i, "] ", src.substr(begin, bytes)));
  }
  return docs;
}

struct Percentiles {
  size_t n = 0;
  double p50 = 0, p90 = 0, p99 = 0, max = 0;
};
Percentiles Summarize(std::vector<double> v) {
  Percentiles p;
  p.n = v.size();
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))]; };
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  p.max = v.back();
  return p;
}

std::string LoadAverage() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

struct ClientStats {
  std::vector<double> create_ms, get_ms;
  int64_t jobs = 0, lines = 0, watched = 0;
  std::vector<std::string> errors;
  std::vector<std::string> job_ids;
  // document index -> result texts seen
  std::map<int, std::set<std::string>> texts;
};

}  // namespace

int main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
  if (!std::filesystem::exists(args.model)) {
    std::fprintf(stderr, "load_bench: model %s not found (set MESA_SHARED_DIR or --model)\n", args.model.c_str());
    return 77;
  }
  grpc_init();
  auto model = mesa::LoadModel(args.model);
  if (!model.ok()) {
    std::fprintf(stderr, "load_bench: %s\n", model.status().ToString().c_str());
    return 1;
  }
  const std::string store = (std::filesystem::temp_directory_path() /
                             absl::StrCat("mesa-load-bench-", getpid())).string();
  std::filesystem::remove_all(store);
  const std::string load_before = LoadAverage();

  mesa::coord::CoordinatorOptions co;
  co.store_dir = store;
  co.scheduler.heartbeat_timeout_ms = 10000;
  auto core = mesa::coord::CoordinatorCore::Create(**model, co);
  if (!core.ok()) {
    std::fprintf(stderr, "load_bench: %s\n", core.status().ToString().c_str());
    return 1;
  }
  mesa::coord::CoordinatorServerOptions so;
  so.listen = "127.0.0.1:0";
  auto server = mesa::coord::CoordinatorServer::Start(**core, so);
  if (!server.ok()) {
    std::fprintf(stderr, "load_bench: %s\n", server.status().ToString().c_str());
    return 1;
  }
  const std::string address = (*server)->address();
  std::vector<std::unique_ptr<mesa::worker::WorkerProcess>> workers;
  for (int i = 0; i < args.workers; ++i) {
    mesa::worker::WorkerProcessOptions wo;
    wo.coordinator = address;
    wo.name = absl::StrCat("w", i);
    wo.threads = 1;
    wo.verbose = false;
    auto w = mesa::worker::WorkerProcess::Start(**model, wo);
    if (!w.ok()) {
      std::fprintf(stderr, "load_bench: worker: %s\n", w.status().ToString().c_str());
      return 1;
    }
    workers.push_back(*std::move(w));
  }
  for (int i = 0; i < 200 && (*core)->stats().workers < args.workers; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if ((*core)->stats().workers < args.workers) {
    std::fprintf(stderr, "load_bench: the workers did not register\n");
    return 1;
  }
  std::printf("load_bench: coordinator %s, %d workers, %d clients, %.0f s, max_tokens %lld\n", address.c_str(),
              args.workers, args.clients, args.seconds, static_cast<long long>(args.max_tokens));
  std::fflush(stdout);

  const std::vector<std::string> docs = Documents(args.text, 16);
  std::vector<ClientStats> stats(args.clients);
  const auto start = Clock::now();
  const auto stop_at = start + std::chrono::milliseconds(static_cast<int64_t>(args.seconds * 1000));
  std::vector<std::thread> threads;
  for (int c = 0; c < args.clients; ++c) {
    threads.emplace_back([&, c] {
      ClientStats& s = stats[c];
      auto fail = [&](const std::string& what) { s.errors.push_back(absl::StrCat("client ", c, ": ", what)); };
      auto conn = mesa::client::MakeGrpcConnection(address);
      if (!conn.ok()) return fail(conn.status().ToString());
      mesa::client::ClientOptions copts;
      copts.call_timeout = absl::Seconds(30);
      copts.poll_interval = absl::Milliseconds(args.poll_ms);
      mesa::client::Client cl(*std::move(conn), copts);
      for (int64_t round = 0; Clock::now() < stop_at; ++round) {
        // 1-3 lines; the custom_id names the document.
        std::vector<std::string> lines;
        std::vector<std::pair<std::string, int>> inputs;
        const int n_lines = 1 + static_cast<int>((c + round) % 3);
        for (int d = 0; d < n_lines; ++d) {
          const int doc = static_cast<int>((c * 5 + round * 3 + d * 7) % docs.size());
          const std::string id = absl::StrCat("c", c, "-r", round, "-d", d, "-doc", doc);
          inputs.emplace_back(id, doc);
          lines.push_back(nlohmann::json{{"custom_id", id}, {"document", docs[doc]}}.dump());
        }
        mesa::client::JobOptions jo;
        jo.max_tokens = args.max_tokens;
        const auto t0 = Clock::now();
        auto job = cl.SubmitLines(lines, jo);
        s.create_ms.push_back(Ms(t0));
        if (!job.ok()) return fail(absl::StrCat("submit: ", job.status().ToString()));
        s.job_ids.push_back(job->id);
        ++s.jobs;
        s.lines += n_lines;
        if (c % 2 == 1) {
          auto w = cl.Wait(job->id, absl::Seconds(300));
          if (!w.ok() || w->timed_out) return fail(w.ok() ? "wait timed out" : w.status().ToString());
          ++s.watched;
        }
        std::string status;
        for (;;) {
          const auto g0 = Clock::now();
          auto j = cl.Get(job->id);
          s.get_ms.push_back(Ms(g0));
          if (!j.ok()) return fail(absl::StrCat("get: ", j.status().ToString()));
          if (mesa::client::IsTerminalStatus(j->status)) {
            status = j->status;
            if (j->request_counts.total != n_lines) {
              fail(absl::StrCat(job->id, ": total ", j->request_counts.total, ", submitted ", n_lines));
            }
            break;
          }
          if (Clock::now() > stop_at + std::chrono::seconds(300)) return fail("polling past the grace time");
          std::this_thread::sleep_for(std::chrono::milliseconds(args.poll_ms));
        }
        if (status != "completed") fail(absl::StrCat(job->id, " ended ", status));
        const std::string path = absl::StrCat(store, "-results-", c, ".jsonl");
        auto n = cl.Results(job->id, "mesa", path);
        if (!n.ok()) return fail(absl::StrCat("results: ", n.status().ToString()));
        // Exactly one record per submitted line, in input order.
        std::ifstream f(path);
        std::vector<nlohmann::json> recs;
        for (std::string line; std::getline(f, line);) {
          auto r = nlohmann::json::parse(line, nullptr, false);
          if (r.is_discarded()) fail(absl::StrCat(job->id, ": a result line is not JSON"));
          else recs.push_back(std::move(r));
        }
        std::filesystem::remove(path);
        if (recs.size() != inputs.size()) {
          fail(absl::StrCat(job->id, ": ", recs.size(), " records for ", inputs.size(), " lines"));
          continue;
        }
        for (size_t i = 0; i < inputs.size(); ++i) {
          const auto& r = recs[i];
          if (r.value("custom_id", std::string()) != inputs[i].first) {
            fail(absl::StrCat(job->id, ": record ", i, " is ", r.dump().substr(0, 80), ", expected ", inputs[i].first));
          } else if (r.value("status", std::string()) != "ok") {
            fail(absl::StrCat(job->id, ": ", inputs[i].first, " failed: ", r.value("error", std::string())));
          } else {
            s.texts[inputs[i].second].insert(r.value("text", std::string()));
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double wall_s = Ms(start) / 1000;
  const std::string load_after = LoadAverage();

  // Totals and the cross-client checks.
  std::vector<double> create_ms, get_ms;
  std::vector<std::string> errors;
  std::set<std::string> ids;
  std::map<int, std::set<std::string>> texts;
  int64_t jobs = 0, lines = 0;
  for (const ClientStats& s : stats) {
    create_ms.insert(create_ms.end(), s.create_ms.begin(), s.create_ms.end());
    get_ms.insert(get_ms.end(), s.get_ms.begin(), s.get_ms.end());
    errors.insert(errors.end(), s.errors.begin(), s.errors.end());
    for (const auto& id : s.job_ids) {
      if (!ids.insert(id).second) errors.push_back(absl::StrCat("job id ", id, " given to two submissions"));
    }
    for (const auto& [doc, t] : s.texts) texts[doc].insert(t.begin(), t.end());
    jobs += s.jobs;
    lines += s.lines;
  }
  int64_t text_mismatches = 0;
  for (const auto& [doc, t] : texts) {
    if (t.size() != 1) {
      ++text_mismatches;
      errors.push_back(absl::StrCat("document ", doc, " got ", t.size(), " different texts"));
    }
  }
  auto listed = (*core)->ListJobs(0);
  if (!listed.ok() || static_cast<int64_t>(listed->size()) != jobs) {
    errors.push_back(absl::StrCat("the coordinator lists ", listed.ok() ? listed->size() : 0, " jobs; ", jobs,
                                  " were submitted"));
  }
  const Percentiles c = Summarize(create_ms), g = Summarize(get_ms);
  std::printf("%lld jobs, %lld lines in %.1f s: %.2f jobs/s, %.2f lines/s\n", static_cast<long long>(jobs),
              static_cast<long long>(lines), wall_s, static_cast<double>(jobs) / wall_s,
              static_cast<double>(lines) / wall_s);
  std::printf("CreateJob over %zu calls: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n", c.n, c.p50, c.p90,
              c.p99, c.max);
  std::printf("GetJob over %zu calls: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n", g.n, g.p50, g.p90, g.p99,
              g.max);
  for (size_t i = 0; i < std::min<size_t>(errors.size(), 20); ++i) std::printf("ERROR: %s\n", errors[i].c_str());
  std::printf("%s: %zu errors\n", errors.empty() ? "PASS" : "FAIL", errors.size());

  if (!args.out.empty()) {
    const bool fresh = !std::filesystem::exists(args.out);
    std::ofstream f(args.out, std::ios::app);
    if (fresh) {
      f << "# Coordinator load test (`bench/load_bench`)\n\n"
           "One coordinator (CoordinatorServer over CoordinatorCore, SQLite store) and in-process gRPC\n"
           "workers on loopback with stories260K; N client threads (mesa::client, one connection\n"
           "each) submit 1-3-line jobs of short documents for the given time, follow each to its end\n"
           "(half watch it, half poll GetJob every 20 ms) and read its results. Checked each round:\n"
           "no RPC errors, every job completed, exactly one result per submitted line (no loss, no\n"
           "duplicate), the same text for every record of one document, and the coordinator lists\n"
           "exactly the jobs submitted. Latencies in ms, over every call of the round. One row per\n"
           "run (`load_bench --seconds 30`); the machine is shared, so rows vary.\n\n"
           "| date (UTC) | machine (CPU, cores, load avg before -> after) | clients | workers | s | jobs | lines "
           "| lines/s | CreateJob p50/p90/p99/max | GetJob p50/p90/p99/max | GetJob calls | errors |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    }
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M", std::gmtime(&now));
    char row[1024];
    std::snprintf(row, sizeof row,
                  "| %s | %s, %u cores, %s -> %s | %d | %d | %.0f | %lld | %lld | %.2f | %.1f / %.1f / %.1f / %.1f "
                  "| %.2f / %.2f / %.2f / %.1f | %zu | %zu |\n",
                  date, mesa::bench::CpuModel().c_str(), std::thread::hardware_concurrency(), load_before.c_str(),
                  load_after.c_str(), args.clients, args.workers, wall_s, static_cast<long long>(jobs),
                  static_cast<long long>(lines), static_cast<double>(lines) / wall_s, c.p50, c.p90, c.p99, c.max,
                  g.p50, g.p90, g.p99, g.max, g.n, errors.size());
    f << row;
    std::printf("appended a row to %s\n", args.out.c_str());
  }

  workers.clear();
  (*server)->Shutdown();
  server->reset();
  core->reset();
  std::filesystem::remove_all(store);
  return errors.empty() ? 0 : 1;
}
