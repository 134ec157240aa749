// The three phases of Mesa-Extrapolation (../shared/docs/MESA_SPEC.md sections 2-4),
// with explicit inputs and outputs so that each can run on a different worker:
//   1. RunAnchor / RunMiddle: the anchor (positions 0..F-1), then one middle chunk
//      against the anchor only (positions restart at F): the chunk's per-layer raw
//      keys and values out, as a self-describing ChunkKv.
//   2. RunFinal: the anchor and every middle chunk's ChunkKv plus the last-chunk
//      tokens in; the last chunk attends to the whole prompt with Stair PE; the state
//      for decoding and the last chunk's logits out.
//   3. Decode: one token at a time with Stair PE over everything.
// A middle chunk is a deterministic function of (anchor K/V, its tokens): chunks can
// run in any order, in other processes or on other machines, bit-identically for a
// fixed backend. Not thread-safe; the Model is shared.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/forward.h"
#include "engine/mesa_plan.h"

namespace mesa {

// Raw keys and values of the tokens at global positions [range.begin, range.end).
// Layout of k and v: [layer][kv head][token][head_dim], f32.
struct ChunkKv {
  int64_t n_layer = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  TokenRange range;
  std::vector<float> k, v;

  int64_t tokens() const { return range.size(); }
  size_t bytes() const { return (k.size() + v.size()) * sizeof(float); }
  // A little-endian byte form with a header (magic "MESAKV01", shape, dtype, range)
  // for moving chunks between processes.
  std::vector<uint8_t> Serialize() const;
  static absl::StatusOr<ChunkKv> Deserialize(absl::Span<const uint8_t> bytes);
};

// State after the final phase: the raw-key cache of the whole prompt (global rows).
struct MesaState {
  KvCache cache;
  AttentionSetup setup;
};

class MesaPhases {
 public:
  MesaPhases(const Model& model, Backend& backend, const MesaPlan& plan);

  // logits (optional): [tokens][n_vocab] of the phase's own tokens.
  absl::StatusOr<ChunkKv> RunAnchor(absl::Span<const int32_t> anchor_tokens,
                                    std::vector<float>* logits);
  absl::StatusOr<ChunkKv> RunMiddle(const ChunkKv& anchor, absl::Span<const int32_t> chunk_tokens,
                                    TokenRange global_range, std::vector<float>* logits);
  // middles must be in global order and cover [anchor.end, last_begin) exactly.
  absl::StatusOr<MesaState> RunFinal(const ChunkKv& anchor, absl::Span<const ChunkKv> middles,
                                     absl::Span<const int32_t> last_tokens, LogitsMode mode,
                                     std::vector<float>* logits);
  // RunFinal in steps, so a caller that receives chunks one by one can lay each into
  // the final cache and drop it (peak memory: one copy of the prompt's K/V).
  // `capacity`: tokens to reserve (prompt + generation budget).
  absl::StatusOr<MesaState> StartFinal(const ChunkKv& anchor, int64_t capacity);
  absl::Status AddMiddle(MesaState& state, const ChunkKv& middle);
  absl::Status FinishFinal(MesaState& state, absl::Span<const int32_t> last_tokens,
                           LogitsMode mode, std::vector<float>* logits);
  absl::Status Decode(MesaState& state, int32_t token, std::vector<float>* logits);

  // The Stair PE setup of the plan (also used by the engine-level reference).
  static AttentionSetup StairSetup(const MesaPlan& plan);

 private:
  ChunkKv Extract(const KvCache& cache, int64_t first_row, TokenRange range) const;
  absl::Status Append(const ChunkKv& kv, KvCache& cache) const;

  const Model& model_;
  MesaPlan plan_;
  ModelRunner runner_;
};

}  // namespace mesa
