// K/V over gRPC (worker/grpc_kv.h): the FetchKv stream writer and the GrpcKvFetcher
// client. Every check on the bytes lives in KvAssembler (worker/kv_wire.h); this file
// only moves messages, keeps deadlines and names the peer in errors.
//
// Both ends keep the piece bytes where they already are. The sender hands gRPC a slice
// of the chunk's own memory for each piece (RawMessages); the receiver reads each
// message as the slices it arrived in, finds the piece bytes inside protobuf's encoding
// of KvMessage.data (ReadPiece) and copies them straight into the cache being assembled.
// Anything not in that exact form (the manifest, another encoder's field order) is
// parsed by protobuf, so any sender of the proto's KvMessage stream is understood.
#include "worker/grpc_kv.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <optional>
#include <utility>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"
#include "worker/grpc_status.h"

namespace mesa::worker {
namespace {

using mesa::v1::KvMessage;
using Bytes = absl::Span<const uint8_t>;

absl::Status WithContext(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

const char* FetchKvMethod() {
  static const std::string name =
      absl::StrCat("/", mesa::v1::WorkerService::service_full_name(), "/FetchKv");
  return name.c_str();
}

// ---- The wire form of a piece: KvMessage{data: KvData{offset, data}} as protobuf writes it ----

constexpr uint8_t kDataTag = (2 << 3) | 2;    // KvMessage.data, KvData.data: field 2, bytes
constexpr uint8_t kOffsetTag = (1 << 3) | 0;  // KvData.offset: field 1, varint (absent when 0)
constexpr size_t kMaxVarint = 10;

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  for (; v >= 0x80; v >>= 7) ++n;
  return n;
}

uint8_t* PutVarint(uint64_t v, uint8_t* p) {
  for (; v >= 0x80; v >>= 7) *p++ = static_cast<uint8_t>(v | 0x80);
  *p++ = static_cast<uint8_t>(v);
  return p;
}

// A received message's bytes, read front to back across the slices they arrived in.
class SliceReader {
 public:
  explicit SliceReader(const std::vector<grpc::Slice>& slices) : slices_(slices) {
    for (const grpc::Slice& s : slices) left_ += s.size();
  }
  size_t left() const { return left_; }
  bool Byte(uint8_t* b) {
    for (; slice_ < slices_.size(); ++slice_, at_ = 0) {
      if (at_ < slices_[slice_].size()) {
        *b = slices_[slice_].begin()[at_++];
        --left_;
        return true;
      }
    }
    return false;
  }
  bool Varint(uint64_t* v) {
    *v = 0;
    uint8_t b = 0x80;
    for (int shift = 0; shift < 7 * static_cast<int>(kMaxVarint) && (b & 0x80); shift += 7) {
      if (!Byte(&b)) return false;
      *v |= uint64_t{b & 0x7fu} << shift;
    }
    return (b & 0x80) == 0;
  }
  // What is left, as views into the slices.
  void Rest(std::vector<Bytes>* parts) {
    parts->clear();
    for (; slice_ < slices_.size(); ++slice_, at_ = 0) {
      const grpc::Slice& s = slices_[slice_];
      if (at_ < s.size()) parts->emplace_back(s.begin() + at_, s.size() - at_);
    }
    left_ = 0;
  }

 private:
  const std::vector<grpc::Slice>& slices_;
  size_t slice_ = 0, at_ = 0, left_ = 0;
};

// A piece in exactly the form protobuf (and RawMessages) writes it: the KvMessage.data
// field alone, holding KvData.offset (if not 0) and then KvData.data, which ends the
// message. Sets the offset and views of the bytes; false for anything else.
bool ReadPiece(const std::vector<grpc::Slice>& slices, int64_t* offset, std::vector<Bytes>* parts) {
  SliceReader in(slices);
  uint8_t tag = 0;
  uint64_t size = 0, value = 0;
  if (!in.Byte(&tag) || tag != kDataTag || !in.Varint(&size) || size != in.left()) return false;
  *offset = 0;
  while (in.Byte(&tag)) {
    if (tag == kOffsetTag && in.Varint(&value) && static_cast<int64_t>(value) >= 0) {
      *offset = static_cast<int64_t>(value);
    } else if (tag == kDataTag && in.Varint(&size) && size == in.left() && size > 0) {
      in.Rest(parts);
      return true;
    } else {
      return false;
    }
  }
  return false;
}

}  // namespace

namespace {

// One received message, parsed: a manifest, or a piece whose bytes are views into the
// received slices (or into `msg` when protobuf had to parse it). Keeps what it views.
struct ReceivedMessage {
  std::vector<grpc::Slice> slices;
  KvMessage msg;
  std::optional<KvManifestInfo> manifest;
  int64_t offset = 0;
  std::vector<Bytes> parts;
};

absl::Status Parse(const grpc::ByteBuffer& buffer, ReceivedMessage& m) {
  if (!buffer.Dump(&m.slices).ok()) return absl::DataLossError("an unreadable K/V message");
  if (ReadPiece(m.slices, &m.offset, &m.parts)) return absl::OkStatus();
  grpc::ByteBuffer copy(buffer);  // the parser consumes its input
  grpc::ProtoBufferReader reader(&copy);
  if (!m.msg.ParseFromZeroCopyStream(&reader)) {
    return absl::DataLossError("a K/V message that does not parse as a KvMessage");
  }
  switch (m.msg.part_case()) {
    case KvMessage::kManifest:
      m.manifest = FromProto(m.msg.manifest());
      return absl::OkStatus();
    case KvMessage::kData: {
      const std::string& bytes = m.msg.data().data();
      m.offset = m.msg.data().offset();
      m.parts = {Bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())};
      return absl::OkStatus();
    }
    case KvMessage::PART_NOT_SET:
      break;
  }
  return absl::DataLossError("an empty message in the K/V stream");
}

bool SameManifest(const KvManifestInfo& a, const KvManifestInfo& b) {
  return a.n_layer == b.n_layer && a.n_head_kv == b.n_head_kv && a.head_dim == b.head_dim &&
         a.range_begin == b.range_begin && a.range_end == b.range_end && a.dtype == b.dtype &&
         a.total_bytes == b.total_bytes && a.crc32c == b.crc32c && a.lanes == b.lanes;
}

}  // namespace

// One message of a FetchKv stream (lane 0) into the assembler (created by the manifest).
absl::Status internal::AcceptKvMessage(const grpc::ByteBuffer& buffer, int64_t max_bytes, KvBufferPool* pool,
                                       std::optional<KvAssembler>& kv) {
  ReceivedMessage m;
  if (absl::Status st = Parse(buffer, m); !st.ok()) return st;
  if (m.manifest.has_value()) {
    if (kv.has_value()) return absl::DataLossError("a second manifest in the K/V stream");
    absl::StatusOr<KvAssembler> started = KvAssembler::Start(*m.manifest, max_bytes, pool);
    if (!started.ok()) return started.status();
    kv.emplace(*std::move(started));
    return absl::OkStatus();
  }
  if (!kv.has_value()) return absl::DataLossError("K/V data before the manifest");
  return kv->Add(0, m.offset, m.parts);
}

// One message of lane `lane` > 0: its manifest must repeat lane 0's, then its pieces.
absl::Status internal::AcceptKvLaneMessage(const grpc::ByteBuffer& buffer, int lane, KvAssembler& kv,
                                           bool& manifest_seen) {
  ReceivedMessage m;
  if (absl::Status st = Parse(buffer, m); !st.ok()) return st;
  if (m.manifest.has_value()) {
    if (manifest_seen) return absl::DataLossError(absl::StrCat("a second manifest on lane ", lane));
    if (!SameManifest(*m.manifest, kv.manifest())) {
      return absl::DataLossError(absl::StrCat("lane ", lane, "'s manifest differs from lane 0's"));
    }
    manifest_seen = true;
    return absl::OkStatus();
  }
  if (!manifest_seen) return absl::DataLossError(absl::StrCat("K/V data before the manifest on lane ", lane));
  return kv.Add(lane, m.offset, m.parts);
}

namespace {

// ---- Sending: one stream, written as KvMessage protos or as raw bytes ----

// KvMessage writers: each piece is copied into the message.
class ProtoMessages {
 public:
  const KvMessage& Manifest(const KvManifestInfo& m) {
    ToProto(m, msg_.mutable_manifest());
    return msg_;
  }
  const KvMessage& Piece(const KvPiece& piece) {
    mesa::v1::KvData* data = msg_.mutable_data();  // reused: the string keeps its capacity
    data->set_offset(piece.offset);
    data->set_data(piece.bytes.data(), piece.bytes.size());
    return msg_;
  }

 private:
  KvMessage msg_;
};

// Raw writers: the same bytes on the wire; a piece is its framing (tags, lengths, offset)
// and then a slice of the chunk's memory that holds a reference to the chunk until gRPC
// lets go of it.
class RawMessages {
 public:
  explicit RawMessages(std::shared_ptr<const ChunkKv> kv) : kv_(std::move(kv)) {}
  grpc::ByteBuffer Manifest(const KvManifestInfo& m) {
    KvMessage msg;
    ToProto(m, msg.mutable_manifest());
    grpc::Slice slice(msg.SerializeAsString());
    return grpc::ByteBuffer(&slice, 1);
  }
  grpc::ByteBuffer Piece(const KvPiece& piece) {
    const uint64_t n = piece.bytes.size(), offset = static_cast<uint64_t>(piece.offset);
    const uint64_t inner = (offset != 0 ? 1 + VarintSize(offset) : 0) + 1 + VarintSize(n) + n;
    uint8_t header[4 + 3 * kMaxVarint];
    uint8_t* p = header;
    *p++ = kDataTag;
    p = PutVarint(inner, p);
    if (offset != 0) {
      *p++ = kOffsetTag;
      p = PutVarint(offset, p);
    }
    *p++ = kDataTag;
    p = PutVarint(n, p);
    grpc::Slice slices[2] = {
        grpc::Slice(header, static_cast<size_t>(p - header)),
        grpc::Slice(const_cast<uint8_t*>(piece.bytes.data()), n,
                    [](void* held) { delete static_cast<std::shared_ptr<const ChunkKv>*>(held); },
                    new std::shared_ptr<const ChunkKv>(kv_))};
    return grpc::ByteBuffer(slices, 2);
  }

 private:
  std::shared_ptr<const ChunkKv> kv_;
};

template <class Writer, class Messages>
grpc::Status WriteKvStream(const ChunkKv& kv, grpc::ServerContext* ctx, Writer* writer,
                           int64_t piece_bytes, std::optional<uint32_t> crc32c, KvLaneAsk ask,
                           Messages& messages) {
  int64_t elements = 1;
  for (int64_t factor : {kv.n_layer, kv.n_head_kv, kv.tokens(), kv.head_dim}) {
    if (factor <= 0 || __builtin_mul_overflow(elements, factor, &elements)) elements = -1;
  }
  if (elements < 0 || kv.k.size() != static_cast<size_t>(elements) ||
      kv.v.size() != static_cast<size_t>(elements)) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        absl::StrCat("K/V to send does not match its shape: ", kv.n_layer, " x ",
                                     kv.n_head_kv, " x ", kv.tokens(), " x ", kv.head_dim,
                                     " but k has ", kv.k.size(), " and v ", kv.v.size(),
                                     " floats"));
  }
  // Lane 0 decides how many lanes there are; the other lanes are asked with that number.
  const int64_t total = static_cast<int64_t>(kv.bytes());
  int lanes = 1;
  if (ask.lane == 0) {
    lanes = KvLanesFor(total, ask.lanes);
  } else if (ask.lane > 0 && ask.lane < ask.lanes && ask.lanes <= kMaxKvLanes) {
    lanes = ask.lanes;
  } else {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("FetchKv: lane ", ask.lane, " of ", ask.lanes, " (lanes are 0 to lanes-1, lanes at most ",
                                     kMaxKvLanes, ")"));
  }
  KvManifestInfo manifest = MakeManifest(kv, crc32c);
  manifest.lanes = lanes;
  const grpc::Status cancelled(grpc::StatusCode::CANCELLED,
                               "the client cancelled or went away during the K/V stream");
  if (ctx->IsCancelled() || !writer->Write(messages.Manifest(manifest))) {
    return cancelled;
  }
  for (const KvPiece& piece : SplitPieces(kv, piece_bytes, KvLaneRange(total, lanes, ask.lane))) {
    if (ctx->IsCancelled() || !writer->Write(messages.Piece(piece))) return cancelled;
  }
  return grpc::Status::OK;
}

}  // namespace

void ToProto(const KvKey& key, mesa::v1::KvKey* out) {
  out->set_job_id(key.job_id);
  out->set_item(key.item);
  out->set_chunk(key.chunk);
  out->set_attempt(key.attempt);
}

KvKey FromProto(const mesa::v1::KvKey& key) {
  return KvKey{key.job_id(), key.item(), key.chunk(), key.attempt()};
}

void ToProto(const KvManifestInfo& m, mesa::v1::KvManifest* out) {
  out->set_n_layer(m.n_layer);
  out->set_n_head_kv(m.n_head_kv);
  out->set_head_dim(m.head_dim);
  out->set_range_begin(m.range_begin);
  out->set_range_end(m.range_end);
  out->set_dtype(m.dtype);
  out->set_total_bytes(m.total_bytes);
  out->set_crc32c(m.crc32c);
  out->set_lanes(m.lanes);
}

KvManifestInfo FromProto(const mesa::v1::KvManifest& m) {
  KvManifestInfo info;
  info.n_layer = m.n_layer();
  info.n_head_kv = m.n_head_kv();
  info.head_dim = m.head_dim();
  info.range_begin = m.range_begin();
  info.range_end = m.range_end();
  info.dtype = m.dtype();
  info.total_bytes = m.total_bytes();
  info.crc32c = m.crc32c();
  info.lanes = m.lanes() == 0 ? 1 : m.lanes();  // 0: a sender that predates lanes
  return info;
}

grpc::Status ServeKvStream(const ChunkKv& kv, grpc::ServerContext* ctx,
                           grpc::ServerWriterInterface<KvMessage>* writer, int64_t piece_bytes,
                           std::optional<uint32_t> crc32c, KvLaneAsk ask) {
  ProtoMessages messages;
  return WriteKvStream(kv, ctx, writer, piece_bytes, crc32c, ask, messages);
}

grpc::Status ServeKvStream(std::shared_ptr<const ChunkKv> kv, grpc::ServerContext* ctx,
                           RawKvStream* writer, int64_t piece_bytes,
                           std::optional<uint32_t> crc32c, KvLaneAsk ask) {
  if (kv == nullptr) return grpc::Status(grpc::StatusCode::INTERNAL, "no K/V to send");
  const ChunkKv& chunk = *kv;
  RawMessages messages(std::move(kv));
  return WriteKvStream(chunk, ctx, writer, piece_bytes, crc32c, ask, messages);
}

KvLaneAsk LaneAsk(const mesa::v1::FetchKvRequest& request) {
  return KvLaneAsk{request.lane(), request.lanes()};
}

KvStreamingWorkerService::KvStreamingWorkerService(Lookup lookup, int64_t piece_bytes)
    : lookup_(std::move(lookup)), piece_bytes_(piece_bytes) {
  // The generated split-streaming form of FetchKv (read the one request, then write any
  // number of messages), with grpc::ByteBuffer in place of KvMessage.
  static const int index = google::protobuf::DescriptorPool::generated_pool()
                               ->FindMethodByName(absl::StrCat(
                                   mesa::v1::WorkerService::service_full_name(), ".FetchKv"))
                               ->index();
  MarkMethodStreamed(
      index, new grpc::internal::BidiStreamingHandler<KvStreamingWorkerService,
                                                       mesa::v1::FetchKvRequest, grpc::ByteBuffer>(
                 [](KvStreamingWorkerService* service, grpc::ServerContext* ctx,
                    RawKvStream* stream) { return service->ServeRaw(ctx, stream); },
                 this));
}

grpc::Status KvStreamingWorkerService::FetchKv(grpc::ServerContext*,
                                               const mesa::v1::FetchKvRequest*,
                                               grpc::ServerWriter<KvMessage>*) {
  return grpc::Status(grpc::StatusCode::INTERNAL, "FetchKv is served raw");
}

grpc::Status KvStreamingWorkerService::ServeRaw(grpc::ServerContext* ctx, RawKvStream* stream) {
  mesa::v1::FetchKvRequest request;
  if (!stream->Read(&request) || !request.has_key() || request.key().job_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "FetchKv without a key");
  }
  absl::StatusOr<Held> held = lookup_(FromProto(request.key()));
  if (!held.ok()) return ToGrpcStatus(held.status());
  return ServeKvStream(std::move(held->kv), ctx, stream, piece_bytes_, held->crc32c, LaneAsk(request));
}

GrpcKvFetcher::GrpcKvFetcher(GrpcKvFetcherOptions options) : options_(std::move(options)) {}

std::shared_ptr<grpc::Channel> GrpcKvFetcher::ChannelFor(const std::string& address, int lane) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<grpc::Channel>& channel = channels_[absl::StrCat(address, "#", lane)];
  if (channel == nullptr) {
    grpc::ChannelArguments args = options_.channel_args;
    args.SetMaxReceiveMessageSize(options_.max_receive_message_bytes);
    // Each lane's channel gets a connection of its own (gRPC would otherwise share one
    // subchannel, and so one TCP connection and its reader, between equal channels).
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    channel = grpc::CreateCustomChannel(
        address, options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials(),
        args);
  }
  return channel;
}

namespace {

// One lane's call: the FetchKv server stream as raw messages (the generated stub's call,
// with grpc::ByteBuffer in place of KvMessage).
std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> StartLane(grpc::Channel* channel,
                                                               grpc::ClientContext* ctx,
                                                               const KvKey& key, int lane,
                                                               int lanes) {
  mesa::v1::FetchKvRequest request;
  ToProto(key, request.mutable_key());
  request.set_lane(lane);
  request.set_lanes(lanes);
  const grpc::internal::RpcMethod method(FetchKvMethod(), grpc::internal::RpcMethod::SERVER_STREAMING);
  return std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>>(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel, method, ctx, request));
}

// The first error of a fetch's lanes (a lane's own failure, not the CANCELLED it gets
// when another lane failed first), and the cancelling of the other lanes.
class LaneErrors {
 public:
  explicit LaneErrors(std::vector<std::unique_ptr<grpc::ClientContext>>& contexts) : contexts_(contexts) {}
  void Fail(absl::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (first_.ok()) {
      first_ = std::move(status);
      for (auto& ctx : contexts_) ctx->TryCancel();
    }
  }
  absl::Status first() {
    std::lock_guard<std::mutex> lock(mu_);
    return first_;
  }

 private:
  std::vector<std::unique_ptr<grpc::ClientContext>>& contexts_;
  std::mutex mu_;
  absl::Status first_;
};

// Reads a lane's stream to its end: messages to `accept`, then the call's status.
template <class Accept>
void ReadLane(grpc::ClientReader<grpc::ByteBuffer>& reader, LaneErrors& errors, absl::string_view what,
              Accept accept) {
  grpc::ByteBuffer msg;
  absl::Status check;
  while (reader.Read(&msg)) {
    check = accept(msg);
    msg.Clear();  // the received slices go back now, not when the next message replaces them
    if (!check.ok()) break;
  }
  if (!check.ok()) {
    errors.Fail(WithContext(check, what));  // cancels every lane, this one too
    reader.Finish();
    return;
  }
  const grpc::Status rpc = reader.Finish();
  if (!rpc.ok()) errors.Fail(FromGrpcStatus(rpc, what));
}

}  // namespace

absl::StatusOr<std::shared_ptr<const ChunkKv>> GrpcKvFetcher::FetchWithCrc(const std::string& address,
                                                                           const KvKey& key, int64_t timeout_ms,
                                                                           std::optional<uint32_t>* crc32c) {
  crc32c->reset();
  const std::string what = absl::StrCat("FetchKv ", KvKeyString(key), " from ", address);
  if (timeout_ms <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": timeout_ms must be positive"));
  }
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms);
  // One context per lane that may be used, all made before any lane starts, so that a
  // failing lane can cancel every other.
  const int wanted = std::clamp(options_.lanes, 1, kMaxKvLanes);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  for (int i = 0; i < wanted; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->set_deadline(deadline);
  }
  LaneErrors errors(contexts);
  std::optional<KvAssembler> assembler;
  std::vector<std::thread> lanes;
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> lane0 =
      StartLane(ChannelFor(address, 0).get(), contexts[0].get(), key, 0, wanted);
  // Lane 0: its manifest says how many lanes the sender uses; the others start then.
  ReadLane(*lane0, errors, what, [&](const grpc::ByteBuffer& msg) {
    const bool started = assembler.has_value();
    absl::Status st = internal::AcceptKvMessage(msg, options_.max_kv_bytes, options_.kv_pool.get(), assembler);
    if (!st.ok() || started || !assembler.has_value()) return st;
    const int n = assembler->manifest().lanes;
    if (n > wanted) {
      return absl::DataLossError(absl::StrCat("the sender uses ", n, " lanes, ", wanted, " were asked for"));
    }
    for (int lane = 1; lane < n; ++lane) {
      lanes.emplace_back([&, lane, n, lane_what = absl::StrCat(what, " (lane ", lane, " of ", n, ")")] {
        std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader =
            StartLane(ChannelFor(address, lane).get(), contexts[lane].get(), key, lane, n);
        bool manifest_seen = false;
        ReadLane(*reader, errors, lane_what, [&](const grpc::ByteBuffer& m) {
          return internal::AcceptKvLaneMessage(m, lane, *assembler, manifest_seen);
        });
        if (errors.first().ok() && !manifest_seen) {
          errors.Fail(absl::DataLossError(absl::StrCat(lane_what, ": the stream ended without a manifest")));
        }
      });
    }
    return st;
  });
  for (std::thread& t : lanes) t.join();
  if (absl::Status st = errors.first(); !st.ok()) return st;
  if (!assembler.has_value()) {
    return absl::DataLossError(absl::StrCat(what, ": the stream ended without a manifest"));
  }
  absl::StatusOr<ChunkKv> kv = assembler->Finish();  // checks the CRC32C
  if (!kv.ok()) return WithContext(kv.status(), what);
  *crc32c = assembler->manifest().crc32c;
  return KvBufferPool::Share(options_.kv_pool, *std::move(kv));
}

}  // namespace mesa::worker
