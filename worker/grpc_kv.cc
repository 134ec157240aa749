// K/V over gRPC (worker/grpc_kv.h): the FetchKv stream writer and the GrpcKvFetcher
// client. Every check on the bytes lives in KvAssembler (worker/kv_wire.h); this file
// only moves messages, keeps deadlines and names the peer in errors.
#include "worker/grpc_kv.h"

#include <chrono>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/grpc_status.h"

namespace mesa::worker {
namespace {

using mesa::v1::KvMessage;

absl::Status WithContext(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

// One message of a FetchKv stream into the assembler (created by the manifest).
absl::Status Accept(const KvMessage& msg, int64_t max_bytes, std::optional<KvAssembler>& kv) {
  switch (msg.part_case()) {
    case KvMessage::kManifest: {
      if (kv.has_value()) return absl::DataLossError("a second manifest in the K/V stream");
      absl::StatusOr<KvAssembler> started = KvAssembler::Start(FromProto(msg.manifest()), max_bytes);
      if (!started.ok()) return started.status();
      kv.emplace(*std::move(started));
      return absl::OkStatus();
    }
    case KvMessage::kData: {
      if (!kv.has_value()) return absl::DataLossError("K/V data before the manifest");
      const std::string& bytes = msg.data().data();
      return kv->Add(msg.data().offset(),
                     absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()),
                                               bytes.size()));
    }
    case KvMessage::PART_NOT_SET:
      return absl::DataLossError("an empty message in the K/V stream");
  }
  return absl::DataLossError("an unknown message in the K/V stream");
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
  return info;
}

grpc::Status ServeKvStream(const ChunkKv& kv, grpc::ServerContext* ctx,
                           grpc::ServerWriterInterface<KvMessage>* writer, int64_t piece_bytes) {
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
  const grpc::Status cancelled(grpc::StatusCode::CANCELLED,
                               "the client cancelled or went away during the K/V stream");
  KvMessage msg;
  ToProto(MakeManifest(kv), msg.mutable_manifest());
  if (ctx->IsCancelled() || !writer->Write(msg)) return cancelled;
  mesa::v1::KvData* data = msg.mutable_data();  // reused: the string keeps its capacity
  for (const KvPiece& piece : SplitPieces(kv, piece_bytes)) {
    data->set_offset(piece.offset);
    data->set_data(piece.bytes.data(), piece.bytes.size());
    if (ctx->IsCancelled() || !writer->Write(msg)) return cancelled;
  }
  return grpc::Status::OK;
}

GrpcKvFetcher::GrpcKvFetcher(GrpcKvFetcherOptions options) : options_(std::move(options)) {}

std::shared_ptr<grpc::Channel> GrpcKvFetcher::ChannelFor(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<grpc::Channel>& channel = channels_[address];
  if (channel == nullptr) {
    grpc::ChannelArguments args = options_.channel_args;
    args.SetMaxReceiveMessageSize(options_.max_receive_message_bytes);
    channel = grpc::CreateCustomChannel(
        address, options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials(),
        args);
  }
  return channel;
}

absl::StatusOr<std::shared_ptr<const ChunkKv>> GrpcKvFetcher::Fetch(const std::string& address,
                                                                    const KvKey& key,
                                                                    int64_t timeout_ms) {
  const std::string what = absl::StrCat("FetchKv ", KvKeyString(key), " from ", address);
  if (timeout_ms <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": timeout_ms must be positive"));
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  mesa::v1::FetchKvRequest request;
  ToProto(key, request.mutable_key());
  std::unique_ptr<mesa::v1::WorkerService::Stub> stub =
      mesa::v1::WorkerService::NewStub(ChannelFor(address));
  std::unique_ptr<grpc::ClientReader<KvMessage>> reader = stub->FetchKv(&ctx, request);

  std::optional<KvAssembler> assembler;
  absl::Status check;
  KvMessage msg;
  while (reader->Read(&msg)) {
    check = Accept(msg, options_.max_kv_bytes, assembler);
    if (!check.ok()) {
      ctx.TryCancel();  // the sender stops; Finish then returns at once
      break;
    }
  }
  const grpc::Status rpc = reader->Finish();
  if (!check.ok()) return WithContext(check, what);
  if (!rpc.ok()) return FromGrpcStatus(rpc, what);
  if (!assembler.has_value()) {
    return absl::DataLossError(absl::StrCat(what, ": the stream ended without a manifest"));
  }
  absl::StatusOr<ChunkKv> kv = assembler->Finish();
  if (!kv.ok()) return WithContext(kv.status(), what);
  return std::make_shared<const ChunkKv>(*std::move(kv));
}

}  // namespace mesa::worker
