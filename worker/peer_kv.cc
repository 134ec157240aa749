// PeerKv: the holder's stream handler and the receiver's fetcher (worker/peer_kv.h).
#include "worker/peer_kv.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "ops/log.h"
#include "worker/grpc_status.h"
#include "worker/kv_gather.h"

namespace mesa::worker {
namespace {

using Message = mesa::v1::PeerKvMessage;

// A peer that sends more than this many messages without being asked is hostile: the
// protocol never has more than two in flight.
constexpr size_t kMaxQueued = 64;
// The holder's limits on what a receiver may ask for.
constexpr int64_t kMaxTimeoutMs = int64_t{3600} * 1000;
constexpr int64_t kHelloTimeoutMs = 30000;
// How long a holder waits for the receiver to close after a refusal.
constexpr int64_t kCloseTimeoutMs = 10000;
// The most chunks one fetch may ask for (PeerKvFetcher::MaxBatch is less).
constexpr int kMaxKeysPerFetch = 64;

absl::Time After(int64_t ms) { return absl::Now() + absl::Milliseconds(ms); }

void SetStatus(const absl::Status& s, mesa::v1::PeerKvStatus* out) {
  out->set_code(static_cast<int32_t>(s.code()));
  out->set_message(std::string(s.message()));
}

absl::Status FromProto(const mesa::v1::PeerKvStatus& s) {
  if (s.code() == 0) return absl::OkStatus();
  const auto code = s.code() > 0 && s.code() <= 16 ? static_cast<absl::StatusCode>(s.code())
                                                   : absl::StatusCode::kUnknown;
  return absl::Status(code, s.message().empty() ? "(no reason given)" : s.message());
}

const char* BodyName(const Message& m) {
  switch (m.body_case()) {
    case Message::kHello: return "hello";
    case Message::kStatus: return "status";
    case Message::kGroupId: return "group_id";
    case Message::kFetch: return "fetch";
    case Message::kOffer: return "offer";
    case Message::kControl: return "control";
    case Message::kReceived: return "received";
    case Message::BODY_NOT_SET: return "an empty message";
  }
  return "an unknown message";
}

// The messages a stream's peer sent, read on a thread of their own so that every wait
// for one has a deadline. The owner ends the stream (the client closes or cancels it,
// the server handler cancels its call) before destroying this, which joins the reader.
template <typename Stream>
class Inbox {
 public:
  // `on_end` (optional) runs on the reader's thread when the stream ends: the owner
  // aborts its link there, so that a peer that goes away mid-transfer ends the transfer
  // at once rather than at its deadline.
  explicit Inbox(Stream* stream, std::function<void()> on_end = nullptr)
      : on_end_(std::move(on_end)), thread_([this, stream] {
          Message m;
          while (stream->Read(&m)) {
            std::lock_guard<std::mutex> lock(mu_);
            if (queue_.size() >= kMaxQueued) {
              flooded_ = true;
              break;
            }
            queue_.push_back(std::move(m));
            m.Clear();
            cv_.notify_all();
          }
          {
            std::lock_guard<std::mutex> lock(mu_);
            ended_ = true;
            cv_.notify_all();
          }
          if (on_end_) on_end_();
        }) {}
  ~Inbox() { thread_.join(); }
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;

  bool ended() const {
    std::lock_guard<std::mutex> lock(mu_);
    return ended_;
  }
  // The next message, DEADLINE_EXCEEDED when none came by `deadline`, UNAVAILABLE when
  // the stream ended first, DATA_LOSS after a flood.
  absl::StatusOr<Message> Next(absl::Time deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto until = absl::ToChronoTime(deadline);
    while (queue_.empty() && !ended_ && !flooded_) {
      if (deadline == absl::InfiniteFuture()) {
        cv_.wait(lock);
      } else if (cv_.wait_until(lock, until) == std::cv_status::timeout && queue_.empty() && !ended_) {
        return absl::DeadlineExceededError("no answer on the PeerKv stream in time");
      }
    }
    if (flooded_) return absl::DataLossError(absl::StrCat("the peer sent over ", kMaxQueued, " unasked messages"));
    if (queue_.empty()) return absl::UnavailableError("the peer closed the PeerKv stream");
    Message m = std::move(queue_.front());
    queue_.pop_front();
    return m;
  }
  // Waits until the peer closes its side (or `deadline`), dropping what it sends.
  void AwaitEnd(absl::Time deadline) {
    while (true) {
      absl::StatusOr<Message> m = Next(deadline);
      if (!m.ok()) return;
    }
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Message> queue_;
  bool ended_ = false;
  bool flooded_ = false;
  const std::function<void()> on_end_;
  std::thread thread_;  // last: starts after the state it uses exists
};

// The next message, which must have body `want`.
template <typename Stream>
absl::StatusOr<Message> Expect(Inbox<Stream>& inbox, Message::BodyCase want, const char* want_name,
                               absl::Time deadline) {
  absl::StatusOr<Message> m = inbox.Next(deadline);
  if (!m.ok()) return m.status();
  if (m->body_case() != want) {
    return absl::DataLossError(absl::StrCat("expected ", want_name, " on the PeerKv stream, got ", BodyName(*m)));
  }
  return m;
}

// The gather protocol's control plane over the stream.
template <typename Stream>
class StreamControl final : public GatherControl {
 public:
  StreamControl(Stream* stream, Inbox<Stream>& inbox) : stream_(stream), inbox_(inbox) {}
  absl::Status Send(int, const std::string& message, absl::Time) override {
    Message m;
    m.set_control(message);
    if (!stream_->Write(m)) return absl::UnavailableError("the PeerKv stream broke during the gather");
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Receive(int, absl::Time deadline) override {
    absl::StatusOr<Message> m = Expect(inbox_, Message::kControl, "a control message", deadline);
    if (!m.ok()) return m.status();
    return std::move(*m->mutable_control());
  }

 private:
  Stream* stream_;
  Inbox<Stream>& inbox_;
};

// The plan both ends build from the holder's offer (keys[i] with infos[i], in order):
// the receiver is rank 0, the holder rank 1.
GatherPlan PlanFor(absl::Span<const KvKey> keys, absl::Span<const KvManifestInfo> infos) {
  GatherPlan plan;
  plan.receiver = 0;
  for (size_t i = 0; i < keys.size() && i < infos.size(); ++i) {
    const KvManifestInfo& m = infos[i];
    GatherEntry e;
    e.key = keys[i];
    e.holder = 1;
    e.n_layer = m.n_layer;
    e.n_head_kv = m.n_head_kv;
    e.head_dim = m.head_dim;
    e.range_begin = m.range_begin;
    e.range_end = m.range_end;
    e.dtype = m.dtype;
    plan.entries.push_back(std::move(e));
  }
  return plan;
}

// The keys of one gather, for messages: "job/0/1/0" or "job/0/1/0 and 3 more".
std::string KeysString(absl::Span<const KvKey> keys) {
  if (keys.empty()) return "(no keys)";
  return keys.size() == 1 ? KvKeyString(keys[0])
                          : absl::StrCat(KvKeyString(keys[0]), " and ", keys.size() - 1, " more");
}

template <typename Stream>
bool WriteStatus(Stream* stream, const absl::Status& s) {
  Message m;
  SetStatus(s, m.mutable_status());
  return stream->Write(m);
}

// A chunk's K and V in `staging` memory, copied in from the host (the holder's side of a
// device-memory link). The buffers live as long as this.
struct StagedChunk {
  BackendBuffer k, v;
};
absl::StatusOr<StagedChunk> StageIn(Backend& staging, const ChunkKv& kv) {
  const size_t half = kv.k.size() * sizeof(float);
  StagedChunk out;
  for (auto [buffer, host] : {std::pair{&out.k, kv.k.data()}, std::pair{&out.v, kv.v.data()}}) {
    absl::StatusOr<BackendBuffer> b = staging.Allocate(half);
    if (!b.ok()) return b.status();
    *buffer = *std::move(b);
    staging.CopyIn(buffer->data(), host, half);
  }
  staging.Synchronize();
  if (absl::Status s = staging.status(); !s.ok()) return s;
  return out;
}

}  // namespace

// --- holder ------------------------------------------------------------------------------

grpc::Status ServePeerKv(grpc::ServerContext* ctx, PeerKvStream* stream, PeerEndpoints* endpoints,
                         const KvStreamingWorkerService::Lookup& lookup, const std::shared_ptr<LinkLimit>& limit) {
  // The link, once made, is aborted from the reader's thread if the stream ends (the
  // receiver went away) while a transfer is in progress.
  std::mutex link_mu;
  PeerLink* live_link = nullptr;  // guarded by link_mu
  bool stream_ended = false;      // guarded by link_mu
  Inbox<PeerKvStream> inbox(stream, [&] {
    std::lock_guard<std::mutex> lock(link_mu);
    stream_ended = true;
    if (live_link) live_link->Abort(absl::UnavailableError("the receiver closed the PeerKv stream"));
  });
  PeerEndpoint endpoint;  // before the link: destroyed after it
  std::unique_ptr<PeerLink> link;
  // Ends the call: the link with it, and the reader (cancelling the call if the receiver
  // has not closed its side, so that the reader's Read returns).
  auto end = [&](const absl::Status& s) {
    if (link) link->Abort(absl::CancelledError("the PeerKv stream ended"));
    if (!inbox.ended()) ctx->TryCancel();
    {
      std::lock_guard<std::mutex> lock(link_mu);
      live_link = nullptr;  // the reader may still end after this: not with this link
    }
    return ToGrpcStatus(s);
  };
  // A refusal the receiver reads before it closes the stream; `busy`: for want of a free
  // link (--kv-links), so the receiver asks again at its next fetch.
  auto refuse = [&](const absl::Status& why, bool busy = false) {
    Message m;
    SetStatus(why, m.mutable_status());
    m.mutable_status()->set_busy(busy);
    if (stream->Write(m)) inbox.AwaitEnd(After(kCloseTimeoutMs));
    return end(absl::OkStatus());
  };
  // This link's place under --kv-links. Closing it to make room cancels the call (the
  // receiver sees the stream end while the pair idles, and makes a new link at its
  // next fetch); `call` keeps the closer off a context whose handler has returned.
  struct Call {
    std::mutex mu;
    grpc::ServerContext* ctx;  // guarded by mu; null once the handler returns
  };
  auto call = std::make_shared<Call>();
  call->ctx = ctx;
  std::shared_ptr<LinkLimit::Place> place;
  struct Leave {
    std::shared_ptr<Call> call;
    const std::shared_ptr<LinkLimit>& limit;
    std::shared_ptr<LinkLimit::Place>& place;
    ~Leave() {
      if (place) limit->Release(*place);
      std::lock_guard<std::mutex> lock(call->mu);
      call->ctx = nullptr;
    }
  } leave{call, limit, place};

  absl::StatusOr<Message> hello = Expect(inbox, Message::kHello, "hello", After(kHelloTimeoutMs));
  if (!hello.ok()) return end(hello.status());
  const std::string& wanted = hello->hello().transport();
  if (endpoints == nullptr || endpoints->Name() != wanted) {
    return refuse(absl::FailedPreconditionError(absl::StrCat(
        "this worker has no ", wanted.empty() ? "(unnamed)" : wanted, " links (",
        endpoints == nullptr ? "it moves K/V over FetchKv only" : absl::StrCat("its links are ", endpoints->Name()),
        ")")));
  }
  if (limit) {
    absl::StatusOr<std::shared_ptr<LinkLimit::Place>> taken = limit->Take(ctx->peer(), [call] {
      std::lock_guard<std::mutex> lock(call->mu);
      if (call->ctx) call->ctx->TryCancel();
    });
    if (!taken.ok()) return refuse(taken.status(), /*busy=*/true);
    place = *std::move(taken);
  }
  absl::StatusOr<PeerEndpoint> made = endpoints->Make();
  if (!made.ok()) return refuse(made.status());
  endpoint = *std::move(made);
  // A receiver that says `received` after each gather lets this side know when a link
  // it has sent on idles (a send completes before the receiver has read everything).
  const bool acks = hello->hello().acks();
  {
    Message accept;
    accept.mutable_status()->set_acks(acks);
    if (!stream->Write(accept)) return end(absl::OkStatus());
  }
  const int64_t join_ms = std::clamp<int64_t>(hello->hello().join_timeout_ms(), 1, kMaxTimeoutMs);
  absl::StatusOr<Message> id_msg = Expect(inbox, Message::kGroupId, "group_id", After(join_ms));
  if (!id_msg.ok()) return end(id_msg.status());
  PeerGroupId id;
  if (id_msg->group_id().size() != id.bytes.size()) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("a group id of ", id_msg->group_id().size(), " bytes (", id.bytes.size(), " expected)")));
  }
  std::memcpy(id.bytes.data(), id_msg->group_id().data(), id.bytes.size());
  absl::StatusOr<std::unique_ptr<PeerLink>> joined = endpoint.transport->Join(id, 1, 2, After(join_ms));
  if (!joined.ok()) return refuse(joined.status());
  link = *std::move(joined);
  {
    std::lock_guard<std::mutex> lock(link_mu);
    if (stream_ended) return end(absl::OkStatus());
    live_link = link.get();
  }
  if (!link->HostMemory() && endpoint.staging == nullptr) {
    return refuse(absl::InternalError(absl::StrCat("a ", link->Transport(),
                                                   " link over device memory without a staging backend")));
  }
  if (!WriteStatus(stream, absl::OkStatus())) return end(absl::OkStatus());

  StreamControl<PeerKvStream> control(stream, inbox);
  bool unacked = false;  // bytes sent that the receiver has not said it has
  while (true) {
    // Idle (closable to make room) until the receiver asks for a chunk or closes the
    // stream; in use still while bytes it was sent may be in flight.
    if (place && !unacked) limit->End(*place);
    absl::StatusOr<Message> m = inbox.Next(absl::InfiniteFuture());
    if (!m.ok()) return end(absl::IsUnavailable(m.status()) ? absl::OkStatus() : m.status());
    if (m->body_case() == Message::kReceived && unacked) {
      unacked = false;
      continue;
    }
    if (m->body_case() != Message::kFetch) {
      return end(absl::DataLossError(absl::StrCat("expected fetch on the PeerKv stream, got ", BodyName(*m))));
    }
    unacked = false;  // a receiver without acks: the last gather is over, it asks again
    if (place && !limit->Begin(*place)) {
      // Closed to make room just as this fetch came (the call is being cancelled): the
      // receiver sees the stream end before an offer, nothing moved, and asks again
      // over a new link.
      return end(absl::OkStatus());
    }
    if (m->fetch().more_keys_size() >= kMaxKeysPerFetch) {
      Message offer;
      SetStatus(absl::InvalidArgumentError(absl::StrCat("a fetch of ", m->fetch().more_keys_size() + 1,
                                                        " chunks (at most ", kMaxKeysPerFetch, ")")),
                offer.mutable_offer()->mutable_status());
      if (!stream->Write(offer)) return end(absl::OkStatus());
      continue;
    }
    std::vector<KvKey> keys = {worker::FromProto(m->fetch().key())};
    for (const auto& k : m->fetch().more_keys()) keys.push_back(worker::FromProto(k));
    const absl::Time deadline = After(std::clamp<int64_t>(m->fetch().timeout_ms(), 1, kMaxTimeoutMs));
    // Every chunk found (and staged, over device memory) before the offer, or the first
    // reason not: a refusal keeps the pair in step (no gather starts).
    std::vector<KvStreamingWorkerService::Held> held;  // keeps the chunks alive during the gather
    std::vector<HeldChunk> chunks;
    std::vector<StagedChunk> staged(keys.size());
    absl::Status found;
    for (size_t i = 0; i < keys.size() && found.ok(); ++i) {
      absl::StatusOr<KvStreamingWorkerService::Held> h = lookup(keys[i]);
      if (!h.ok() || h->kv == nullptr) {
        found = h.ok() ? absl::NotFoundError(absl::StrCat("no K/V held for ", KvKeyString(keys[i]))) : h.status();
        break;
      }
      held.push_back(*std::move(h));
      chunks.push_back(HeldFromChunkKv(keys[i], *held.back().kv, held.back().crc32c));
      if (!link->HostMemory()) {
        // The bytes leave from device memory; the manifest keeps the host's CRC32C, which
        // the receiver checks once it has copied them back out.
        absl::StatusOr<StagedChunk> in = StageIn(*endpoint.staging, *held.back().kv);
        if (!in.ok()) {
          found = absl::Status(in.status().code(), absl::StrCat("staging ", KvKeyString(keys[i]), " on ",
                                                                endpoint.staging->Name(), ": ", in.status().message()));
          break;
        }
        staged[i] = *std::move(in);
        chunks.back().k = staged[i].k.data();
        chunks.back().v = staged[i].v.data();
      }
    }
    Message offer;
    SetStatus(found, offer.mutable_offer()->mutable_status());
    if (!found.ok()) {
      if (!stream->Write(offer)) return end(absl::OkStatus());
      continue;
    }
    std::vector<KvManifestInfo> infos;
    for (size_t i = 0; i < chunks.size(); ++i) {
      infos.push_back(chunks[i].manifest.info);
      ToProto(chunks[i].manifest.info,
              i == 0 ? offer.mutable_offer()->mutable_manifest() : offer.mutable_offer()->add_more_manifests());
    }
    if (!stream->Write(offer)) return end(absl::OkStatus());
    const absl::Status sent = GatherSend(*link, control, PlanFor(keys, infos), chunks, deadline);
    // A refused or failed gather leaves the two ends out of step or the link dead: the
    // receiver drops the pair, and so does this side.
    if (!sent.ok()) return end(sent);
    unacked = true;
  }
}

// --- receiver ------------------------------------------------------------------------------

using ClientStream = grpc::ClientReaderWriter<Message, Message>;

// One pair's stream and link; fetches take turns (mu).
class PeerKvFetcher::Session {
 public:
  std::mutex mu;
  bool ready = false;  // the link is up (guarded by mu)
  PeerEndpoint endpoint;  // before the link: destroyed after it
  std::unique_ptr<grpc::ClientContext> ctx;  // one per stream (a context serves one call)
  std::unique_ptr<ClientStream> stream;
  std::unique_ptr<Inbox<ClientStream>> inbox;
  std::unique_ptr<PeerLink> link;
  std::mutex link_mu;
  PeerLink* live_link = nullptr;  // guarded by link_mu: what the reader aborts
  // The pair's place under --kv-links (limit null: no bound; place null: no link).
  std::shared_ptr<LinkLimit> limit;
  std::shared_ptr<LinkLimit::Place> place;  // guarded by mu
  uint64_t generation = 0;                  // guarded by mu: links made so far
  bool acks = false;                        // the holder wants `received` after each gather

  explicit Session(std::shared_ptr<LinkLimit> l) : limit(std::move(l)) {}
  ~Session() { Close(absl::CancelledError("the session closed")); }
  // Starts the stream and its reader, which aborts the link (once there is one) when the
  // holder closes the stream or goes away: a transfer in progress then fails at once.
  void Open(mesa::v1::WorkerService::Stub& stub) {
    ctx = std::make_unique<grpc::ClientContext>();
    stream = stub.PeerKv(ctx.get());
    inbox = std::make_unique<Inbox<ClientStream>>(stream.get(), [this] {
      std::lock_guard<std::mutex> lock(link_mu);
      if (live_link) live_link->Abort(absl::UnavailableError("the holder closed the PeerKv stream"));
    });
  }
  void SetLink(std::unique_ptr<PeerLink> l) {
    link = std::move(l);
    std::lock_guard<std::mutex> lock(link_mu);
    live_link = link.get();
    if (inbox->ended()) link->Abort(absl::UnavailableError("the holder closed the PeerKv stream"));
  }
  // Ends the link and the stream (the holder sees both end).
  void Close(const absl::Status& why) {
    if (link) link->Abort(why);
    {
      std::lock_guard<std::mutex> lock(link_mu);
      live_link = nullptr;
    }
    if (stream) {
      ctx->TryCancel();
      inbox.reset();  // joins the reader, whose Read now returns
      stream->Finish();
      stream.reset();
    }
    link.reset();
    endpoint = PeerEndpoint{};
    ready = false;
    acks = false;
    if (place) {
      limit->Release(*place);
      place.reset();
    }
  }
  // Why the stream ended, as the call's status says (an older holder without PeerKv:
  // UNIMPLEMENTED), or `fallback` when it has not ended.
  absl::Status EndStatus(const absl::Status& fallback) {
    if (!stream || !inbox || !inbox->ended()) return fallback;
    const grpc::Status s = stream->Finish();
    inbox.reset();
    stream.reset();
    return s.ok() ? fallback : FromGrpcStatus(s);
  }
};

PeerKvFetcher::PeerKvFetcher(PeerKvFetcherOptions options)
    : options_(std::move(options)),
      transport_name_(options_.endpoints ? options_.endpoints->Name() : ""),
      counters_(options_.metrics ? std::make_unique<KvLinkMetrics>(*options_.metrics) : nullptr) {}

PeerKvFetcher::~PeerKvFetcher() {
  absl::flat_hash_map<std::string, std::shared_ptr<Session>> sessions;
  {
    std::lock_guard<std::mutex> lock(mu_);
    sessions.swap(sessions_);
  }
  for (auto& [address, s] : sessions) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->Close(absl::CancelledError("the fetcher closed"));
  }
}

void PeerKvFetcher::CountLinkLost() {
  links_lost_.fetch_add(1);
  if (counters_) counters_->links_lost.Increment();
}

int PeerKvFetcher::MaxBatch() const { return std::clamp(options_.max_batch, 1, kMaxKeysPerFetch); }

PeerKvFetcher::Counts PeerKvFetcher::counts() const {
  return Counts{peer_fetches_.load(), fallback_fetches_.load(), links_made_.load(), links_lost_.load()};
}

std::shared_ptr<grpc::Channel> PeerKvFetcher::ChannelFor(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<grpc::Channel>& channel = channels_[address];
  if (channel == nullptr) {
    channel = grpc::CreateCustomChannel(
        address, options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials(),
        options_.channel_args);
  }
  return channel;
}

absl::StatusOr<std::vector<KvFetcher::Fetched>> PeerKvFetcher::Fallback(const std::string& address,
                                                                        absl::Span<const KvKey> keys,
                                                                        int64_t timeout_ms, const absl::Status& why) {
  if (options_.fallback == nullptr) {
    return absl::Status(why.code(), absl::StrCat("PeerKv ", KeysString(keys), " from ", address, " over ",
                                                 transport_name_, ": no link (", why.message(),
                                                 ") and no fallback"));
  }
  fallback_fetches_.fetch_add(static_cast<int64_t>(keys.size()));
  if (counters_) counters_->fallback_chunks.Increment(static_cast<double>(keys.size()));
  return options_.fallback->FetchMany(address, keys, std::max<int64_t>(1, timeout_ms));
}

absl::Status PeerKvFetcher::MakeLink(const std::shared_ptr<Session>& pair, const std::string& address,
                                     absl::Time deadline, bool* busy) {
  *busy = false;
  Session& session = *pair;
  const uint64_t generation = ++session.generation;
  if (session.limit) {
    // A place under --kv-links first. Its closer (run by whoever needs the room once
    // this link idles) waits for the pair's turn and closes the link unless the pair
    // has made another since.
    std::weak_ptr<Session> weak = pair;
    absl::StatusOr<std::shared_ptr<LinkLimit::Place>> place = session.limit->Take(address, [weak, generation] {
      std::shared_ptr<Session> s = weak.lock();
      if (s == nullptr) return;
      std::lock_guard<std::mutex> lock(s->mu);
      if (s->generation == generation && s->ready) {
        s->Close(absl::ResourceExhaustedError("closed to make room for another link (--kv-links)"));
      }
    });
    if (!place.ok()) {
      *busy = true;
      return place.status();
    }
    session.place = *std::move(place);
  }
  // Making the link: at most half of the time left, so that the fallback keeps the rest.
  const absl::Time now = absl::Now();
  const absl::Time join_deadline = std::min(deadline, now + std::max(absl::Seconds(1), (deadline - now) / 2));
  session.Open(*mesa::v1::WorkerService::NewStub(ChannelFor(address)));
  Message hello;
  hello.mutable_hello()->set_transport(transport_name_);
  hello.mutable_hello()->set_acks(true);
  hello.mutable_hello()->set_join_timeout_ms(
      std::max<int64_t>(1, absl::ToInt64Milliseconds(join_deadline - absl::Now())));
  if (!session.stream->Write(hello)) return session.EndStatus(absl::UnavailableError("the PeerKv stream broke"));
  absl::StatusOr<Message> accepted = Expect(*session.inbox, Message::kStatus, "the hello's answer", join_deadline);
  if (!accepted.ok()) return session.EndStatus(accepted.status());
  if (absl::Status s = FromProto(accepted->status()); !s.ok()) {
    *busy = accepted->status().busy();
    return s;
  }
  session.acks = accepted->status().acks();
  absl::StatusOr<PeerEndpoint> endpoint = options_.endpoints->Make();
  if (!endpoint.ok()) return endpoint.status();
  session.endpoint = *std::move(endpoint);
  PeerTransport& transport = *session.endpoint.transport;
  absl::StatusOr<PeerGroupId> id = transport.NewGroupId();
  if (!id.ok()) return id.status();
  Message id_msg;
  id_msg.set_group_id(std::string(reinterpret_cast<const char*>(id->bytes.data()), id->bytes.size()));
  if (!session.stream->Write(id_msg)) {
    (void)transport.Join(*id, 0, 2, absl::Now());  // gives back what NewGroupId holds
    return session.EndStatus(absl::UnavailableError("the PeerKv stream broke"));
  }
  absl::StatusOr<std::unique_ptr<PeerLink>> link = transport.Join(*id, 0, 2, join_deadline);
  // The holder's word on its side of the join, whatever happened on this one.
  absl::StatusOr<Message> joined = Expect(*session.inbox, Message::kStatus, "the join's answer",
                                          link.ok() ? join_deadline : absl::Now() + absl::Seconds(1));
  if (joined.ok()) {
    if (absl::Status s = FromProto(joined->status()); !s.ok()) return s;
  }
  if (!link.ok()) return link.status();
  if (!joined.ok()) return joined.status();
  if (!(*link)->HostMemory() && session.endpoint.staging == nullptr) {
    return absl::InternalError(absl::StrCat("a ", (*link)->Transport(),
                                            " link over device memory without a staging backend"));
  }
  session.SetLink(*std::move(link));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const ChunkKv>> PeerKvFetcher::FetchWithCrc(const std::string& address,
                                                                           const KvKey& key, int64_t timeout_ms,
                                                                           std::optional<uint32_t>* crc32c) {
  crc32c->reset();
  absl::StatusOr<std::vector<Fetched>> got = FetchMany(address, absl::MakeConstSpan(&key, 1), timeout_ms);
  if (!got.ok()) return got.status();
  *crc32c = got->front().crc32c;
  return std::move(got->front().kv);
}

absl::StatusOr<std::vector<KvFetcher::Fetched>> PeerKvFetcher::FetchMany(const std::string& address,
                                                                         absl::Span<const KvKey> keys,
                                                                         int64_t timeout_ms) {
  const std::string what = absl::StrCat("PeerKv ", KeysString(keys), " from ", address, " over ", transport_name_);
  if (keys.empty() || keys.size() > static_cast<size_t>(kMaxKeysPerFetch)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": 1 to ", kMaxKeysPerFetch, " keys per fetch"));
  }
  if (timeout_ms <= 0) return absl::InvalidArgumentError(absl::StrCat(what, ": timeout_ms must be positive"));
  if (options_.endpoints == nullptr) return absl::FailedPreconditionError(absl::StrCat(what, ": no peer links"));
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + absl::Milliseconds(timeout_ms);
  auto left_ms = [&] { return absl::ToInt64Milliseconds(deadline - absl::Now()); };

  std::shared_ptr<Session> session;
  std::unique_lock<std::mutex> turn;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (auto it = no_peer_until_.find(address); it != no_peer_until_.end()) {
        if (absl::Now() < it->second) {
          // Refused recently: the fallback, without asking again.
          lock.unlock();
          return Fallback(address, keys, timeout_ms, absl::FailedPreconditionError("refused recently"));
        }
        no_peer_until_.erase(it);
      }
      std::shared_ptr<Session>& s = sessions_[address];
      if (s == nullptr) s = std::make_shared<Session>(options_.link_limit);
      session = s;
    }
    turn = std::unique_lock<std::mutex>(session->mu);
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = sessions_.find(address); it != sessions_.end() && it->second == session) break;
    turn.unlock();  // the pair was dropped while this fetch waited its turn: look again
  }
  // Drops this pair's session (the next fetch makes a new one).
  auto forget = [&](const absl::Status& why) {
    session->Close(why);
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = sessions_.find(address); it != sessions_.end() && it->second == session) sessions_.erase(it);
  };

  // The pair's place under --kv-links is in use from here until this fetch returns
  // (a failure that drops the pair releases it instead).
  struct EndUse {
    Session* s;
    ~EndUse() {
      if (s->limit && s->place) s->limit->End(*s->place);
    }
  } end_use{session.get()};

  // The link, and the holder's offer for `keys` on it. A link the holder closes before
  // it offers anything (it restarted, or closed the link to make room for another just
  // as this fetch asked: nothing moved) is made anew once, then the fallback is asked.
  absl::StatusOr<Message> offer;
  for (int attempt = 0;; ++attempt) {
    if (session->ready && session->place && !session->limit->Begin(*session->place)) {
      // Closed to make room for another link while it idled (its closer may not have
      // had the turn yet): made anew below.
      session->Close(absl::ResourceExhaustedError("closed to make room for another link (--kv-links)"));
    }
    if (session->ready && session->inbox->ended()) {
      // The holder closed the pair while it was idle (it restarted, a connection broke,
      // it needed the room): make a new one rather than fail a fetch that never started.
      session->Close(absl::UnavailableError("the holder closed the PeerKv stream"));
      CountLinkLost();
    }
    if (!session->ready) {
      bool busy = false;  // out of links here or at the holder, not refused
      if (absl::Status s = MakeLink(session, address, deadline, &busy); !s.ok()) {
        if (options_.log) {
          ops::LogInfo("kv.link_fallback", {{"peer", address}, {"transport", transport_name_}, {"why", s},
                                            {"retry_in_ms", busy ? 0 : options_.retry_peer_ms}});
        }
        forget(s);
        if (counters_) counters_->links_refused.Increment();
        if (!busy) {
          // Refused or impossible: not asked again for a while. Out of room (here or at
          // the holder) is for now only: the next fetch asks again.
          std::lock_guard<std::mutex> lock(mu_);
          no_peer_until_[address] = absl::Now() + absl::Milliseconds(options_.retry_peer_ms);
        }
        return Fallback(address, keys, left_ms(), s);
      }
      session->ready = true;
      links_made_.fetch_add(1);
      if (counters_) counters_->links_made.Increment();
      if (options_.log) ops::LogInfo("kv.link", {{"peer", address}, {"transport", transport_name_}});
    }
    Message ask;
    ToProto(keys[0], ask.mutable_fetch()->mutable_key());
    for (size_t i = 1; i < keys.size(); ++i) ToProto(keys[i], ask.mutable_fetch()->add_more_keys());
    ask.mutable_fetch()->set_timeout_ms(std::max<int64_t>(1, left_ms()));
    const bool sent = session->stream->Write(ask);
    if (sent) {
      offer = Expect(*session->inbox, Message::kOffer, "an offer", deadline);
    } else {
      offer = session->EndStatus(absl::UnavailableError("the PeerKv stream broke before the fetch was sent"));
    }
    const bool ended = session->inbox == nullptr || session->inbox->ended();
    if (offer.ok() ||
        (sent && !(ended && (absl::IsUnavailable(offer.status()) || absl::IsCancelled(offer.status()))))) {
      break;
    }
    // The holder ended the pair before it offered anything.
    CountLinkLost();
    if (attempt > 0) {
      // Twice: the holder is going away, or its links are in such demand that they
      // close as soon as they idle. Nothing moved: the fallback decides.
      const absl::Status why = offer.status();
      forget(why);
      return Fallback(address, keys, left_ms(), why);
    }
    session->Close(offer.status());
  }

  auto fail = [&](const absl::Status& s) {
    CountLinkLost();
    if (options_.log) {
      ops::LogWarn("kv.link_lost", {{"peer", address}, {"transport", transport_name_}, {"key", KeysString(keys)},
                                    {"why", s}});
    }
    forget(s);
    return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
  };
  if (!offer.ok()) return fail(offer.status());
  if (absl::Status s = FromProto(offer->offer().status()); !s.ok()) {
    // Not held there: the pair stays in step (no gather started).
    return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
  }
  const size_t n = keys.size();
  if (static_cast<size_t>(offer->offer().more_manifests_size()) + 1 != n) {
    return fail(absl::DataLossError(absl::StrCat("an offer of ", offer->offer().more_manifests_size() + 1,
                                                 " manifests for ", n, " keys")));
  }
  std::vector<KvManifestInfo> infos = {worker::FromProto(offer->offer().manifest())};
  for (const auto& m : offer->offer().more_manifests()) infos.push_back(worker::FromProto(m));
  for (size_t i = 0; i < n; ++i) {
    if (infos[i].total_bytes > options_.max_kv_bytes) {
      return fail(absl::ResourceExhaustedError(absl::StrCat(KvKeyString(keys[i]), " is ", infos[i].total_bytes,
                                                            " bytes, more than the ", options_.max_kv_bytes,
                                                            " accepted")));
    }
  }
  const GatherPlan plan = PlanFor(keys, infos);
  if (absl::Status s = CheckGatherPlan(plan, 2); !s.ok()) return fail(absl::DataLossError(s.message()));

  std::vector<ChunkKv> kvs(n);
  for (size_t i = 0; i < n; ++i) {
    kvs[i].n_layer = infos[i].n_layer;
    kvs[i].n_head_kv = infos[i].n_head_kv;
    kvs[i].head_dim = infos[i].head_dim;
    kvs[i].range = TokenRange{infos[i].range_begin, infos[i].range_end};
  }
  Backend* staging = session->link->HostMemory() ? nullptr : session->endpoint.staging.get();
  std::vector<StagedChunk> staged(n);  // a device-memory link's landing places
  GatherAllocate allocate = [&](size_t i, const ChunkManifest& m) -> absl::StatusOr<KvRegion> {
    const size_t floats = static_cast<size_t>(m.info.total_bytes / 2 / static_cast<int64_t>(sizeof(float)));
    for (std::vector<float>* half : {&kvs[i].k, &kvs[i].v}) {
      *half = options_.kv_pool ? options_.kv_pool->Take(floats) : std::vector<float>();
      half->resize(floats);  // a fresh pool vector is empty: this sizes it
    }
    if (staging == nullptr) return KvRegion{kvs[i].k.data(), kvs[i].v.data()};
    for (BackendBuffer* b : {&staged[i].k, &staged[i].v}) {
      absl::StatusOr<BackendBuffer> got = staging->Allocate(floats * sizeof(float));
      if (!got.ok()) return got.status();
      *b = *std::move(got);
    }
    return KvRegion{staged[i].k.data(), staged[i].v.data()};
  };
  auto give_back = [&] {
    if (!options_.kv_pool) return;
    for (ChunkKv& kv : kvs) {
      options_.kv_pool->Give(std::move(kv.k));
      options_.kv_pool->Give(std::move(kv.v));
    }
  };
  StreamControl<ClientStream> control(session->stream.get(), *session->inbox);
  absl::StatusOr<std::vector<ChunkManifest>> got = GatherReceive(*session->link, control, plan, allocate, deadline);
  // `staged` goes before a failure drops the pair: its buffers belong to the pair's
  // staging backend.
  if (!got.ok()) {
    give_back();
    staged.clear();
    return fail(got.status());
  }
  if (session->acks) {
    // The bytes are in: the holder may close the link to make room from now on. A broken
    // stream shows at the next fetch.
    Message received;
    received.set_received(true);
    (void)session->stream->Write(received);
  }
  if (staging != nullptr) {
    // Out of device memory, then the check the link could not make: the holder's CRC32C
    // of its host bytes against ours.
    for (size_t i = 0; i < n; ++i) {
      const size_t half = kvs[i].k.size() * sizeof(float);
      staging->CopyOut(kvs[i].k.data(), staged[i].k.data(), half);
      staging->CopyOut(kvs[i].v.data(), staged[i].v.data(), half);
    }
    staging->Synchronize();
    absl::Status s = staging->status();
    for (size_t i = 0; i < n && s.ok(); ++i) {
      const ChunkManifest& m = (*got)[i];
      if (!m.has_crc) continue;
      const size_t half = kvs[i].k.size() * sizeof(float);
      const uint32_t crc = Crc32c(kvs[i].v.data(), half, Crc32c(kvs[i].k.data(), half));
      if (crc != m.info.crc32c) {
        s = absl::DataLossError(absl::StrCat("CRC32C mismatch of ", KvKeyString(keys[i]), " after staging out of ",
                                             staging->Name(), " (manifest ", m.info.crc32c, ", received bytes ", crc,
                                             ")"));
      }
    }
    staged.clear();
    if (!s.ok()) {
      give_back();
      return fail(s);
    }
  }
  peer_fetches_.fetch_add(static_cast<int64_t>(n));
  if (counters_) counters_->link_chunks.Increment(static_cast<double>(n));
  std::vector<Fetched> out(n);
  for (size_t i = 0; i < n; ++i) {
    // Checked against the bytes: by the gather over host memory, after staging out here.
    if ((*got)[i].has_crc) out[i].crc32c = (*got)[i].info.crc32c;
    out[i].kv = options_.kv_pool ? KvBufferPool::Share(options_.kv_pool, std::move(kvs[i]))
                                 : std::make_shared<const ChunkKv>(std::move(kvs[i]));
  }
  return out;
}

}  // namespace mesa::worker
