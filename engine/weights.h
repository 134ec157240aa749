// Views of a model's weights. Matrices stay in their file's DType (memory-mapped or
// owned by Model); small 1-D tensors (norms, biases) are converted to f32 once by the
// loader. A null pointer means "absent" (e.g. no bias).
#pragma once

#include <vector>

#include "kernels/matmul.h"

namespace mesa {

struct LayerWeights {
  // Attention. Either wq/wk/wv, or a fused wqkv ([q; k; v] rows, MPT).
  const float* attn_norm = nullptr;    // [n_embd]
  const float* attn_norm_b = nullptr;  // [n_embd] layer norm bias (MPT), optional
  WeightView wq, wk, wv, wqkv;         // rows: n_head*head_dim / n_head_kv*head_dim
  const float* bq = nullptr;           // qwen2 biases, optional
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* bqkv = nullptr;
  WeightView wo;                       // [n_embd x n_head*head_dim]
  const float* bo = nullptr;
  // Feed-forward: SwiGLU (gate, up, down) or GELU (up, down).
  const float* ffn_norm = nullptr;
  const float* ffn_norm_b = nullptr;
  WeightView w_gate, w_up, w_down;     // gate/up: [n_ff x n_embd], down: [n_embd x n_ff]
  const float* b_up = nullptr;
  const float* b_down = nullptr;

  bool fused_qkv() const { return wqkv.data != nullptr; }
};

struct ModelWeights {
  WeightView token_embd;                // [n_vocab x n_embd]
  const float* output_norm = nullptr;   // [n_embd]
  const float* output_norm_b = nullptr;
  WeightView output;                    // [n_vocab x n_embd]; == token_embd when tied
  std::vector<LayerWeights> layers;
};

}  // namespace mesa
