// Scale simulation: the real coordinator Scheduler (coordinator/scheduler.h) driven on a
// fake clock by simulated workers, to see how whole / spread / auto placement scale with
// the number of workers. Document plans come from the real planner (engine/mesa_plan.h
// PlanMesa at the profile's train length), so chunk counts and sizes are real; worker
// speeds come from measured rates given as flags (bench/scale_sim.sh measures them with
// `mesa bench` and runs two profiles). No faults: every worker runs one task at a time.
//
// Task durations (seconds):
//   chunk:        overhead + (anchor + chunk tokens) / chunk_tok_s
//   whole final:  overhead + prompt / final_tok_s + decode(prompt)
//   spread final: overhead + K/V bytes held by other workers / bandwidth
//                 + (anchor + last chunk tokens) / final_tok_s + decode(prompt)
//   decode(n):    gen / decode_tok_s + gen * (n + gen / 2) * decode_key_s (each decoded
//                 token reads every key before it)
// The scheduler gets each success's TaskStats (as coordinator_core reports real ones), so
// auto's cost model starts from its priors and learns the profile's rates as it runs.
//
// Output: tab-separated rows on stdout, '#' lines first with the inputs:
//   profile scenario placement workers docs chunks_per_doc makespan_s speedup
//   spread_docs kv_moved_gb
// speedup = makespan of whole on 1 worker / makespan (same profile and scenario).
//
// Usage: scale_sim [--name N] [--train-length T] [--kv-bytes-per-token B]
//   [--chunk-tok-s R] [--final-tok-s R] [--decode-tok-s R] [--decode-key-us U]
//   [--bw-gbps G] [--overhead-ms M] [--gen-tokens G] [--kv-budget-gib B]
//   [--short-docs N] [--short-tokens L] [--long-tokens L] [--few-docs N] [--few-tokens L]
//   [--workers "1 2 4 ..."]
// Scenarios: many-short (N short documents), one-long (one long document), few-long (a
// few long documents: fewer than the workers at the larger counts, so auto must mix).
// Defaults: stories260K on one thread of this machine (see bench/results/scale_sim.md).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/scheduler.h"
#include "engine/mesa_plan.h"

namespace {

using mesa::coord::Action;
using mesa::coord::Dispatch;
using mesa::coord::ItemFailed;
using mesa::coord::ItemSpec;
using mesa::coord::Placement;
using mesa::coord::Scheduler;
using mesa::coord::SchedulerOptions;
using mesa::coord::TaskKind;
using mesa::coord::TaskStats;

struct Profile {
  std::string name = "stories260K";
  int64_t train_length = 512;
  double kv_bytes_per_token = 1280;  // 2 (k, v) * 5 layers * 4 kv heads * head dim 8 * 4 bytes
  double chunk_tok_s = 9700;         // one chunk task (anchor + chunk, 448 tokens), one thread
  double final_tok_s = 7600;         // a 4096-token prompt prefilled whole under mesa, one thread
  double decode_tok_s = 5000;        // decoding at depth 0
  double decode_key_s = 0.40e-6;     // per decoded token per key before it
  double bw_bytes_s = 0.6e9;         // gRPC FetchKv on loopback (bench/results/kv_transfer.md)
  double overhead_s = 0.005;         // per task: dispatch, RPC, setup (assumed)
  int64_t gen_tokens = 128;
  int64_t kv_budget_bytes = 0;       // per worker; 0 = no limit
  int64_t short_docs = 256, short_tokens = 4096, long_tokens = 131072;
  int64_t few_docs = 8, few_tokens = 32768;
  std::vector<int> workers = {1, 2, 4, 8, 16, 32, 64};
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "scale_sim: %s\n", what.c_str());
  std::exit(2);
}

Profile ParseFlags(int argc, char** argv) {
  Profile p;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::printf("see the comment at the top of bench/scale_sim.cc\n");
      std::exit(0);
    }
    if (i + 1 >= argc) Die("flag " + flag + " needs a value");
    const std::string v = argv[++i];
    auto num = [&] {
      char* end = nullptr;
      const double x = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end != '\0') Die("bad number for " + flag + ": " + v);
      return x;
    };
    if (flag == "--name") p.name = v;
    else if (flag == "--train-length") p.train_length = static_cast<int64_t>(num());
    else if (flag == "--kv-bytes-per-token") p.kv_bytes_per_token = num();
    else if (flag == "--chunk-tok-s") p.chunk_tok_s = num();
    else if (flag == "--final-tok-s") p.final_tok_s = num();
    else if (flag == "--decode-tok-s") p.decode_tok_s = num();
    else if (flag == "--decode-key-us") p.decode_key_s = num() * 1e-6;
    else if (flag == "--bw-gbps") p.bw_bytes_s = num() * 1e9;
    else if (flag == "--overhead-ms") p.overhead_s = num() / 1000;
    else if (flag == "--gen-tokens") p.gen_tokens = static_cast<int64_t>(num());
    else if (flag == "--kv-budget-gib") p.kv_budget_bytes = static_cast<int64_t>(num() * (1LL << 30));
    else if (flag == "--short-docs") p.short_docs = static_cast<int64_t>(num());
    else if (flag == "--short-tokens") p.short_tokens = static_cast<int64_t>(num());
    else if (flag == "--long-tokens") p.long_tokens = static_cast<int64_t>(num());
    else if (flag == "--few-docs") p.few_docs = static_cast<int64_t>(num());
    else if (flag == "--few-tokens") p.few_tokens = static_cast<int64_t>(num());
    else if (flag == "--workers") {
      p.workers.clear();
      std::istringstream in(v);
      for (int w; in >> w;) p.workers.push_back(w);
    } else {
      Die("unknown flag " + flag);
    }
  }
  if (p.chunk_tok_s <= 0 || p.final_tok_s <= 0 || p.decode_tok_s <= 0 || p.bw_bytes_s <= 0) {
    Die("rates must be positive");
  }
  return p;
}

// One document's item, planned by the real planner as coordinator_core plans it.
ItemSpec PlanDoc(const Profile& p, int64_t index, int64_t tokens) {
  mesa::MesaOptions mo;
  mo.train_length = p.train_length;
  auto plan = mesa::PlanMesa(tokens, p.gen_tokens, p.train_length, mo);
  if (!plan.ok()) Die(std::string(plan.status().message()));
  ItemSpec spec;
  spec.job_id = "docs";
  spec.item = index;
  spec.prompt_tokens = tokens;
  spec.max_new_tokens = p.gen_tokens;
  if (plan->chunked) {
    spec.n_middle = static_cast<int32_t>(plan->middle.size());
    for (const mesa::TokenRange& r : plan->middle) {
      spec.chunk_kv_bytes.push_back(std::llround(p.kv_bytes_per_token * static_cast<double>(r.size())));
      spec.chunk_tokens.push_back(plan->anchor.size() + r.size());
    }
    spec.final_tokens = plan->anchor.size() + plan->last.size();
  }
  return spec;
}

struct Result {
  double makespan_s = 0;
  int64_t spread_docs = 0;
  double kv_moved_bytes = 0;
};

double DecodeSeconds(const Profile& p, int64_t depth) {
  const double g = static_cast<double>(p.gen_tokens);
  return g / p.decode_tok_s + g * (static_cast<double>(depth) + g / 2) * p.decode_key_s;
}

Result Simulate(const Profile& p, const std::vector<ItemSpec>& items, Placement placement, int n_workers) {
  SchedulerOptions o;
  o.placement = placement;
  o.deadline_base_ms = 1'000'000'000'000LL;  // no deadlines, no heartbeats: no faults here
  o.deadline_ms_per_token = 0;
  o.heartbeat_timeout_ms = 1'000'000'000'000LL;
  Scheduler s(o, 0);
  std::map<int64_t, const ItemSpec*> by_index;
  for (const ItemSpec& it : items) by_index[it.item] = &it;
  struct Running {
    uint64_t task;
    TaskStats stats;
  };
  // Completions by (time, sequence): deterministic order for equal times.
  std::map<std::pair<double, uint64_t>, Running> events;
  uint64_t seq = 0;
  double now = 0;
  Result r;
  std::vector<int64_t> started_spread(items.size(), 0);
  std::function<void()> apply = [&] {
    std::vector<mesa::coord::MoveKv> moves;
    for (const Action& a : s.TakeActions()) {
      if (const auto* f = std::get_if<ItemFailed>(&a)) Die("item failed: " + f->error);
      if (const auto* m = std::get_if<mesa::coord::MoveKv>(&a)) moves.push_back(*m);
      const auto* d = std::get_if<Dispatch>(&a);
      if (d == nullptr) continue;  // releases and cancels: nothing to simulate
      const ItemSpec& spec = *by_index.at(d->item);
      TaskStats st;
      double seconds = p.overhead_s;
      if (d->kind == TaskKind::kChunk) {
        st.tokens = spec.chunk_tokens[d->chunk];
        st.compute_s = static_cast<double>(st.tokens) / p.chunk_tok_s;
        seconds += st.compute_s;
      } else {
        double prefill = 0;
        if (d->whole) {
          prefill = static_cast<double>(spec.prompt_tokens) / p.final_tok_s;
        } else {
          started_spread[d->item] = 1;
          for (const auto& src : d->sources) {
            if (src.worker != d->worker) st.kv_bytes_received += spec.chunk_kv_bytes[src.chunk];
          }
          st.kv_transfer_s = static_cast<double>(st.kv_bytes_received) / p.bw_bytes_s;
          prefill = st.kv_transfer_s + static_cast<double>(spec.final_tokens) / p.final_tok_s;
          r.kv_moved_bytes += static_cast<double>(st.kv_bytes_received);
        }
        st.compute_s = prefill;
        st.generated = p.gen_tokens;
        st.decode_s = DecodeSeconds(p, spec.prompt_tokens);
        seconds += prefill + st.decode_s;
      }
      events.emplace(std::make_pair(now + seconds, seq++), Running{d->task, st});
    }
    // K/V prefetch (MoveKv) is not modelled here: each move fails at once, so finals
    // fetch every chunk not on their worker, as the transfer model above assumes.
    for (const auto& m : moves) s.KvMoveFailed(m.job_id, m.item, m.chunk, m.attempt, absl::UnavailableError("not modelled"),
                                           static_cast<int64_t>(std::llround(now * 1000)));
    if (!moves.empty()) apply();
  };
  auto ms = [](double t) { return static_cast<int64_t>(std::llround(t * 1000)); };
  char id[16];
  for (int w = 0; w < n_workers; ++w) {
    std::snprintf(id, sizeof id, "w%03d", w);
    s.WorkerJoined(id, mesa::coord::WorkerCaps{p.kv_budget_bytes}, 0);
  }
  s.AddJob("docs", items, 0);
  apply();
  int64_t done = 0;
  while (!events.empty()) {
    auto it = events.begin();
    now = it->first.first;
    const Running run = it->second;
    events.erase(it);
    if (s.TaskSucceeded(run.task, ms(now), run.stats)) ++done;
    apply();
  }
  if (done != static_cast<int64_t>(items.size())) {
    Die("simulation ended with " + std::to_string(items.size() - done) + " documents open");
  }
  r.makespan_s = now;
  for (int64_t x : started_spread) r.spread_docs += x;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const Profile p = ParseFlags(argc, argv);
  std::printf("# profile\t%s\n", p.name.c_str());
  std::printf("# train_length\t%lld\n", static_cast<long long>(p.train_length));
  std::printf("# kv_bytes_per_token\t%.0f\n", p.kv_bytes_per_token);
  std::printf("# chunk_tok_s\t%.4g\n# final_tok_s\t%.4g\n# decode_tok_s\t%.4g\n# decode_key_us\t%.4g\n",
              p.chunk_tok_s, p.final_tok_s, p.decode_tok_s, p.decode_key_s * 1e6);
  std::printf("# bw_gbps\t%.3g\n# overhead_ms\t%.3g\n# gen_tokens\t%lld\n# kv_budget_gib\t%.3g\n",
              p.bw_bytes_s / 1e9, p.overhead_s * 1000, static_cast<long long>(p.gen_tokens),
              static_cast<double>(p.kv_budget_bytes) / (1LL << 30));
  struct Scenario {
    std::string name;
    int64_t docs, tokens;
  };
  const std::vector<Scenario> scenarios = {
      {"many-short", p.short_docs, p.short_tokens},
      {"one-long", 1, p.long_tokens},
      {"few-long", p.few_docs, p.few_tokens},
  };
  std::printf("profile\tscenario\tplacement\tworkers\tdocs\tdoc_tokens\tchunks_per_doc\tmakespan_s\tspeedup\t"
              "spread_docs\tkv_moved_gb\n");
  for (const Scenario& sc : scenarios) {
    std::vector<ItemSpec> items;
    for (int64_t i = 0; i < sc.docs; ++i) items.push_back(PlanDoc(p, i, sc.tokens));
    const double base = Simulate(p, items, Placement::kWhole, 1).makespan_s;
    for (Placement pl : {Placement::kWhole, Placement::kSpread, Placement::kAuto}) {
      for (int w : p.workers) {
        const Result r = Simulate(p, items, pl, w);
        std::printf("%s\t%s\t%s\t%d\t%lld\t%lld\t%d\t%.4f\t%.3f\t%lld\t%.4f\n", p.name.c_str(), sc.name.c_str(),
                    mesa::coord::PlacementName(pl), w, static_cast<long long>(sc.docs),
                    static_cast<long long>(sc.tokens), items[0].n_middle, r.makespan_s, base / r.makespan_s,
                    static_cast<long long>(r.spread_docs), r.kv_moved_bytes / 1e9);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
