// kv_transfer_bench: how fast one chunk's K/V moves over a FetchKv gRPC stream on
// loopback (KvStreamingWorkerService/ServeKvStream -> GrpcKvFetcher: manifest with CRC32C,
// ~1 MiB pieces, reassembly and CRC check into a ChunkKv), against a plain TCP socket
// copy of the same bytes on loopback (a writer and a reader thread, into a buffer
// allocated once and touched beforehand: the bar gRPC is held to) in the same run.
// Two fetchers: one with a KvBufferPool as `mesa worker` has (each received chunk is
// checked and then let go, so its memory goes back to the pool as when a final has
// consumed it: the steady state of a worker, the headline), and one without (fresh memory
// per fetch: a worker's first fetch of a size, the cold case). Rounds rotate the order of
// the three legs; each cell is the median. Prints a markdown report (CPU model, ISA,
// table) on stdout. Run through bench/kv_transfer.sh.
//
// The server side is the product's: KvStreamingWorkerService (what `mesa worker` serves) over
// a chunk whose CRC32C was computed when it was stored (as WorkerCore does), and the
// process sets the allocator options `mesa` sets in main (client/cli/main.cc). The
// --proto-sender / --crc-per-fetch / --default-malloc switches undo one each, to measure
// what each is worth; --tcp-fresh-sink has the TCP copy receive into fresh memory (as
// every fetch must: the cache it returns is new), to measure that cost on its own.
//
// Usage: kv_transfer_bench [--sizes-mib 16,64,256] [--rounds 7] [--piece-kib 1024] [--lanes N]
//                          [--arg grpc.channel.arg=INT]...  (to server and client)
//                          [--proto-sender] [--crc-per-fetch] [--default-malloc]
//                          [--tcp-fresh-sink]
#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "bench/bench_report.h"
#include "worker/grpc_kv.h"
#include "worker/kv_pool.h"
#include "worker/kv_testing.h"
#include "worker/peer_kv.h"
#include "worker/socket_peer.h"

namespace mesa::worker {
namespace {

using bench::Clock;
using bench::CpuModel;
using bench::CpuSeconds;
using bench::Median;
using bench::Seconds;

volatile uint32_t crc_sink;  // keeps the timed CRC from being optimised away

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "kv_transfer_bench: %s (%s)\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

// A connected loopback TCP pair: `writer` sends, a reader thread receives.
struct TcpPair {
  int writer = -1, reader = -1;
  TcpPair() {
    const int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) Die("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Die("bind");
    if (listen(listener, 1) != 0) Die("listen");
    if (getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) Die("getsockname");
    writer = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(writer, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Die("connect");
    reader = accept(listener, nullptr, nullptr);
    if (reader < 0) Die("accept");
    close(listener);
    const int one = 1;
    setsockopt(writer, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  ~TcpPair() {
    close(writer);
    close(reader);
  }
};

void SendAll(int fd, const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = send(fd, p, size, 0);
    if (n <= 0) Die("send");
    p += n, size -= static_cast<size_t>(n);
  }
}

// Seconds to move k then v from one end of `pair` to `sink` (k.size + v.size bytes).
// `fresh_sink` (a diagnostic, not the baseline): into memory allocated in the timed
// region instead, in huge pages as KvAssembler allocates a received cache, to show what
// a fresh buffer costs by itself; copied to `sink` afterwards for the check.
double TcpCopy(TcpPair& pair, const ChunkKv& kv, std::vector<uint8_t>& sink, bool fresh_sink) {
  const auto start = Clock::now();
  std::unique_ptr<uint8_t[]> fresh;
  std::thread reader([&] {
    uint8_t* into = sink.data();
    if (fresh_sink) {
      fresh.reset(new uint8_t[sink.size()]);  // not touched: pages come as recv fills them
      const auto page = reinterpret_cast<uintptr_t>(fresh.get() + 4095) & ~uintptr_t{4095};
      madvise(reinterpret_cast<void*>(page), (sink.size() - 4096) & ~size_t{4095}, MADV_HUGEPAGE);
      into = fresh.get();
    }
    size_t got = 0;
    while (got < sink.size()) {
      const ssize_t n = recv(pair.reader, into + got, sink.size() - got, 0);
      if (n <= 0) Die("recv");
      got += static_cast<size_t>(n);
    }
  });
  SendAll(pair.writer, kv.k.data(), kv.k.size() * sizeof(float));
  SendAll(pair.writer, kv.v.data(), kv.v.size() * sizeof(float));
  reader.join();
  const double s = Seconds(start);
  if (fresh_sink) std::memcpy(sink.data(), fresh.get(), sink.size());
  return s;
}

// The chunk being served, as a WorkerCore holds it: with its CRC32C unless the bench
// measures computing it per fetch.
struct BenchChunk {
  std::shared_ptr<const ChunkKv> kv;
  std::optional<uint32_t> crc32c;
};

// PeerKv over socket links (as `mesa worker --kv-transport socket` serves it), beside
// whichever FetchKv sender the service has.
template <typename Base>
class WithPeerKv : public Base {
 public:
  template <typename... A>
  WithPeerKv(const BenchChunk* chunk, PeerEndpoints* transport, A&&... base_args)
      : Base(std::forward<A>(base_args)...), chunk_(chunk), transport_(transport) {}
  grpc::Status PeerKv(grpc::ServerContext* ctx,
                      grpc::ServerReaderWriter<mesa::v1::PeerKvMessage, mesa::v1::PeerKvMessage>* stream) override {
    const BenchChunk* chunk = chunk_;
    return ServePeerKv(ctx, stream, transport_, [chunk](const KvKey&) {
      return absl::StatusOr<KvStreamingWorkerService::Held>(KvStreamingWorkerService::Held{chunk->kv, chunk->crc32c});
    });
  }

 private:
  const BenchChunk* chunk_;
  PeerEndpoints* transport_;
};

// --proto-sender: a generated-API handler (each piece copied into a KvMessage).
class ProtoSender : public mesa::v1::WorkerService::Service {
 public:
  ProtoSender(const BenchChunk* chunk, int64_t piece_bytes) : chunk_(chunk), piece_bytes_(piece_bytes) {}
  grpc::Status FetchKv(grpc::ServerContext* ctx, const mesa::v1::FetchKvRequest* request,
                       grpc::ServerWriter<mesa::v1::KvMessage>* writer) override {
    return ServeKvStream(*chunk_->kv, ctx, writer, piece_bytes_, chunk_->crc32c, LaneAsk(*request));
  }

 private:
  const BenchChunk* chunk_;
  const int64_t piece_bytes_;
};

struct Args {
  std::vector<int64_t> sizes_mib = {16, 64, 256};
  int rounds = 7;
  int64_t piece_kib = 1024;
  int lanes = GrpcKvFetcherOptions{}.lanes;
  std::vector<std::pair<std::string, int>> channel_args;
  bool proto_sender = false, crc_per_fetch = false, default_malloc = false, tcp_fresh_sink = false;
};

Args Parse(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i], value = i + 1 < argc ? argv[i + 1] : "";
    if (flag == "--proto-sender" || flag == "--crc-per-fetch" || flag == "--default-malloc" ||
        flag == "--tcp-fresh-sink") {
      (flag == "--proto-sender"    ? args.proto_sender
       : flag == "--crc-per-fetch" ? args.crc_per_fetch
       : flag == "--default-malloc" ? args.default_malloc
                                    : args.tcp_fresh_sink) = true;
      --i;  // no value
    } else if (i + 1 >= argc) {
      args.sizes_mib.clear();  // a flag without its value: usage below
      break;
    } else if (flag == "--sizes-mib") {
      args.sizes_mib.clear();
      for (auto s : absl::StrSplit(value, ',')) args.sizes_mib.push_back(std::stoll(std::string(s)));
    } else if (flag == "--rounds") {
      args.rounds = std::stoi(value);
    } else if (flag == "--piece-kib") {
      args.piece_kib = std::stoll(value);
    } else if (flag == "--lanes") {
      args.lanes = std::stoi(value);
    } else if (flag == "--arg" && value.find('=') != std::string::npos) {
      const size_t eq = value.find('=');
      args.channel_args.emplace_back(value.substr(0, eq), std::stoi(value.substr(eq + 1)));
    } else {
      args.sizes_mib.clear();
      break;
    }
  }
  if (args.sizes_mib.empty()) {
    std::fprintf(stderr, "usage: kv_transfer_bench [--sizes-mib 16,64,256] [--rounds 7] "
                         "[--piece-kib 1024] [--lanes N] [--arg grpc.channel.arg=INT]... [--proto-sender] "
                         "[--crc-per-fetch] [--default-malloc] [--tcp-fresh-sink]\n");
    std::exit(2);
  }
  return args;
}

int Main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
#if defined(__GLIBC__)
  if (!args.default_malloc) {  // as `mesa` does (client/cli/main.cc)
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
#endif
  BenchChunk chunk;
  SharedTransportEndpoints holder_links(std::make_shared<SocketPeerTransport>());
  WithPeerKv<ProtoSender> proto_service(&chunk, &holder_links, &chunk, args.piece_kib << 10);
  // The worker's service: FetchKv raw, and PeerKv over socket links.
  WithPeerKv<KvStreamingWorkerService> raw_service(
      &chunk, &holder_links,
      [&chunk](const KvKey&) { return KvStreamingWorkerService::Held{chunk.kv, chunk.crc32c}; },
      args.piece_kib << 10);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  if (args.proto_sender) {
    builder.RegisterService(&proto_service);
  } else {
    builder.RegisterService(&raw_service);
  }
  GrpcKvFetcherOptions options;
  options.lanes = args.lanes;
  std::string arg_list;
  for (const auto& [name, value] : args.channel_args) {
    builder.AddChannelArgument(name, value);
    options.channel_args.SetInt(name, value);
    arg_list += " " + name + "=" + std::to_string(value);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) Die("gRPC server did not start");
  const std::string address = "127.0.0.1:" + std::to_string(port);
  GrpcKvFetcher fresh_fetcher(options);
  // As WorkerProcess sizes it without a K/V budget.
  auto pool = std::make_shared<KvBufferPool>(int64_t{1} << 30);
  GrpcKvFetcherOptions pooled_options = options;
  pooled_options.kv_pool = pool;
  GrpcKvFetcher pooled_fetcher(pooled_options);
  // The socket link's receiver, as `mesa worker --kv-transport socket` has it (its own pool).
  auto peer_pool = std::make_shared<KvBufferPool>(int64_t{1} << 30);
  PeerKvFetcherOptions peer_options;
  peer_options.endpoints = std::make_shared<SharedTransportEndpoints>(std::make_shared<SocketPeerTransport>());
  peer_options.kv_pool = peer_pool;
  peer_options.channel_args = options.channel_args;
  PeerKvFetcher peer_fetcher(peer_options);
  TcpPair tcp;
  const KvKey key{"bench", 0, 0, 0};

  std::printf("- CPU: %s (%u logical CPUs); ISA: %s\n", CpuModel().c_str(),
              std::thread::hardware_concurrency(), bench::CopyIsa().c_str());
  std::printf("- gRPC %s on 127.0.0.1, sync server; channel arguments: a %d MiB max "
              "receive message%s%s; K/V pieces of %lld KiB; %d rounds per size, rotating "
              "the order of TCP, pooled and fresh gRPC and the socket link, median shown; up to %d lanes per fetch "
              "(streams on connections of their own; the sender uses one per 4 MiB)\n",
              grpc::Version().c_str(), options.max_receive_message_bytes >> 20,
              arg_list.empty() ? ", the rest default" : ", on both sides:", arg_list.c_str(),
              static_cast<long long>(args.piece_kib), args.rounds, args.lanes);
  std::printf("- Receiver: GrpcKvFetcher with a 1 GiB KvBufferPool (as `mesa worker`); every "
              "received chunk is compared with the source and then let go, so its memory goes "
              "back to the pool (steady state, the headline); and a GrpcKvFetcher without a "
              "pool (fresh memory per fetch: the first fetch of a size, the cold case)\n");
  std::printf("- Sender: %s; CRC32C %s; allocator: %s\n",
              args.proto_sender ? "a generated FetchKv handler writing KvMessage protos "
                                  "(--proto-sender)"
                                : "KvStreamingWorkerService (raw messages, pieces sent from the "
                                  "chunk's memory), as `mesa worker` serves",
              args.crc_per_fetch ? "computed on every fetch (--crc-per-fetch)"
                                 : "computed once when the chunk is stored, as WorkerCore does",
              args.default_malloc ? "glibc defaults (--default-malloc)"
                                  : "mallopt(M_MMAP_THRESHOLD, 32 MiB) and "
                                    "mallopt(M_TRIM_THRESHOLD, 1 GiB), as `mesa` sets");
  std::printf("- Socket link: PeerKvFetcher with a 1 GiB KvBufferPool over one TCP peer link (made in the "
              "warm-up round and reused, as between two `mesa worker --kv-transport socket`), PeerKv's gRPC stream "
              "carrying the offer and the gather's manifest and verdict, the bytes on the link straight into the "
              "pooled cache, then its CRC32C checked (a second pass over the bytes)\n");
  if (args.tcp_fresh_sink) {
    std::printf("- TCP copy into fresh memory allocated in the timed region "
                "(--tcp-fresh-sink, a diagnostic: not the baseline)\n");
  }

  std::string table =
      "| chunk | TCP copy GB/s | gRPC pooled GB/s | pooled / TCP | gRPC fresh GB/s | fresh / TCP "
      "| TCP CPU s/GB | pooled CPU s/GB | fresh CPU s/GB | CRC32C GB/s | socket link GB/s | link / TCP "
      "| link CPU s/GB |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (int64_t mib : args.sizes_mib) {
    // 32 layers x 8 kv heads x 128 dims: 256 KiB per token for k and v together.
    const int64_t tokens = (mib << 20) / (2 * 32 * 8 * 128 * 4);
    chunk.kv = std::make_shared<const ChunkKv>(RandomChunkKv(32, 8, tokens, 128, 0, 1));
    const ChunkKv& kv = *chunk.kv;
    const size_t bytes = kv.bytes();
    chunk.crc32c.reset();
    if (!args.crc_per_fetch) chunk.crc32c = KvCrc32c(kv);
    std::vector<uint8_t> sink(bytes, 1);

    const auto crc_start = Clock::now();
    crc_sink = Crc32c(kv.k.data(), kv.k.size() * sizeof(float));
    const double crc_s = Seconds(crc_start);

    enum Leg { kTcp, kPooled, kFresh, kPeer };
    constexpr int kLegs = 4;
    std::vector<double> secs[kLegs], cpu[kLegs];
    const int64_t reused0 = pool->reused(), allocated0 = pool->allocated();
    for (int round = -1; round < args.rounds; ++round) {  // round -1: warm-up, not counted
      for (int i = 0; i < kLegs; ++i) {
        const Leg leg = static_cast<Leg>((i + round + kLegs) % kLegs);
        const double cpu_start = CpuSeconds();
        double s = 0, cpu_s = 0;
        if (leg == kTcp) {
          s = TcpCopy(tcp, kv, sink, args.tcp_fresh_sink);
          cpu_s = CpuSeconds() - cpu_start;
        } else {
          KvFetcher& fetcher = leg == kPeer ? static_cast<KvFetcher&>(peer_fetcher)
                               : leg == kPooled ? static_cast<KvFetcher&>(pooled_fetcher)
                                                : static_cast<KvFetcher&>(fresh_fetcher);
          const auto start = Clock::now();
          absl::StatusOr<std::shared_ptr<const ChunkKv>> got = fetcher.Fetch(address, key, 120000);
          s = Seconds(start);
          cpu_s = CpuSeconds() - cpu_start;  // the check below is not the transfer's
          if (!got.ok()) Die(std::string(got.status().message()));
          if (!SameBits(**got, kv)) {
            Die(leg == kPeer ? "socket link copy differs from the source" : "gRPC copy differs from the source");
          }
          // `got` goes here: a pooled chunk's memory back to the pool (not timed).
        }
        if (round >= 0) secs[leg].push_back(s), cpu[leg].push_back(cpu_s);
      }
    }
    const size_t k_bytes = kv.k.size() * sizeof(float);
    if (std::memcmp(sink.data(), kv.k.data(), k_bytes) != 0 ||
        std::memcmp(sink.data() + k_bytes, kv.v.data(), k_bytes) != 0) {
      Die("TCP copy differs from the source");
    }
    std::fprintf(stderr, "%lld MiB: pool reused %lld buffers, allocated %lld\n",
                 static_cast<long long>(mib), static_cast<long long>(pool->reused() - reused0),
                 static_cast<long long>(pool->allocated() - allocated0));
    double gbs[kLegs], cpu_per_gb[kLegs];
    for (int leg = 0; leg < kLegs; ++leg) {
      gbs[leg] = bytes / Median(secs[leg]) / 1e9;
      cpu_per_gb[leg] = Median(cpu[leg]) / (bytes / 1e9);
    }
    char row[320];
    std::snprintf(row, sizeof(row),
                  "| %lld MiB | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f | %.2f | %.2f |\n",
                  static_cast<long long>(mib), gbs[kTcp], gbs[kPooled], gbs[kPooled] / gbs[kTcp],
                  gbs[kFresh], gbs[kFresh] / gbs[kTcp], cpu_per_gb[kTcp], cpu_per_gb[kPooled],
                  cpu_per_gb[kFresh], kv.k.size() * sizeof(float) / crc_s / 1e9, gbs[kPeer],
                  gbs[kPeer] / gbs[kTcp], cpu_per_gb[kPeer]);
    table += row;
    std::fprintf(stderr, "%s", row);
  }
  std::printf("\n%s", table.c_str());
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server->Wait();
  return 0;
}

}  // namespace
}  // namespace mesa::worker

int main(int argc, char** argv) { return mesa::worker::Main(argc, argv); }
