#include "worker/socket_peer.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace mesa::worker {
namespace {

constexpr char kIdMagic[8] = {'M', 'E', 'S', 'A', 'S', 'O', 'C', 'K'};
constexpr char kHelloMagic[8] = {'M', 'E', 'S', 'A', 'H', 'E', 'L', 'O'};
constexpr size_t kNonceBytes = 16;
constexpr size_t kHostBytes = 64;
constexpr uint32_t kMessageMagic = 0x5056'4B4D;  // "MKVP"
constexpr int kMaxRanks = 4096;

// --- small helpers ---------------------------------------------------------------------

std::string Errno(const char* what) { return absl::StrCat(what, ": ", std::strerror(errno)); }

int MsUntil(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
}

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

void PutU16(uint8_t* p, uint16_t v) { p[0] = v & 0xff, p[1] = v >> 8; }
uint16_t GetU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
void PutU32(uint8_t* p, uint32_t v) { for (int i = 0; i < 4; ++i) p[i] = (v >> (8 * i)) & 0xff; }
uint32_t GetU32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{p[i]} << (8 * i);
  return v;
}
void PutU64(uint8_t* p, uint64_t v) { for (int i = 0; i < 8; ++i) p[i] = (v >> (8 * i)) & 0xff; }
uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

struct Endpoint {
  std::string host;
  uint16_t port = 0;
};

absl::StatusOr<sockaddr_in> Address(const Endpoint& e) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(e.port);
  if (inet_pton(AF_INET, e.host.c_str(), &a.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("not a numeric IPv4 address: '", e.host, "'"));
  }
  return a;
}

// A listening socket on host:0 (the kernel picks the port).
absl::StatusOr<std::pair<int, uint16_t>> Listen(const std::string& host) {
  if (host.size() >= kHostBytes) return absl::InvalidArgumentError("host address too long");
  absl::StatusOr<sockaddr_in> addr = Address({host, 0});
  if (!addr.ok()) return addr.status();
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(Errno("socket"));
  socklen_t len = sizeof(*addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr)) != 0 || listen(fd, 128) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&*addr), &len) != 0) {
    const std::string why = Errno(absl::StrCat("listening on ", host).c_str());
    close(fd);
    return absl::UnavailableError(why);
  }
  SetNonBlocking(fd);
  return std::pair{fd, ntohs(addr->sin_port)};
}

// Waits for `events` on fd until the deadline: OK, or DEADLINE_EXCEEDED / UNAVAILABLE.
absl::Status WaitFor(int fd, short events, absl::Time deadline, const std::string& what) {
  while (true) {
    const int ms = MsUntil(deadline);
    if (ms <= 0) return absl::DeadlineExceededError(absl::StrCat(what, ": deadline passed"));
    pollfd p{fd, events, 0};
    const int r = poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return absl::InternalError(Errno("poll"));
    if (r == 0) continue;
    if (p.revents & events) return absl::OkStatus();
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) {
      return absl::UnavailableError(absl::StrCat(what, ": connection broke"));
    }
  }
}

absl::Status WriteAll(int fd, const uint8_t* data, size_t n, absl::Time deadline, const std::string& what) {
  while (n > 0) {
    const ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
    if (w > 0) {
      data += w, n -= static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (absl::Status s = WaitFor(fd, POLLOUT, deadline, what); !s.ok()) return s;
      continue;
    }
    return absl::UnavailableError(Errno(what.c_str()));
  }
  return absl::OkStatus();
}

absl::Status ReadAll(int fd, uint8_t* data, size_t n, absl::Time deadline, const std::string& what) {
  while (n > 0) {
    const ssize_t r = recv(fd, data, n, 0);
    if (r > 0) {
      data += r, n -= static_cast<size_t>(r);
      continue;
    }
    if (r == 0) return absl::UnavailableError(absl::StrCat(what, ": the peer closed the connection"));
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (absl::Status s = WaitFor(fd, POLLIN, deadline, what); !s.ok()) return s;
      continue;
    }
    return absl::UnavailableError(Errno(what.c_str()));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> Connect(const Endpoint& e, absl::Time deadline) {
  absl::StatusOr<sockaddr_in> addr = Address(e);
  if (!addr.ok()) return addr.status();
  const std::string what = absl::StrCat("connecting to ", e.host, ":", e.port);
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(Errno("socket"));
  SetNonBlocking(fd);
  if (connect(fd, reinterpret_cast<sockaddr*>(&*addr), sizeof(*addr)) != 0 && errno != EINPROGRESS) {
    const std::string why = Errno(what.c_str());
    close(fd);
    return absl::UnavailableError(why);
  }
  absl::Status s = WaitFor(fd, POLLOUT, deadline, what);
  int err = 0;
  socklen_t len = sizeof(err);
  if (s.ok() && (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)) {
    s = absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(err)));
  }
  if (!s.ok()) {
    close(fd);
    return s;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

absl::StatusOr<int> Accept(int listen_fd, absl::Time deadline, const std::string& what) {
  while (true) {
    if (absl::Status s = WaitFor(listen_fd, POLLIN, deadline, what); !s.ok()) return s;
    const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return fd;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) continue;
    return absl::InternalError(Errno("accept"));
  }
}

// --- the group id and the hello --------------------------------------------------------

struct IdFields {
  std::string nonce;
  Endpoint root;
};

PeerGroupId EncodeId(const std::string& nonce, const Endpoint& root) {
  PeerGroupId id;
  uint8_t* p = id.bytes.data();
  std::memcpy(p, kIdMagic, 8);
  std::memcpy(p + 8, nonce.data(), kNonceBytes);
  PutU16(p + 24, root.port);
  std::memcpy(p + 26, root.host.data(), root.host.size());  // < kHostBytes, zero-ended
  return id;
}

absl::StatusOr<IdFields> DecodeId(const PeerGroupId& id) {
  const uint8_t* p = id.bytes.data();
  if (std::memcmp(p, kIdMagic, 8) != 0) {
    return absl::InvalidArgumentError("not a socket peer group id (made by another transport?)");
  }
  IdFields f;
  f.nonce.assign(reinterpret_cast<const char*>(p + 8), kNonceBytes);
  f.root.port = GetU16(p + 24);
  const char* host = reinterpret_cast<const char*>(p + 26);
  f.root.host.assign(host, strnlen(host, kHostBytes - 1));
  return f;
}

// nonce(16) from(4) n(4) port(2) host(64)
constexpr size_t kHelloBytes = 8 + kNonceBytes + 4 + 4 + 2 + kHostBytes;
struct Hello {
  std::string nonce;
  int from = -1, n = 0;
  Endpoint endpoint;
};

std::vector<uint8_t> EncodeHello(const Hello& h) {
  std::vector<uint8_t> b(kHelloBytes, 0);
  std::memcpy(b.data(), kHelloMagic, 8);
  std::memcpy(b.data() + 8, h.nonce.data(), kNonceBytes);
  PutU32(b.data() + 24, static_cast<uint32_t>(h.from));
  PutU32(b.data() + 28, static_cast<uint32_t>(h.n));
  PutU16(b.data() + 32, h.endpoint.port);
  std::memcpy(b.data() + 34, h.endpoint.host.data(), std::min(h.endpoint.host.size(), kHostBytes - 1));
  return b;
}

// Reads a hello and checks it belongs to this group (nonce, n) and comes from a rank in
// [lo, hi). A stray or stale connection is refused with INVALID_ARGUMENT.
absl::StatusOr<Hello> ReadHello(int fd, const std::string& nonce, int n, int lo, int hi, absl::Time deadline) {
  uint8_t b[kHelloBytes];
  if (absl::Status s = ReadAll(fd, b, sizeof(b), deadline, "reading a peer's hello"); !s.ok()) return s;
  if (std::memcmp(b, kHelloMagic, 8) != 0 || std::memcmp(b + 8, nonce.data(), kNonceBytes) != 0) {
    return absl::InvalidArgumentError("a connection that is not of this group");
  }
  Hello h;
  h.nonce = nonce;
  h.from = static_cast<int>(GetU32(b + 24));
  h.n = static_cast<int>(GetU32(b + 28));
  h.endpoint.port = GetU16(b + 32);
  const char* host = reinterpret_cast<const char*>(b + 34);
  h.endpoint.host.assign(host, strnlen(host, kHostBytes - 1));
  if (h.n != n) return absl::InvalidArgumentError(absl::StrCat("a peer joined a group of ", h.n, " ranks, this one has ", n));
  if (h.from < lo || h.from >= hi) {
    return absl::InvalidArgumentError(absl::StrCat("a hello from rank ", h.from, ", expected one in [", lo, ", ", hi, ")"));
  }
  return h;
}

// A connection gets two seconds to say hello, so that a silent stranger cannot hold
// up the ranks that come after it (the accept loop keeps the Join deadline).
absl::Time HelloDeadline(absl::Time deadline) { return std::min(deadline, absl::Now() + absl::Seconds(2)); }

// --- the link ----------------------------------------------------------------------------

class SocketPeerLink final : public PeerLink {
 public:
  SocketPeerLink(int rank, std::vector<int> fds, std::function<void(int, int64_t)> on_received)
      : rank_(rank), fds_(std::move(fds)), on_received_(std::move(on_received)),
        sent_seq_(fds_.size(), 0), recv_seq_(fds_.size(), 0), received_(fds_.size(), 0) {
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  }
  ~SocketPeerLink() override {
    for (int fd : fds_) {
      if (fd >= 0) close(fd);
    }
    if (wake_fd_ >= 0) close(wake_fd_);
  }

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(fds_.size()); }
  std::string Transport() const override { return "socket"; }
  bool HostMemory() const override { return true; }

  absl::Status Run(absl::Span<const PeerOp> ops, absl::Time deadline, int* failed_op) override;

  void Abort(const absl::Status& why) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!dead_.ok()) return;
    dead_ = why.ok() ? absl::CancelledError("aborted") : why;
    // Peers see their operations with this rank fail at once: each connection is reset
    // (linger 0), by putting a fresh unconnected socket in its place (dup2), so that the
    // descriptor Run may be polling stays valid until the destructor closes it. A plain
    // shutdown is not enough: a peer blocked sending into a full receive buffer would
    // wait for its deadline.
    for (int fd : fds_) {
      if (fd < 0) continue;
      const linger reset{1, 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
      const int blank = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (blank < 0 || dup2(blank, fd) < 0) shutdown(fd, SHUT_RDWR);
      if (blank >= 0) close(blank);
    }
    const uint64_t one = 1;
    if (wake_fd_ >= 0) (void)!write(wake_fd_, &one, sizeof(one));
  }
  absl::Status status() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return dead_;
  }

 private:
  // One posted message in flight with a peer, in one direction.
  struct Transfer {
    int op = -1;
    uint8_t* data = nullptr;
    int64_t bytes = 0;
    uint8_t header[24] = {};
    int64_t header_done = 0, done = 0;
  };
  struct PeerState {
    std::deque<Transfer> sends, recvs;
  };

  absl::Status Fail(absl::Status s, int op, int* failed_op) {
    if (failed_op) *failed_op = op;
    s = absl::Status(s.code(), absl::StrCat("socket link, rank ", rank_, ": ", s.message()));
    Abort(s);
    return s;
  }
  std::string OpName(const Transfer& t, bool send, int peer) const {
    return absl::StrCat(send ? "send to" : "receive from", " peer ", peer, " (op ", t.op, ", ", t.bytes,
                        " bytes)");
  }
  // A connection that ended (errno: 0 for an orderly close, else why).
  static absl::Status Broken(const std::string& what, int peer, const Transfer& t) {
    const bool closed = errno == 0 || errno == ECONNRESET || errno == EPIPE;
    return absl::UnavailableError(absl::StrCat(what, ": ", closed ? absl::StrCat("peer ", peer, " closed the connection")
                                                                  : std::string(std::strerror(errno)),
                                               errno == ECONNRESET ? " (reset)" : "", " after ", t.done, " of ",
                                               t.bytes, " bytes"));
  }
  // Moves bytes of the current transfers with `peer` until the socket would block.
  absl::Status Pump(int peer, PeerState& st, bool can_read, bool can_write, int* bad_op);

  const int rank_;
  std::vector<int> fds_;  // per peer; -1 for this rank
  std::function<void(int, int64_t)> on_received_;
  std::vector<uint64_t> sent_seq_, recv_seq_;
  std::vector<int64_t> received_;
  int wake_fd_ = -1;
  mutable std::mutex mu_;
  absl::Status dead_;
};

absl::Status SocketPeerLink::Pump(int peer, PeerState& st, bool can_read, bool can_write, int* bad_op) {
  const int fd = fds_[peer];
  while (can_write && !st.sends.empty()) {
    Transfer& t = st.sends.front();
    *bad_op = t.op;
    const std::string what = OpName(t, true, peer);
    ssize_t w;
    if (t.header_done < 24) {
      w = send(fd, t.header + t.header_done, 24 - t.header_done, MSG_NOSIGNAL);
      if (w > 0) t.header_done += w;
    } else {
      w = send(fd, t.data + t.done, static_cast<size_t>(t.bytes - t.done), MSG_NOSIGNAL);
      if (w > 0) t.done += w;
    }
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return Broken(what, peer, t);
    }
    if (t.done == t.bytes && t.header_done == 24) st.sends.pop_front();
  }
  while (can_read && !st.recvs.empty()) {
    Transfer& t = st.recvs.front();
    *bad_op = t.op;
    const std::string what = OpName(t, false, peer);
    ssize_t r;
    const bool payload = t.header_done == 24;
    if (!payload) {
      r = recv(fd, t.header + t.header_done, 24 - t.header_done, 0);
      if (r > 0) {
        t.header_done += r;
        if (t.header_done == 24) {
          const uint32_t magic = GetU32(t.header);
          const uint64_t seq = GetU64(t.header + 8);
          const uint64_t bytes = GetU64(t.header + 16);
          if (magic != kMessageMagic || seq != recv_seq_[peer]) {
            return absl::DataLossError(absl::StrCat(what, ": a broken message header (sequence ", seq,
                                                    ", expected ", recv_seq_[peer], ")"));
          }
          if (bytes != static_cast<uint64_t>(t.bytes)) {
            return absl::InvalidArgumentError(absl::StrCat(
                what, ": peer ", peer, " sent ", bytes, " bytes as its message #", seq,
                ", the receive posted for it takes ", t.bytes,
                " (the two ranks posted their operations in different orders or sizes)"));
          }
        }
      }
    } else {
      r = recv(fd, t.data + t.done, static_cast<size_t>(t.bytes - t.done), 0);
      if (r > 0) t.done += r;
    }
    if (r == 0) {
      errno = 0;
      return Broken(what, peer, t);
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return Broken(what, peer, t);
    }
    if (payload) {  // message bytes only, not headers
      received_[peer] += r;
      if (on_received_) on_received_(peer, received_[peer]);
    }
    if (t.done == t.bytes && t.header_done == 24) {
      st.recvs.pop_front();
      ++recv_seq_[peer];
    }
  }
  return absl::OkStatus();
}

absl::Status SocketPeerLink::Run(absl::Span<const PeerOp> ops, absl::Time deadline, int* failed_op) {
  if (failed_op) *failed_op = -1;
  if (absl::Status d = status(); !d.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("the socket link is dead: ", d.message()));
  }
  const int n = size();
  std::vector<PeerState> peers(n);
  std::deque<int> self_sends, self_recvs;
  for (int i = 0; i < static_cast<int>(ops.size()); ++i) {
    const PeerOp& op = ops[i];
    if (op.peer < 0 || op.peer >= n || op.bytes <= 0 || op.data == nullptr) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("op ", i, ": peer ", op.peer, " of ", n, ", ", op.bytes,
                                                          " bytes at ", op.data ? "a buffer" : "null")),
                  i, failed_op);
    }
    const bool send = op.kind == PeerOp::Kind::kSend;
    if (op.peer == rank_) {
      (send ? self_sends : self_recvs).push_back(i);
      continue;
    }
    Transfer t;
    t.op = i;
    t.data = static_cast<uint8_t*>(op.data);
    t.bytes = op.bytes;
    if (send) {
      PutU32(t.header, kMessageMagic);
      PutU64(t.header + 8, sent_seq_[op.peer]++);
      PutU64(t.header + 16, static_cast<uint64_t>(op.bytes));
      peers[op.peer].sends.push_back(t);
    } else {
      peers[op.peer].recvs.push_back(t);
    }
  }
  // To self: the k-th send is the k-th receive, as between two ranks.
  if (self_sends.size() != self_recvs.size()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(self_sends.size(), " sends to self but ", self_recvs.size(),
                                                        " receives from self in one group")),
                -1, failed_op);
  }
  for (size_t k = 0; k < self_sends.size(); ++k) {
    const PeerOp& s = ops[self_sends[k]];
    const PeerOp& r = ops[self_recvs[k]];
    if (s.bytes != r.bytes) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("send to self #", k, " is ", s.bytes,
                                                          " bytes, its receive takes ", r.bytes)),
                  self_recvs[k], failed_op);
    }
    std::memmove(r.data, s.data, static_cast<size_t>(s.bytes));
  }

  std::vector<pollfd> pfds;
  std::vector<int> who;
  while (true) {
    pfds.clear();
    who.clear();
    for (int p = 0; p < n; ++p) {
      const short ev = static_cast<short>((peers[p].sends.empty() ? 0 : POLLOUT) | (peers[p].recvs.empty() ? 0 : POLLIN));
      if (ev) {
        pfds.push_back({fds_[p], ev, 0});
        who.push_back(p);
      }
    }
    if (pfds.empty()) return absl::OkStatus();
    pfds.push_back({wake_fd_, POLLIN, 0});
    const int ms = MsUntil(deadline);
    if (ms <= 0) {
      std::string pending;
      int first = -1;
      for (int p : who) {
        for (const auto* q : {&peers[p].sends, &peers[p].recvs}) {
          for (const Transfer& t : *q) {
            if (first < 0) first = t.op;
            absl::StrAppend(&pending, pending.empty() ? "" : "; ", OpName(t, q == &peers[p].sends, p), ": ", t.done,
                            " bytes done");
          }
        }
      }
      return Fail(absl::DeadlineExceededError(absl::StrCat("deadline passed with operations pending: ", pending)),
                  first, failed_op);
    }
    const int r = poll(pfds.data(), pfds.size(), ms);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Fail(absl::InternalError(Errno("poll")), -1, failed_op);
    if (pfds.back().revents) {
      return absl::Status(status().code(), absl::StrCat("socket link, rank ", rank_, ": aborted: ", status().message()));
    }
    for (size_t i = 0; i + 1 < pfds.size(); ++i) {
      const short re = pfds[i].revents;
      if (!re) continue;
      const int p = who[i];
      // An error or hang-up shows on the read or write that follows.
      const bool broken = re & (POLLERR | POLLHUP | POLLNVAL);
      int bad_op = -1;
      absl::Status s = Pump(p, peers[p], (re & POLLIN) || broken, (re & POLLOUT) || broken, &bad_op);
      if (s.ok() && broken && (re & POLLNVAL)) s = absl::UnavailableError(absl::StrCat("connection to peer ", p, " is closed"));
      if (!s.ok()) return Fail(s, bad_op, failed_op);
    }
  }
}

}  // namespace

// --- the transport ---------------------------------------------------------------------

SocketPeerTransport::SocketPeerTransport(SocketPeerOptions options) : options_(std::move(options)) {}

SocketPeerTransport::~SocketPeerTransport() {
  for (auto& [nonce, fd] : listening_) close(fd);
}

absl::StatusOr<PeerGroupId> SocketPeerTransport::NewGroupId() {
  absl::StatusOr<std::pair<int, uint16_t>> l = Listen(options_.host);
  if (!l.ok()) return l.status();
  std::string nonce(kNonceBytes, '\0');
  std::random_device rd;
  for (char& c : nonce) c = static_cast<char>(rd());
  std::lock_guard<std::mutex> lock(mu_);
  listening_[nonce] = l->first;
  return EncodeId(nonce, {options_.host, l->second});
}

absl::StatusOr<std::unique_ptr<PeerLink>> SocketPeerTransport::Join(const PeerGroupId& id, int rank, int n,
                                                                    absl::Time deadline) {
  if (n < 1 || n > kMaxRanks || rank < 0 || rank >= n) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " of a group of ", n));
  }
  absl::StatusOr<IdFields> f = DecodeId(id);
  if (!f.ok()) return f.status();
  std::vector<int> fds(n, -1);
  int listen_fd = -1;
  auto cleanup = [&] {
    for (int& fd : fds) {
      if (fd >= 0) close(fd);
      fd = -1;
    }
    if (listen_fd >= 0) close(listen_fd);
    listen_fd = -1;
  };
  auto fail = [&](absl::Status s) {
    cleanup();
    return absl::Status(s.code(), absl::StrCat("socket link, rank ", rank, " of ", n, ": joining: ", s.message()));
  };

  if (rank == 0) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = listening_.find(f->nonce);
      if (it == listening_.end()) {
        return absl::FailedPreconditionError(
            "rank 0 must join through the transport that made the group id (NewGroupId), once");
      }
      listen_fd = it->second;
      listening_.erase(it);
    }
    std::vector<Endpoint> table(n);
    table[0] = f->root;
    for (int joined = 1; joined < n;) {
      absl::StatusOr<int> fd = Accept(listen_fd, deadline, absl::StrCat("waiting for ", n - joined, " rank(s) to join"));
      if (!fd.ok()) return fail(fd.status());
      absl::StatusOr<Hello> h = ReadHello(*fd, f->nonce, n, 1, n, HelloDeadline(deadline));
      if (!h.ok() || fds[h->from] >= 0) {
        close(*fd);  // a stray, silent or duplicate connection: ignored
        continue;
      }
      fds[h->from] = *fd;
      table[h->from] = h->endpoint;
      ++joined;
    }
    std::vector<uint8_t> t(static_cast<size_t>(n) * (2 + kHostBytes), 0);
    for (int r = 0; r < n; ++r) {
      PutU16(&t[r * (2 + kHostBytes)], table[r].port);
      std::memcpy(&t[r * (2 + kHostBytes) + 2], table[r].host.data(), table[r].host.size());
    }
    for (int r = 1; r < n; ++r) {
      if (absl::Status s = WriteAll(fds[r], t.data(), t.size(), deadline, absl::StrCat("sending rank ", r, " the addresses"));
          !s.ok()) {
        return fail(s);
      }
    }
  } else {
    absl::StatusOr<std::pair<int, uint16_t>> l = Listen(options_.host);
    if (!l.ok()) return fail(l.status());
    listen_fd = l->first;
    const Hello mine{f->nonce, rank, n, {options_.host, l->second}};
    const std::vector<uint8_t> hello = EncodeHello(mine);
    absl::StatusOr<int> root = Connect(f->root, deadline);
    if (!root.ok()) return fail(root.status());
    fds[0] = *root;
    std::vector<uint8_t> t(static_cast<size_t>(n) * (2 + kHostBytes));
    if (absl::Status s = WriteAll(fds[0], hello.data(), hello.size(), deadline, "greeting rank 0"); !s.ok()) return fail(s);
    if (absl::Status s = ReadAll(fds[0], t.data(), t.size(), deadline, "waiting for rank 0's address table"); !s.ok()) {
      return fail(s);
    }
    for (int j = 1; j < rank; ++j) {
      Endpoint e;
      e.port = GetU16(&t[j * (2 + kHostBytes)]);
      const char* host = reinterpret_cast<const char*>(&t[j * (2 + kHostBytes) + 2]);
      e.host.assign(host, strnlen(host, kHostBytes - 1));
      absl::StatusOr<int> fd = Connect(e, deadline);
      if (!fd.ok()) return fail(absl::Status(fd.status().code(), absl::StrCat("rank ", j, ": ", fd.status().message())));
      fds[j] = *fd;
      if (absl::Status s = WriteAll(*fd, hello.data(), hello.size(), deadline, absl::StrCat("greeting rank ", j));
          !s.ok()) {
        return fail(s);
      }
    }
    for (int joined = rank + 1; joined < n;) {
      absl::StatusOr<int> fd = Accept(listen_fd, deadline, absl::StrCat("waiting for ", n - joined, " higher rank(s)"));
      if (!fd.ok()) return fail(fd.status());
      absl::StatusOr<Hello> h = ReadHello(*fd, f->nonce, n, rank + 1, n, HelloDeadline(deadline));
      if (!h.ok() || fds[h->from] >= 0) {
        close(*fd);
        continue;
      }
      fds[h->from] = *fd;
      ++joined;
    }
  }
  close(listen_fd);
  for (int fd : fds) {
    if (fd >= 0) SetNonBlocking(fd);
  }
  return std::unique_ptr<PeerLink>(std::make_unique<SocketPeerLink>(rank, std::move(fds), options_.on_received));
}

}  // namespace mesa::worker
