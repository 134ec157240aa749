// Plain-data description of a model's shape and conventions, filled by the loaders
// (GGUF metadata or a Hugging Face config.json) and read by the forward pass.
#pragma once

#include <cstdint>
#include <string>

namespace mesa {

enum class Arch { kLlama, kQwen2, kMpt };
enum class NormType { kRms, kLayerNorm };
enum class PositionType { kRope, kAlibi };
// kNormal: rotate adjacent pairs (x[2i], x[2i+1]) (GGUF llama convention).
// kNeox: rotate (x[i], x[i + n_rot/2]) (Hugging Face and qwen2 convention).
enum class RopeStyle { kNormal, kNeox };
enum class FfnType { kSwiGlu, kGelu };

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string arch_name;        // as the file names it: "llama", "qwen2", "mpt"
  std::string name;             // general.name when present
  int64_t n_vocab = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;        // grouped-query attention: n_head % n_head_kv == 0
  int64_t head_dim = 0;         // usually n_embd / n_head
  int64_t n_ff = 0;
  int64_t context_length = 0;   // trained context (T)
  NormType norm = NormType::kRms;
  float norm_eps = 1e-5f;
  PositionType position = PositionType::kRope;
  RopeStyle rope_style = RopeStyle::kNormal;
  int64_t rope_dims = 0;        // rotated dims per head (n_rot), <= head_dim
  float rope_freq_base = 10000.0f;
  float rope_freq_scale = 1.0f; // linear scaling: position * scale
  float alibi_bias_max = 8.0f;
  float clamp_kqv = 0.0f;       // MPT: clamp q/k/v to [-c, c] when > 0
  FfnType ffn = FfnType::kSwiGlu;
  int64_t parameter_count = 0;  // filled by the loader from tensor shapes
};

const char* ArchName(Arch arch);

}  // namespace mesa
