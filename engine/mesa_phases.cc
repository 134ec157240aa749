#include "engine/mesa_phases.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace mesa {
namespace {

constexpr char kMagic[8] = {'M', 'E', 'S', 'A', 'K', 'V', '0', '1'};
constexpr int64_t kDTypeF32 = 0;

AttentionSetup ExactRaw() {
  AttentionSetup s;
  s.keys = KeyEncoding::kRaw;
  return s;
}

}  // namespace

std::vector<uint8_t> ChunkKv::Serialize() const {
  const int64_t header[7] = {n_layer, n_head_kv, head_dim, range.begin, range.end, kDTypeF32,
                             static_cast<int64_t>(k.size())};
  std::vector<uint8_t> out(sizeof(kMagic) + sizeof(header) + bytes());
  uint8_t* p = out.data();
  std::memcpy(p, kMagic, sizeof(kMagic));
  p += sizeof(kMagic);
  std::memcpy(p, header, sizeof(header));
  p += sizeof(header);
  std::memcpy(p, k.data(), k.size() * sizeof(float));
  p += k.size() * sizeof(float);
  std::memcpy(p, v.data(), v.size() * sizeof(float));
  return out;
}

absl::StatusOr<ChunkKv> ChunkKv::Deserialize(absl::Span<const uint8_t> bytes) {
  int64_t h[7];
  if (bytes.size() < sizeof(kMagic) + sizeof(h) ||
      std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError("not a Mesa K/V chunk (bad magic or too short)");
  }
  std::memcpy(h, bytes.data() + sizeof(kMagic), sizeof(h));
  ChunkKv kv;
  kv.n_layer = h[0];
  kv.n_head_kv = h[1];
  kv.head_dim = h[2];
  kv.range = {h[3], h[4]};
  if (h[5] != kDTypeF32) return absl::InvalidArgumentError(absl::StrCat("K/V chunk dtype ", h[5], " unsupported"));
  const int64_t tokens = kv.range.size();
  if (kv.n_layer <= 0 || kv.n_head_kv <= 0 || kv.head_dim <= 0 || tokens < 0 ||
      kv.n_layer > (1 << 16) || kv.n_head_kv > (1 << 16) || kv.head_dim > (1 << 16) ||
      tokens > (int64_t{1} << 32) || h[6] != kv.n_layer * kv.n_head_kv * tokens * kv.head_dim) {
    return absl::InvalidArgumentError("K/V chunk header is inconsistent");
  }
  const size_t payload = static_cast<size_t>(h[6]) * 2 * sizeof(float);
  if (bytes.size() != sizeof(kMagic) + sizeof(h) + payload) {
    return absl::InvalidArgumentError(absl::StrCat("K/V chunk has ", bytes.size(), " bytes, header says ",
                                                   sizeof(kMagic) + sizeof(h) + payload));
  }
  kv.k.resize(h[6]);
  kv.v.resize(h[6]);
  const uint8_t* p = bytes.data() + sizeof(kMagic) + sizeof(h);
  std::memcpy(kv.k.data(), p, h[6] * sizeof(float));
  std::memcpy(kv.v.data(), p + h[6] * sizeof(float), h[6] * sizeof(float));
  return kv;
}

MesaPhases::MesaPhases(const Model& model, Backend& backend, const MesaPlan& plan)
    : model_(model), plan_(plan), runner_(model, backend) {}

AttentionSetup MesaPhases::StairSetup(const MesaPlan& plan) {
  AttentionSetup s;
  s.keys = KeyEncoding::kRaw;
  s.rel.kind = RelativePosition::Kind::kStair;
  s.rel.n = plan.stair_n;
  s.rel.e = plan.stair_e;
  s.logn_train_length = plan.logn ? plan.train_length : 0;
  return s;
}

namespace {

// Rows [first, first + t) of every (layer, kv head) block of one of the cache's buffers
// (`base` = that buffer's row 0 of block 0) <-> a host [layer][head][t][head_dim] f32
// array, as one strided transfer. f16/bf16 -> f32 is exact; f32 -> f16/bf16 rounds to
// nearest even (as the forward pass stores them).
void BlocksToHost(const KvCache& cache, const void* base, int64_t t, float* dst) {
  const size_t blocks = static_cast<size_t>(cache.n_layer() * cache.n_head_kv());
  const size_t row_elems = static_cast<size_t>(t * cache.head_dim());
  const size_t src_stride = static_cast<size_t>(cache.capacity()) * cache.row_bytes();
  if (cache.kv_type() == DType::kF32) {
    cache.backend().CopyOut2D(dst, row_elems * sizeof(float), base, src_stride, row_elems * sizeof(float), blocks);
    return;
  }
  std::vector<uint16_t> tmp(blocks * row_elems);
  cache.backend().CopyOut2D(tmp.data(), row_elems * 2, base, src_stride, row_elems * 2, blocks);
  const bool bf16 = cache.kv_type() == DType::kBF16;
  for (size_t i = 0; i < tmp.size(); ++i) dst[i] = bf16 ? BF16ToF32(tmp[i]) : F16ToF32(tmp[i]);
}

void BlocksFromHost(KvCache& cache, const float* src, int64_t t, void* base) {
  const size_t blocks = static_cast<size_t>(cache.n_layer() * cache.n_head_kv());
  const size_t row_elems = static_cast<size_t>(t * cache.head_dim());
  const size_t dst_stride = static_cast<size_t>(cache.capacity()) * cache.row_bytes();
  if (cache.kv_type() == DType::kF32) {
    cache.backend().CopyIn2D(base, dst_stride, src, row_elems * sizeof(float), row_elems * sizeof(float), blocks);
    return;
  }
  std::vector<uint16_t> tmp(blocks * row_elems);
  const bool bf16 = cache.kv_type() == DType::kBF16;
  for (size_t i = 0; i < tmp.size(); ++i) tmp[i] = bf16 ? F32ToBF16(src[i]) : F32ToF16(src[i]);
  cache.backend().CopyIn2D(base, dst_stride, tmp.data(), row_elems * 2, row_elems * 2, blocks);
}

}  // namespace

ChunkKv MesaPhases::Extract(const KvCache& cache, int64_t first_row, TokenRange range) const {
  ChunkKv kv;
  kv.n_layer = cache.n_layer();
  kv.n_head_kv = cache.n_head_kv();
  kv.head_dim = cache.head_dim();
  kv.range = range;
  const int64_t t = range.size();
  kv.k.resize(kv.n_layer * kv.n_head_kv * t * kv.head_dim);
  kv.v.resize(kv.k.size());
  BlocksToHost(cache, cache.k_row(0, 0, first_row), t, kv.k.data());
  BlocksToHost(cache, cache.v_row(0, 0, first_row), t, kv.v.data());
  return kv;
}

absl::Status MesaPhases::Append(const ChunkKv& kv, KvCache& cache) const {
  const int64_t t = kv.tokens(), first = cache.size();
  const size_t elems = static_cast<size_t>(cache.n_layer() * cache.n_head_kv() * std::max<int64_t>(t, 0) *
                                           cache.head_dim());
  if (kv.n_layer != cache.n_layer() || kv.n_head_kv != cache.n_head_kv() || kv.head_dim != cache.head_dim() ||
      t < 0 || kv.k.size() != elems || kv.v.size() != elems) {
    return absl::InvalidArgumentError(absl::StrCat("chunk K/V [", kv.range.begin, ", ", kv.range.end, ") of ",
                                                   kv.n_layer, " x ", kv.n_head_kv, " x ", kv.head_dim,
                                                   " does not fit this model's cache (", cache.n_layer(), " x ",
                                                   cache.n_head_kv(), " x ", cache.head_dim(), ")"));
  }
  MESA_RETURN_IF_ERROR(cache.Reserve(first + t));
  BlocksFromHost(cache, kv.k.data(), t, cache.k_row(0, 0, first));
  BlocksFromHost(cache, kv.v.data(), t, cache.v_row(0, 0, first));
  cache.Commit(t);
  return cache.backend().status();
}

absl::StatusOr<ChunkKv> MesaPhases::RunAnchor(absl::Span<const int32_t> anchor_tokens,
                                              std::vector<float>* logits) {
  if (anchor_tokens.empty()) return absl::InvalidArgumentError("the anchor is empty");
  MESA_ASSIGN_OR_RETURN(KvCache cache,
                        runner_.MakeCache(static_cast<int64_t>(anchor_tokens.size()), KeyEncoding::kRaw));
  MESA_RETURN_IF_ERROR(runner_.Forward(anchor_tokens, cache,
                                       logits ? LogitsMode::kAll : LogitsMode::kNone, logits,
                                       ExactRaw()));
  return Extract(cache, 0, {0, static_cast<int64_t>(anchor_tokens.size())});
}

absl::StatusOr<ChunkKv> MesaPhases::RunMiddle(const ChunkKv& anchor,
                                              absl::Span<const int32_t> chunk_tokens,
                                              TokenRange global_range,
                                              std::vector<float>* logits) {
  if (chunk_tokens.empty()) return absl::InvalidArgumentError("the middle chunk is empty");
  if (global_range.size() != static_cast<int64_t>(chunk_tokens.size())) {
    return absl::InvalidArgumentError("chunk range and token count differ");
  }
  if (anchor.range.begin != 0 || anchor.n_layer != model_.config.n_layer) {
    return absl::InvalidArgumentError("the anchor K/V does not belong to this model's anchor");
  }
  // [anchor, chunk] with positions restarting: anchor at 0..F-1, chunk at F..F+W-1.
  MESA_ASSIGN_OR_RETURN(KvCache cache,
                        runner_.MakeCache(anchor.tokens() + global_range.size(), KeyEncoding::kRaw));
  MESA_RETURN_IF_ERROR(Append(anchor, cache));
  MESA_RETURN_IF_ERROR(runner_.Forward(chunk_tokens, cache,
                                       logits ? LogitsMode::kAll : LogitsMode::kNone, logits,
                                       ExactRaw()));
  return Extract(cache, anchor.tokens(), global_range);
}

absl::StatusOr<MesaState> MesaPhases::StartFinal(const ChunkKv& anchor, int64_t capacity) {
  MESA_ASSIGN_OR_RETURN(KvCache cache, runner_.MakeCache(std::max(capacity, anchor.tokens()), KeyEncoding::kRaw));
  MesaState state{std::move(cache), StairSetup(plan_)};
  MESA_RETURN_IF_ERROR(Append(anchor, state.cache));
  return state;
}

absl::Status MesaPhases::AddMiddle(MesaState& state, const ChunkKv& m) {
  const int64_t expect = state.cache.pos0() + state.cache.size();
  if (m.range.begin != expect || m.n_layer != state.cache.n_layer() ||
      m.n_head_kv != state.cache.n_head_kv() || m.head_dim != state.cache.head_dim()) {
    return absl::InvalidArgumentError(absl::StrCat("middle chunk [", m.range.begin, ", ", m.range.end,
                                                   ") does not continue the prompt at ", expect));
  }
  return Append(m, state.cache);
}

absl::Status MesaPhases::FinishFinal(MesaState& state, absl::Span<const int32_t> last_tokens,
                                     LogitsMode mode, std::vector<float>* logits) {
  if (last_tokens.empty()) return absl::InvalidArgumentError("the last chunk is empty");
  return runner_.Forward(last_tokens, state.cache, mode, logits, state.setup);
}

absl::StatusOr<MesaState> MesaPhases::RunFinal(const ChunkKv& anchor,
                                               absl::Span<const ChunkKv> middles,
                                               absl::Span<const int32_t> last_tokens,
                                               LogitsMode mode, std::vector<float>* logits) {
  int64_t total = anchor.tokens();
  for (const ChunkKv& m : middles) total += m.tokens();
  MESA_ASSIGN_OR_RETURN(
      MesaState state,
      StartFinal(anchor, InitialCacheTokens(total + static_cast<int64_t>(last_tokens.size()), plan_.max_new_tokens)));
  for (const ChunkKv& m : middles) MESA_RETURN_IF_ERROR(AddMiddle(state, m));
  MESA_RETURN_IF_ERROR(FinishFinal(state, last_tokens, mode, logits));
  return state;
}

absl::Status MesaPhases::Decode(MesaState& state, int32_t token, std::vector<float>* logits) {
  return runner_.Forward({&token, 1}, state.cache, LogitsMode::kLast, logits, state.setup);
}

}  // namespace mesa
