// kv_gather_bench: a spread final's gather on loopback, the way WorkerCore::RunFinal
// takes its chunks: the anchor computed on the final's thread, then each of --chunks
// middle chunks, in plan order, copied into the final cache (as MesaPhases::AddMiddle
// lays it) and let go. The chunks lie round-robin on --holders holder servers, each the
// worker's own FetchKv and PeerKv handlers (KvStreamingWorkerService + ServePeerKv over
// socket links). Two ways of taking them, the legs rotating per round, medians shown:
//   one at a time: fetches start after the anchor, each once the previous chunk is laid
//                  (WorkerCore before worker/kv_prefetch.h; --kv-prefetch 0 is close to
//                  it but starts the first fetch during the anchor);
//   prefetch:      a KvPrefetcher started before the anchor (--window-mib, --parallel:
//                  `mesa worker`'s defaults),
// each over gRPC FetchKv (pooled receive memory, as `mesa worker`) and over socket links
// (`--kv-transport socket`; links made in the warm-up round and reused). The anchor is a
// fixed amount of work on one thread, calibrated to --anchor-ms when the machine is
// otherwise idle, so fetches competing with it for the CPUs slow it (as they would slow
// a real anchor). Every laid chunk is compared with the source after each round.
//
// Usage: kv_gather_bench [--chunks 12] [--holders 3] [--chunk-mib 16] [--anchor-ms 300]
//                        [--rounds 5] [--window-mib 1024] [--parallel 4] [--max-batch 1]
// --max-batch N: the socket link's receiver moves up to N chunks of one holder as one
// gather (PeerKvFetcherOptions::max_batch; `mesa worker` uses 1 over sockets, 8 over NCCL).
#include <malloc.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_report.h"
#include "worker/grpc_kv.h"
#include "worker/kv_pool.h"
#include "worker/kv_prefetch.h"
#include "worker/kv_testing.h"
#include "worker/kv_wire.h"
#include "worker/peer_kv.h"
#include "worker/socket_peer.h"

namespace mesa::worker {
namespace {

using bench::Clock;
using bench::Median;
using bench::Seconds;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "kv_gather_bench: %s\n", what.c_str());
  std::exit(1);
}

// A holder: the worker's FetchKv handler and its PeerKv handler over socket links,
// serving one chunk for any key (as if it held every chunk it is asked for).
class Holder final : public KvStreamingWorkerService {
 public:
  explicit Holder(std::shared_ptr<const ChunkKv> kv)
      : KvStreamingWorkerService([kv, crc = KvCrc32c(*kv)](const KvKey&) { return Held{kv, crc}; }),
        links_(std::make_shared<SocketPeerTransport>()) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) Die("a holder's gRPC server did not start");
  }
  ~Holder() override {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_->Wait();
  }
  grpc::Status PeerKv(grpc::ServerContext* ctx,
                      grpc::ServerReaderWriter<v1::PeerKvMessage, v1::PeerKvMessage>* stream) override {
    return ServePeerKv(ctx, stream, &links_, lookup());
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  SharedTransportEndpoints links_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// Busy work on this thread: `units` rounds of a dependent floating-point chain.
volatile double anchor_sink;
void Anchor(int64_t units) {
  double x = 1.0;
  for (int64_t i = 0; i < units; ++i) {
    for (int j = 0; j < 1000; ++j) x = x * 1.0000001 + 1e-9;
  }
  anchor_sink = x;
}
// Units of Anchor that take `ms` on an idle machine.
int64_t CalibrateAnchor(double ms) {
  int64_t units = 1000;
  for (;;) {
    const auto t0 = Clock::now();
    Anchor(units);
    const double s = Seconds(t0);
    if (s > 0.05) return std::max<int64_t>(1, static_cast<int64_t>(units * (ms / 1e3) / s));
    units *= 4;
  }
}

struct Args {
  int chunks = 12, holders = 3, rounds = 5, parallel = 4, max_batch = 1;
  int64_t chunk_mib = 16, window_mib = 1024;
  double anchor_ms = 300;
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* v = argv[i + 1];
    if (flag == "--chunks") a.chunks = std::atoi(v);
    else if (flag == "--holders") a.holders = std::atoi(v);
    else if (flag == "--rounds") a.rounds = std::atoi(v);
    else if (flag == "--parallel") a.parallel = std::atoi(v);
    else if (flag == "--max-batch") a.max_batch = std::atoi(v);
    else if (flag == "--chunk-mib") a.chunk_mib = std::atoll(v);
    else if (flag == "--window-mib") a.window_mib = std::atoll(v);
    else if (flag == "--anchor-ms") a.anchor_ms = std::atof(v);
    else a.chunks = 0;
  }
  if (argc % 2 == 0 || a.chunks < 1 || a.holders < 1 || a.rounds < 1 || a.chunk_mib < 1 || a.parallel < 1 ||
      a.max_batch < 1 || a.max_batch > 64 || a.window_mib < 0 || a.anchor_ms < 0) {
    std::fprintf(stderr, "usage: kv_gather_bench [--chunks 12] [--holders 3] [--chunk-mib 16] [--anchor-ms 300] "
                         "[--rounds 5] [--window-mib 1024] [--parallel 4] [--max-batch 1]\n");
    std::exit(2);
  }
  return a;
}

int Main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // as `mesa` does (client/cli/main.cc)
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  // 32 layers x 8 kv heads x 128 dims: 256 KiB per token for K and V together.
  const int64_t tokens = (args.chunk_mib << 20) / (2 * 32 * 8 * 128 * 4);
  auto source = std::make_shared<const ChunkKv>(RandomChunkKv(32, 8, tokens, 128, 0, 1));
  const size_t chunk_bytes = source->bytes(), half = chunk_bytes / 2;
  std::vector<std::unique_ptr<Holder>> holders;
  for (int h = 0; h < args.holders; ++h) holders.push_back(std::make_unique<Holder>(source));
  std::vector<PrefetchRequest> plan;
  for (int c = 0; c < args.chunks; ++c) {
    plan.push_back({holders[c % args.holders]->address(), KvKey{"bench", 0, c, 0}, static_cast<int64_t>(chunk_bytes)});
  }
  // The receivers, as `mesa worker` has them: a pooled gRPC fetcher, a pooled link fetcher.
  GrpcKvFetcherOptions grpc_options;
  grpc_options.kv_pool = std::make_shared<KvBufferPool>(int64_t{4} << 30);
  GrpcKvFetcher grpc_fetcher(grpc_options);
  PeerKvFetcherOptions peer_options;
  peer_options.endpoints = std::make_shared<SharedTransportEndpoints>(std::make_shared<SocketPeerTransport>());
  peer_options.kv_pool = std::make_shared<KvBufferPool>(int64_t{4} << 30);
  peer_options.max_batch = args.max_batch;
  PeerKvFetcher peer_fetcher(peer_options);
  std::vector<uint8_t> cache(chunk_bytes * args.chunks, 0);
  const int64_t anchor_units = CalibrateAnchor(args.anchor_ms);

  // One gather: seconds from the anchor's start to the last chunk laid.
  auto gather = [&](KvFetcher& fetcher, bool prefetch) {
    std::memset(cache.data(), 0, cache.size());
    const auto t0 = Clock::now();
    std::optional<KvPrefetcher> ahead;
    const PrefetchOptions ahead_options{args.parallel, args.window_mib << 20, 120000};
    if (prefetch) ahead.emplace(fetcher, plan, ahead_options);
    Anchor(anchor_units);
    if (!prefetch) ahead.emplace(fetcher, plan, PrefetchOptions{1, 0, 120000});  // strictly one at a time
    for (int c = 0; c < args.chunks; ++c) {
      Prefetched got = ahead->Next();
      if (!got.kv.ok()) Die(std::string(got.kv.status().message()));
      const ChunkKv& kv = **got.kv;
      std::memcpy(cache.data() + c * chunk_bytes, kv.k.data(), half);
      std::memcpy(cache.data() + c * chunk_bytes + half, kv.v.data(), half);
    }
    const double s = Seconds(t0);
    for (int c = 0; c < args.chunks; ++c) {
      if (std::memcmp(cache.data() + c * chunk_bytes, source->k.data(), half) != 0 ||
          std::memcmp(cache.data() + c * chunk_bytes + half, source->v.data(), half) != 0) {
        Die("chunk " + std::to_string(c) + " laid into the cache differs from the source");
      }
    }
    return s;
  };

  struct Leg {
    const char* name;
    KvFetcher* fetcher;
    bool prefetch;
  };
  const Leg legs[] = {{"gRPC one at a time", &grpc_fetcher, false},
                      {"gRPC prefetch", &grpc_fetcher, true},
                      {"socket one at a time", &peer_fetcher, false},
                      {"socket prefetch", &peer_fetcher, true}};
  constexpr int kLegs = 4;
  std::vector<double> secs[kLegs], anchor_alone;
  for (int round = -1; round < args.rounds; ++round) {  // round -1: warm-up (links made, pools filled)
    const auto a0 = Clock::now();
    Anchor(anchor_units);
    if (round >= 0) anchor_alone.push_back(Seconds(a0));
    for (int i = 0; i < kLegs; ++i) {
      const int leg = (i + round + kLegs) % kLegs;
      const double s = gather(*legs[leg].fetcher, legs[leg].prefetch);
      if (round >= 0) secs[leg].push_back(s);
      std::fprintf(stderr, "round %d: %s %.3f s\n", round, legs[leg].name, s);
    }
  }

  const double mib = static_cast<double>(chunk_bytes) * args.chunks / (1 << 20);
  std::printf("- CPU: %s (%u logical CPUs); ISA: %s\n", bench::CpuModel().c_str(), std::thread::hardware_concurrency(),
              bench::CopyIsa().c_str());
  std::printf("- %d chunks of %.0f MiB (%.0f MiB in all) round-robin on %d holder servers on 127.0.0.1; the final's "
              "anchor: %.0f ms of one-thread work when alone (measured alone each round: median %.0f ms); prefetch: "
              "%d fetches at once at most, a %lld MiB window, up to %d chunks of a holder per link gather; "
              "%d rounds, legs rotating, median shown\n",
              args.chunks, static_cast<double>(chunk_bytes) / (1 << 20), mib, args.holders, args.anchor_ms,
              1e3 * Median(anchor_alone), args.parallel, static_cast<long long>(args.window_mib), args.max_batch,
              args.rounds);
  std::printf("\n| transport | one at a time s | prefetch s | prefetch / one at a time | gather beyond the anchor: "
              "one at a time s | prefetch s | one at a time MiB per gather s | prefetch MiB per gather s |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|\n");
  const double anchor = Median(anchor_alone);
  for (int t = 0; t < 2; ++t) {
    const double one = Median(secs[2 * t]), pre = Median(secs[2 * t + 1]);
    std::printf("| %s | %.3f | %.3f | **%.2f** | %.3f | %.3f | %.0f | %.0f |\n",
                t == 0 ? "gRPC FetchKv" : "socket link", one, pre, pre / one, one - anchor, pre - anchor, mib / one,
                mib / pre);
  }
  std::printf("\nEvery round's seconds (one at a time / prefetch):\n\n");
  for (int t = 0; t < 2; ++t) {
    std::printf("- %s:", t == 0 ? "gRPC" : "socket");
    for (int r = 0; r < args.rounds; ++r) std::printf(" %.3f/%.3f", secs[2 * t][r], secs[2 * t + 1][r]);
    std::printf("\n");
  }
  return 0;
}

}  // namespace
}  // namespace mesa::worker

int main(int argc, char** argv) { return mesa::worker::Main(argc, argv); }
