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

// One contiguous run of cache rows (`count` elements of the cache's type) to f32 on the
// host, and back. f16/bf16 -> f32 is exact; f32 -> f16/bf16 rounds to nearest even (as
// the forward pass stores them).
void RowsToHost(const KvCache& cache, const void* src, int64_t count, float* dst, std::vector<uint16_t>& tmp) {
  if (cache.kv_type() == DType::kF32) {
    cache.backend().CopyOut(dst, src, count * sizeof(float));
    return;
  }
  tmp.resize(count);
  cache.backend().CopyOut(tmp.data(), src, count * sizeof(uint16_t));
  const bool bf16 = cache.kv_type() == DType::kBF16;
  for (int64_t i = 0; i < count; ++i) dst[i] = bf16 ? BF16ToF32(tmp[i]) : F16ToF32(tmp[i]);
}

void RowsFromHost(KvCache& cache, const float* src, int64_t count, void* dst, std::vector<uint16_t>& tmp) {
  if (cache.kv_type() == DType::kF32) {
    cache.backend().CopyIn(dst, src, count * sizeof(float));
    return;
  }
  tmp.resize(count);
  const bool bf16 = cache.kv_type() == DType::kBF16;
  for (int64_t i = 0; i < count; ++i) tmp[i] = bf16 ? F32ToBF16(src[i]) : F32ToF16(src[i]);
  cache.backend().CopyIn(dst, tmp.data(), count * sizeof(uint16_t));
}

}  // namespace

ChunkKv MesaPhases::Extract(const KvCache& cache, int64_t first_row, TokenRange range) const {
  ChunkKv kv;
  kv.n_layer = cache.n_layer();
  kv.n_head_kv = cache.n_head_kv();
  kv.head_dim = cache.head_dim();
  kv.range = range;
  const int64_t t = range.size(), hd = kv.head_dim;
  kv.k.resize(kv.n_layer * kv.n_head_kv * t * hd);
  kv.v.resize(kv.k.size());
  std::vector<uint16_t> tmp;
  for (int64_t l = 0; l < kv.n_layer; ++l) {
    for (int64_t h = 0; h < kv.n_head_kv; ++h) {
      const int64_t dst = ((l * kv.n_head_kv + h) * t) * hd;
      RowsToHost(cache, cache.k_row(l, h, first_row), t * hd, kv.k.data() + dst, tmp);
      RowsToHost(cache, cache.v_row(l, h, first_row), t * hd, kv.v.data() + dst, tmp);
    }
  }
  return kv;
}

absl::Status MesaPhases::Append(const ChunkKv& kv, KvCache& cache) const {
  const int64_t t = kv.tokens(), hd = kv.head_dim, first = cache.size();
  MESA_RETURN_IF_ERROR(cache.Reserve(first + t));
  std::vector<uint16_t> tmp;
  for (int64_t l = 0; l < kv.n_layer; ++l) {
    for (int64_t h = 0; h < kv.n_head_kv; ++h) {
      const int64_t src = ((l * kv.n_head_kv + h) * t) * hd;
      RowsFromHost(cache, kv.k.data() + src, t * hd, cache.k_row(l, h, first), tmp);
      RowsFromHost(cache, kv.v.data() + src, t * hd, cache.v_row(l, h, first), tmp);
    }
  }
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
