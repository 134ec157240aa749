#include "worker/kv_gather.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace mesa::worker {
namespace {

constexpr char kManifestMagic[8] = {'M', 'K', 'V', 'M', 'A', 'N', '0', '1'};
constexpr char kVerdictMagic[8] = {'M', 'K', 'V', 'G', 'O', '0', '0', '1'};
constexpr uint32_t kMaxChunks = 1 << 16;
constexpr uint32_t kMaxText = 1 << 16;

// --- byte form ---------------------------------------------------------------------------

class Writer {
 public:
  void Raw(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  void U8(uint8_t v) { Raw(&v, 1); }
  void U32(uint32_t v) {
    uint8_t b[4];
    for (int i = 0; i < 4; ++i) b[i] = (v >> (8 * i)) & 0xff;
    Raw(b, 4);
  }
  void I64(int64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; ++i) b[i] = (static_cast<uint64_t>(v) >> (8 * i)) & 0xff;
    Raw(b, 8);
  }
  void Str(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    Raw(s.data(), s.size());
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

// Reads with bounds checks; the first failure sticks (ok() false) and reads return 0.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool ok() const { return ok_; }
  bool done() const { return pos_ == in_.size(); }
  bool Raw(void* p, size_t n) {
    if (!ok_ || in_.size() - pos_ < n) return ok_ = false;
    std::memcpy(p, in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  uint8_t U8() {
    uint8_t v = 0;
    Raw(&v, 1);
    return v;
  }
  uint32_t U32() {
    uint8_t b[4] = {};
    if (!Raw(b, 4)) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t{b[i]} << (8 * i);
    return v;
  }
  int64_t I64() {
    uint8_t b[8] = {};
    if (!Raw(b, 8)) return 0;
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{b[i]} << (8 * i);
    return static_cast<int64_t>(v);
  }
  std::string Str(uint32_t max) {
    const uint32_t n = U32();
    if (!ok_ || n > max || in_.size() - pos_ < n) {
      ok_ = false;
      return "";
    }
    std::string s(in_.substr(pos_, n));
    pos_ += n;
    return s;
  }

 private:
  std::string_view in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

void WriteStatus(Writer& w, const absl::Status& s) {
  w.U32(static_cast<uint32_t>(s.code()));
  const std::string text(s.message().substr(0, kMaxText));
  w.Str(text);
}

absl::Status ReadStatus(Reader& r) {
  const uint32_t code = r.U32();
  std::string text = r.Str(kMaxText);
  if (code == 0) return absl::OkStatus();
  const auto c = code <= 16 ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kUnknown;
  return absl::Status(c, text.empty() ? "(no reason given)" : text);
}

std::string Name(const GatherEntry& e) { return absl::StrCat("chunk ", KvKeyString(e.key), " from peer ", e.holder); }

absl::Status Named(const absl::Status& s, const std::string& what) {
  return absl::Status(s.code(), absl::StrCat("K/V gather: ", what, ": ", s.message()));
}

// The plan's entries held by `holder`, in plan order.
std::vector<size_t> EntriesOf(const GatherPlan& plan, int holder) {
  std::vector<size_t> out;
  for (size_t i = 0; i < plan.entries.size(); ++i) {
    if (plan.entries[i].holder == holder) out.push_back(i);
  }
  return out;
}

// The manifest's word against the plan's, field by field ("" if they agree).
std::string Disagreement(const GatherEntry& e, const ChunkManifest& m) {
  if (!(m.key == e.key)) {
    return absl::StrCat("the holder's manifest has chunk ", KvKeyString(m.key),
                        " in this place (the two sides would post in different orders)");
  }
  const KvManifestInfo& i = m.info;
  if (i.n_layer != e.n_layer || i.n_head_kv != e.n_head_kv || i.head_dim != e.head_dim) {
    return absl::StrCat("shape ", i.n_layer, "x", i.n_head_kv, "x", i.head_dim, ", the plan says ", e.n_layer, "x",
                        e.n_head_kv, "x", e.head_dim, " (layers x kv heads x head dim)");
  }
  if (i.range_begin != e.range_begin || i.range_end != e.range_end) {
    return absl::StrCat("tokens [", i.range_begin, ", ", i.range_end, "), the plan says [", e.range_begin, ", ",
                        e.range_end, ")");
  }
  if (i.dtype != e.dtype) return absl::StrCat("dtype ", i.dtype, ", the plan says ", e.dtype);
  if (i.total_bytes != 2 * e.HalfBytes()) {
    return absl::StrCat(i.total_bytes, " bytes, the plan's shape makes ", 2 * e.HalfBytes());
  }
  return "";
}

// Tells every holder the gather is off (best effort: the link may be dead already).
void RefuseAll(GatherControl& control, const GatherPlan& plan, const absl::Status& why, absl::Time deadline) {
  absl::flat_hash_set<int> told;
  const std::string verdict = EncodeVerdict(why);
  for (const GatherEntry& e : plan.entries) {
    if (told.insert(e.holder).second) (void)control.Send(e.holder, verdict, deadline);
  }
}

}  // namespace

// --- control over a link ---------------------------------------------------------------

absl::Status LinkControl::Send(int to, const std::string& message, absl::Time deadline) {
  if (static_cast<int64_t>(message.size()) > kMaxControlBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a control message of ", message.size(), " bytes (at most ",
                                                   kMaxControlBytes, ")"));
  }
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = (uint64_t{message.size()} >> (8 * i)) & 0xff;
  if (absl::Status s = link_.Run({PeerOp::Send(to, len, 8)}, deadline); !s.ok()) return s;
  if (message.empty()) return absl::OkStatus();
  return link_.Run({PeerOp::Send(to, message.data(), static_cast<int64_t>(message.size()))}, deadline);
}

absl::StatusOr<std::string> LinkControl::Receive(int from, absl::Time deadline) {
  uint8_t len[8];
  if (absl::Status s = link_.Run({PeerOp::Recv(from, len, 8)}, deadline); !s.ok()) return s;
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{len[i]} << (8 * i);
  if (n > static_cast<uint64_t>(kMaxControlBytes)) {
    const absl::Status s = absl::DataLossError(absl::StrCat("peer ", from, " announced a control message of ", n,
                                                            " bytes (at most ", kMaxControlBytes, ")"));
    link_.Abort(s);  // the rest of its stream cannot be read in step any more
    return s;
  }
  std::string message(n, '\0');
  if (n == 0) return message;
  if (absl::Status s = link_.Run({PeerOp::Recv(from, message.data(), static_cast<int64_t>(n))}, deadline); !s.ok()) {
    return s;
  }
  return message;
}

// --- byte form of the messages -----------------------------------------------------------

std::string EncodeManifests(const absl::Status& holder_status, const std::vector<ChunkManifest>& chunks) {
  Writer w;
  w.Raw(kManifestMagic, 8);
  WriteStatus(w, holder_status);
  w.U32(static_cast<uint32_t>(chunks.size()));
  for (const ChunkManifest& c : chunks) {
    w.Str(c.key.job_id);
    w.I64(c.key.item);
    w.I64(c.key.chunk);
    w.I64(c.key.attempt);
    const KvManifestInfo& i = c.info;
    w.I64(i.n_layer);
    w.I64(i.n_head_kv);
    w.I64(i.head_dim);
    w.I64(i.range_begin);
    w.I64(i.range_end);
    w.Str(i.dtype);
    w.I64(i.total_bytes);
    w.U32(i.crc32c);
    w.U8(c.has_crc ? 1 : 0);
  }
  return w.Take();
}

absl::StatusOr<std::vector<ChunkManifest>> DecodeManifests(const std::string& bytes) {
  Reader r(bytes);
  char magic[8] = {};
  r.Raw(magic, 8);
  if (!r.ok() || std::memcmp(magic, kManifestMagic, 8) != 0) return absl::DataLossError("not a K/V manifest message");
  const absl::Status holder = ReadStatus(r);
  const uint32_t count = r.U32();
  if (!r.ok() || count > kMaxChunks) return absl::DataLossError("a malformed K/V manifest message (header)");
  if (!holder.ok()) return holder;
  std::vector<ChunkManifest> out(count);
  for (ChunkManifest& c : out) {
    c.key.job_id = r.Str(kMaxText);
    c.key.item = r.I64();
    c.key.chunk = static_cast<int32_t>(r.I64());
    c.key.attempt = static_cast<int32_t>(r.I64());
    KvManifestInfo& i = c.info;
    i.n_layer = r.I64();
    i.n_head_kv = r.I64();
    i.head_dim = r.I64();
    i.range_begin = r.I64();
    i.range_end = r.I64();
    i.dtype = r.Str(64);
    i.total_bytes = r.I64();
    i.crc32c = r.U32();
    const uint8_t has = r.U8();
    c.has_crc = has == 1;
    if (has > 1) return absl::DataLossError("a malformed K/V manifest message (crc flag)");
  }
  if (!r.ok() || !r.done()) return absl::DataLossError("a malformed K/V manifest message (truncated or trailing bytes)");
  return out;
}

std::string EncodeVerdict(const absl::Status& verdict) {
  Writer w;
  w.Raw(kVerdictMagic, 8);
  WriteStatus(w, verdict);
  return w.Take();
}

absl::Status DecodeVerdict(const std::string& bytes, absl::Status* verdict) {
  Reader r(bytes);
  char magic[8] = {};
  r.Raw(magic, 8);
  if (!r.ok() || std::memcmp(magic, kVerdictMagic, 8) != 0) return absl::DataLossError("not a K/V gather verdict");
  absl::Status s = ReadStatus(r);
  if (!r.ok() || !r.done()) return absl::DataLossError("a malformed K/V gather verdict");
  *verdict = std::move(s);
  return absl::OkStatus();
}

// --- the plan ------------------------------------------------------------------------------

int64_t GatherEntry::HalfBytes() const {
  if (dtype != "f32" || n_layer <= 0 || n_head_kv <= 0 || head_dim <= 0 || range_begin < 0 ||
      range_end <= range_begin) {
    return -1;
  }
  const int64_t limit = int64_t{1} << 40;  // 1 TiB: no overflow below
  if (n_layer > limit || n_head_kv > limit || head_dim > limit || range_end - range_begin > limit) return -1;
  __int128 b = static_cast<__int128>(n_layer) * n_head_kv * head_dim * (range_end - range_begin) * 4;
  return b > limit ? -1 : static_cast<int64_t>(b);
}

absl::Status CheckGatherPlan(const GatherPlan& plan, int n) {
  if (plan.receiver < 0 || plan.receiver >= n) {
    return absl::InvalidArgumentError(absl::StrCat("gather plan: receiver ", plan.receiver, " of ", n, " ranks"));
  }
  absl::flat_hash_set<KvKey> keys;
  for (const GatherEntry& e : plan.entries) {
    if (e.holder < 0 || e.holder >= n || e.holder == plan.receiver) {
      return absl::InvalidArgumentError(absl::StrCat("gather plan: ", Name(e), ": holder rank ", e.holder,
                                                     " is not another rank of ", n));
    }
    if (!keys.insert(e.key).second) {
      return absl::InvalidArgumentError(absl::StrCat("gather plan: ", Name(e), " is listed twice"));
    }
    if (e.HalfBytes() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("gather plan: ", Name(e), ": shape ", e.n_layer, "x", e.n_head_kv,
                                                     "x", e.head_dim, ", tokens [", e.range_begin, ", ", e.range_end,
                                                     "), dtype ", e.dtype, " (f32 with positive sizes only)"));
    }
  }
  return absl::OkStatus();
}

HeldChunk HeldFromChunkKv(const KvKey& key, const ChunkKv& kv, std::optional<uint32_t> crc32c) {
  HeldChunk h;
  h.manifest.key = key;
  h.manifest.info = MakeManifest(kv, crc32c);
  h.manifest.has_crc = true;
  h.k = kv.k.data();
  h.v = kv.v.data();
  return h;
}

// --- holder ------------------------------------------------------------------------------

absl::Status GatherSend(PeerLink& link, GatherControl& control, const GatherPlan& plan,
                        absl::Span<const HeldChunk> held, absl::Time deadline) {
  const int me = link.rank();
  const std::vector<size_t> mine = EntriesOf(plan, me);
  const std::string who = absl::StrCat("holder rank ", me, " to receiver ", plan.receiver);
  if (plan.receiver < 0 || plan.receiver >= link.size() || plan.receiver == me) {
    return absl::InvalidArgumentError(absl::StrCat("K/V gather: ", who, ": not a receiver this rank can send to"));
  }
  // A rank that holds nothing of the plan takes no part (the receiver expects nothing).
  if (mine.empty()) return absl::OkStatus();
  absl::Status problem = CheckGatherPlan(plan, link.size());
  absl::flat_hash_map<KvKey, const HeldChunk*> by_key;
  for (const HeldChunk& h : held) by_key[h.manifest.key] = &h;
  std::vector<ChunkManifest> manifests;
  std::vector<PeerOp> ops;
  for (size_t i : mine) {
    if (!problem.ok()) break;
    const GatherEntry& e = plan.entries[i];
    auto it = by_key.find(e.key);
    if (it == by_key.end()) {
      problem = absl::NotFoundError(absl::StrCat(Name(e), ": rank ", me, " does not hold it"));
      break;
    }
    const HeldChunk& h = *it->second;
    manifests.push_back(h.manifest);
    const int64_t half = h.manifest.info.total_bytes / 2;
    if (half > 0) {
      ops.push_back(PeerOp::Send(plan.receiver, h.k, half));
      ops.push_back(PeerOp::Send(plan.receiver, h.v, half));
    }
  }
  if (!problem.ok()) {
    // Said on the control plane too, so that the receiver fails now, not at its
    // deadline; its verdict is read (and dropped) to keep the control stream in step.
    if (control.Send(plan.receiver, EncodeManifests(problem, {}), deadline).ok()) {
      (void)control.Receive(plan.receiver, deadline);
    }
    return Named(problem, who);
  }
  if (absl::Status s = control.Send(plan.receiver, EncodeManifests(absl::OkStatus(), manifests), deadline); !s.ok()) {
    return Named(s, absl::StrCat(who, ": sending the manifest"));
  }
  absl::StatusOr<std::string> v = control.Receive(plan.receiver, deadline);
  if (!v.ok()) return Named(v.status(), absl::StrCat(who, ": waiting for the receiver's verdict"));
  absl::Status verdict;
  if (absl::Status s = DecodeVerdict(*v, &verdict); !s.ok()) return Named(s, who);
  if (!verdict.ok()) {
    return absl::AbortedError(absl::StrCat("K/V gather: ", who, ": the receiver refused the transfer: ",
                                           verdict.message()));
  }
  int failed = -1;
  if (absl::Status s = link.Run(ops, deadline, &failed); !s.ok()) {
    const std::string what = failed >= 0 ? Name(plan.entries[mine[failed / 2]]) : who;
    return Named(s, what);
  }
  return absl::OkStatus();
}

// --- receiver -------------------------------------------------------------------------

absl::StatusOr<std::vector<ChunkManifest>> GatherReceive(PeerLink& link, GatherControl& control,
                                                         const GatherPlan& plan, const GatherAllocate& allocate,
                                                         absl::Time deadline) {
  if (link.rank() != plan.receiver) {
    return absl::InvalidArgumentError(absl::StrCat("K/V gather: rank ", link.rank(), " is not the plan's receiver (",
                                                   plan.receiver, ")"));
  }
  if (absl::Status s = CheckGatherPlan(plan, link.size()); !s.ok()) return s;

  // 1-2. Every holder's manifest, checked against the plan before anything moves.
  std::vector<int> holders;
  for (const GatherEntry& e : plan.entries) {
    if (std::find(holders.begin(), holders.end(), e.holder) == holders.end()) holders.push_back(e.holder);
  }
  std::vector<ChunkManifest> accepted(plan.entries.size());
  absl::Status refusal;
  for (int h : holders) {
    const std::vector<size_t> theirs = EntriesOf(plan, h);
    const std::string chunks_of = absl::StrCat("chunk(s) ", [&] {
      std::string s;
      for (size_t i : theirs) absl::StrAppend(&s, s.empty() ? "" : ", ", KvKeyString(plan.entries[i].key));
      return s;
    }(), " from peer ", h);
    absl::StatusOr<std::string> bytes = control.Receive(h, deadline);
    if (!bytes.ok()) {
      // The control plane itself failed: nothing more can be heard.
      if (refusal.ok()) refusal = Named(bytes.status(), absl::StrCat(chunks_of, ": waiting for the manifest"));
      break;
    }
    // After a refusal the other holders' manifests are still read, so that every
    // holder's control stream stays in step for the next gather.
    if (!refusal.ok()) continue;
    absl::StatusOr<std::vector<ChunkManifest>> m = DecodeManifests(*bytes);
    if (!m.ok()) {
      refusal = Named(m.status(), absl::StrCat(chunks_of, ": the holder says"));
      continue;
    }
    if (m->size() != theirs.size()) {
      refusal = absl::InvalidArgumentError(absl::StrCat("K/V gather: ", chunks_of, ": the holder offers ", m->size(),
                                                        " chunk(s), the plan has ", theirs.size()));
      continue;
    }
    for (size_t j = 0; j < theirs.size() && refusal.ok(); ++j) {
      const GatherEntry& e = plan.entries[theirs[j]];
      if (std::string d = Disagreement(e, (*m)[j]); !d.empty()) {
        refusal = absl::InvalidArgumentError(absl::StrCat("K/V gather: ", Name(e), ": manifest refused: ", d));
      }
      accepted[theirs[j]] = (*m)[j];
    }
  }

  // Where the bytes go, only once every manifest is good.
  std::vector<KvRegion> regions(plan.entries.size());
  for (size_t i = 0; i < plan.entries.size() && refusal.ok(); ++i) {
    absl::StatusOr<KvRegion> r = allocate(i, accepted[i]);
    if (!r.ok()) {
      refusal = Named(r.status(), absl::StrCat(Name(plan.entries[i]), ": allocating"));
    } else {
      regions[i] = *r;
    }
  }
  if (!refusal.ok()) {
    RefuseAll(control, plan, refusal, deadline);
    return refusal;
  }

  // 3. Go, then every receive in one group, in plan order.
  for (int h : holders) {
    if (absl::Status s = control.Send(h, EncodeVerdict(absl::OkStatus()), deadline); !s.ok()) {
      return Named(s, absl::StrCat("telling peer ", h, " to send"));
    }
  }
  std::vector<PeerOp> ops;
  ops.reserve(2 * plan.entries.size());
  for (size_t i = 0; i < plan.entries.size(); ++i) {
    const int64_t half = plan.entries[i].HalfBytes();
    ops.push_back(PeerOp::Recv(plan.entries[i].holder, regions[i].k, half));
    ops.push_back(PeerOp::Recv(plan.entries[i].holder, regions[i].v, half));
  }
  int failed = -1;
  if (absl::Status s = link.Run(ops, deadline, &failed); !s.ok()) {
    if (failed >= 0) return Named(s, Name(plan.entries[failed / 2]));
    std::string all;
    for (const GatherEntry& e : plan.entries) absl::StrAppend(&all, all.empty() ? "" : ", ", KvKeyString(e.key));
    return Named(s, absl::StrCat("chunk(s) ", all, " (the transport does not say which failed)"));
  }

  // 4. Checksums, where the bytes are on the host.
  if (link.HostMemory()) {
    for (size_t i = 0; i < plan.entries.size(); ++i) {
      if (!accepted[i].has_crc) continue;
      const int64_t half = plan.entries[i].HalfBytes();
      const uint32_t crc = Crc32c(regions[i].v, static_cast<size_t>(half), Crc32c(regions[i].k, static_cast<size_t>(half)));
      if (crc != accepted[i].info.crc32c) {
        return absl::DataLossError(absl::StrCat("K/V gather: ", Name(plan.entries[i]), ": CRC32C mismatch (manifest ",
                                                accepted[i].info.crc32c, ", received bytes ", crc, ")"));
      }
    }
  }
  return accepted;
}

absl::StatusOr<std::vector<ChunkKv>> GatherToHost(PeerLink& link, GatherControl& control, const GatherPlan& plan,
                                                  absl::Time deadline) {
  if (!link.HostMemory()) {
    return absl::InvalidArgumentError(absl::StrCat("K/V gather into host memory over a ", link.Transport(),
                                                   " link, whose buffers are device memory"));
  }
  std::vector<ChunkKv> out(plan.entries.size());
  GatherAllocate allocate = [&](size_t i, const ChunkManifest& m) -> absl::StatusOr<KvRegion> {
    ChunkKv& kv = out[i];
    kv.n_layer = m.info.n_layer;
    kv.n_head_kv = m.info.n_head_kv;
    kv.head_dim = m.info.head_dim;
    kv.range = TokenRange{m.info.range_begin, m.info.range_end};
    const size_t floats = static_cast<size_t>(m.info.total_bytes / 2 / sizeof(float));
    kv.k.resize(floats);
    kv.v.resize(floats);
    return KvRegion{kv.k.data(), kv.v.data()};
  };
  absl::StatusOr<std::vector<ChunkManifest>> got = GatherReceive(link, control, plan, allocate, deadline);
  if (!got.ok()) return got.status();  // `out` (partly filled) is dropped
  return out;
}

absl::StatusOr<std::vector<BackendChunk>> GatherToBackend(PeerLink& link, GatherControl& control,
                                                          const GatherPlan& plan, Backend& backend,
                                                          absl::Time deadline) {
  if (link.HostMemory() != backend.HostAddressable()) {
    return absl::InvalidArgumentError(absl::StrCat("K/V gather into ", backend.Name(), " memory over a ",
                                                   link.Transport(), " link, whose buffers are ",
                                                   link.HostMemory() ? "host" : "device", " memory"));
  }
  std::vector<BackendChunk> out(plan.entries.size());
  GatherAllocate allocate = [&](size_t i, const ChunkManifest& m) -> absl::StatusOr<KvRegion> {
    const size_t half = static_cast<size_t>(m.info.total_bytes / 2);
    absl::StatusOr<BackendBuffer> k = backend.Allocate(half);
    if (!k.ok()) return k.status();
    absl::StatusOr<BackendBuffer> v = backend.Allocate(half);
    if (!v.ok()) return v.status();
    out[i].k = *std::move(k);
    out[i].v = *std::move(v);
    return KvRegion{out[i].k.data(), out[i].v.data()};
  };
  absl::StatusOr<std::vector<ChunkManifest>> got = GatherReceive(link, control, plan, allocate, deadline);
  if (!got.ok()) return got.status();  // every buffer is freed with `out`
  for (size_t i = 0; i < out.size(); ++i) out[i].manifest = (*got)[i];
  return out;
}

}  // namespace mesa::worker
