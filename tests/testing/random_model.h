// Random-weight GGUF models for tests and benchmarks: llama (GQA), qwen2 (q/k/v
// biases) and mpt (ALiBi, fused qkv), deterministic from a seed, with the tokenizer
// metadata copied from a real GGUF so llama.cpp can load them too.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace mesa::testing {

inline constexpr char kSyntheticTokenizer[] = "synthetic";

struct RandomModelSpec {
  std::string arch = "llama";   // "llama", "qwen2" or "mpt"
  int64_t n_embd = 128;
  int64_t n_layer = 2;
  int64_t n_head = 4;
  int64_t n_head_kv = 0;        // 0: same as n_head
  int64_t head_dim = 0;         // 0: n_embd / n_head (llama/qwen2 may differ)
  int64_t n_ff = 256;
  int64_t context_length = 512;
  int64_t n_vocab = 0;          // 0: the tokenizer's vocab; otherwise truncated/padded to it
  uint64_t seed = 1;
  // Matrices: kF32, kF16, kBF16, kQ8_0 or kQ4_K (norms and biases stay f32). F32/F16
  // draw from one sequential stream (as they always have); BF16/Q8_0/Q4_K draw each row
  // from its own stream (seed, tensor, row) on all hardware threads, so a Llama-3-8B-
  // shaped model is written in seconds; the quantized types round those f32 rows with
  // ref::QuantizeRowQ8_0 / QuantizeRowQ4_K (rows must be multiples of 32 / 256).
  DType type = DType::kF32;
  bool tied_output = false;     // omit output.weight
  float rope_freq_base = 10000.0f;
  float max_alibi_bias = 8.0f;  // mpt
  float clamp_kqv = 0.0f;       // mpt (0: not written)
  float norm_eps = 1e-5f;
  // GGUF whose tokenizer.* metadata is copied, or kSyntheticTokenizer for a made-up
  // SentencePiece vocab (tests that must run without the shared models). Empty: $MESA_SHARED_DIR/models/
  // stories260K-f32.gguf (or ../shared beside the working directory's checkout).
  std::string tokenizer_source;
};

// The default tokenizer source path (may not exist).
std::string DefaultTokenizerSource();

// "f32", "f16", "bf16", "q8_0", "q4_k" -> the DType (InvalidArgument otherwise).
absl::StatusOr<DType> RandomModelType(const std::string& name);

absl::Status WriteRandomGguf(const RandomModelSpec& spec, const std::string& path);

}  // namespace mesa::testing
