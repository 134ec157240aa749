// Engine-level reference of every attention method Mesa runs: a forward pass written
// as plain loops with double accumulation, where every (query, key) pair and its
// relative position is listed explicitly. Slow by design; it is the specification the
// fast engine (ModelRunner, MesaPhases, LongContextRunner) is tested against.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "engine/mesa_plan.h"
#include "engine/model.h"
#include "kernels/attention.h"

namespace mesa::reference {

// One pass over a group of tokens. For the query token at global index g (its k-th
// token), `visible` lists the keys it attends to as (global key index, relative
// position); `scale` multiplies its logits (log-n). The segment's own K/V are stored
// under their global indices before its attention runs, so they can be listed.
struct Segment {
  std::vector<int32_t> tokens;
  std::vector<int64_t> global;
  std::function<std::vector<std::pair<int64_t, int64_t>>(int64_t g)> visible;
  std::function<double(int64_t g)> scale = [](int64_t) { return 1.0; };
};

class ReferenceModel {
 public:
  explicit ReferenceModel(const Model& model);
  // Logits [tokens][n_vocab] of the segment's tokens.
  std::vector<float> Run(const Segment& segment);

 private:
  const Model& model_;
  // Raw keys and values per layer, indexed by global token index.
  std::vector<std::vector<std::vector<double>>> k_, v_;
  std::vector<float> slopes_;
};

// Logits of every prompt token under a Mesa plan (anchor, middle chunks, last chunk),
// followed by `decode` tokens appended after the prompt (they attend like the last chunk).
std::vector<float> MesaLogits(const Model& model, absl::Span<const int32_t> prompt,
                              const MesaPlan& plan, absl::Span<const int32_t> decode = {});
// Logits of every token of one causal pass where a query at t sees key i with
// relative position rel(t, i) (kExact: the base model; kClamp: ReRoPE; ...).
std::vector<float> WholeLogits(const Model& model, absl::Span<const int32_t> tokens,
                               const RelativePosition& rel, int64_t logn_train_length = 0);

}  // namespace mesa::reference
