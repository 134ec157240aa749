// ModelConfig helpers: names, validation, and the readers that fill a config from
// GGUF metadata or a Hugging Face config.json.
#include "engine/model_config.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/gguf.h"
#include "engine/model_loader.h"
#include "nlohmann/json.hpp"

namespace mesa {

namespace {

// double -> float without undefined behaviour on out-of-range values.
absl::StatusOr<float> Narrow(double v, const std::string& what, const std::string& origin) {
  if (!std::isfinite(v) || std::fabs(v) > 3.0e38) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", what, " = ", v, " is out of range"));
  }
  return static_cast<float>(v);
}

}  // namespace

const char* ArchName(Arch arch) {
  switch (arch) {
    case Arch::kLlama: return "llama";
    case Arch::kQwen2: return "qwen2";
    case Arch::kMpt: return "mpt";
  }
  return "unknown";
}

absl::Status ValidateConfig(const ModelConfig& c, const std::string& origin) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", what));
  };
  // Generous bounds: they only keep hostile files from driving huge allocations.
  auto in_range = [](int64_t v, int64_t hi) { return v > 0 && v <= hi; };
  if (!in_range(c.n_embd, 1 << 17)) return bad(absl::StrCat("embedding length ", c.n_embd, " out of range"));
  if (!in_range(c.n_layer, 4096)) return bad(absl::StrCat("block count ", c.n_layer, " out of range"));
  if (!in_range(c.n_head, 4096)) return bad(absl::StrCat("head count ", c.n_head, " out of range"));
  if (!in_range(c.n_head_kv, c.n_head)) {
    return bad(absl::StrCat("kv head count ", c.n_head_kv, " out of range (head count ", c.n_head, ")"));
  }
  if (c.n_head % c.n_head_kv != 0) {
    return bad(absl::StrCat("head count ", c.n_head, " is not a multiple of kv head count ", c.n_head_kv));
  }
  if (!in_range(c.head_dim, 1 << 14)) return bad(absl::StrCat("head dim ", c.head_dim, " out of range"));
  if (!in_range(c.n_ff, 1 << 20)) return bad(absl::StrCat("feed-forward length ", c.n_ff, " out of range"));
  if (!in_range(c.context_length, int64_t{1} << 32)) {
    return bad(absl::StrCat("context length ", c.context_length, " out of range"));
  }
  if (c.n_vocab < 0 || c.n_vocab > (int64_t{1} << 24)) {
    return bad(absl::StrCat("vocab size ", c.n_vocab, " out of range"));
  }
  if (c.position == PositionType::kRope) {
    if (c.rope_dims <= 0 || c.rope_dims > c.head_dim || c.rope_dims % 2 != 0) {
      return bad(absl::StrCat("rope dimension count ", c.rope_dims, " must be even and in (0, head dim ",
                              c.head_dim, "]"));
    }
    if (!(c.rope_freq_base > 0) || !std::isfinite(c.rope_freq_base)) {
      return bad(absl::StrCat("rope freq base ", c.rope_freq_base, " must be positive"));
    }
    if (!(c.rope_freq_scale > 0) || !std::isfinite(c.rope_freq_scale)) {
      return bad(absl::StrCat("rope freq scale ", c.rope_freq_scale, " must be positive"));
    }
  }
  if (!(c.norm_eps >= 0) || !std::isfinite(c.norm_eps)) {
    return bad(absl::StrCat("norm epsilon ", c.norm_eps, " invalid"));
  }
  if (!(c.clamp_kqv >= 0) || !std::isfinite(c.clamp_kqv)) return bad("clamp_kqv invalid");
  if (!std::isfinite(c.alibi_bias_max)) return bad("max_alibi_bias invalid");
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& f) {
  ModelConfig c;
  MESA_ASSIGN_OR_RETURN(c.arch_name, f.GetString("general.architecture"));
  if (c.arch_name == "llama") {
    c.arch = Arch::kLlama;
  } else if (c.arch_name == "qwen2") {
    c.arch = Arch::kQwen2;
  } else if (c.arch_name == "mpt") {
    c.arch = Arch::kMpt;
  } else {
    return absl::UnimplementedError(absl::StrCat("GGUF file ", f.path(), ": unsupported architecture '",
                                                 c.arch_name, "' (supported: llama, qwen2, mpt)"));
  }
  MESA_ASSIGN_OR_RETURN(c.name, f.GetStringOr("general.name", ""));
  const std::string a = c.arch_name + ".";
  auto required = [&](const std::string& key) -> absl::StatusOr<int64_t> {
    auto v = f.GetInt(a + key);
    if (absl::IsNotFound(v.status())) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF file ", f.path(), ": missing required key '", a, key, "'"));
    }
    return v;
  };
  MESA_ASSIGN_OR_RETURN(c.context_length, required("context_length"));
  MESA_ASSIGN_OR_RETURN(c.n_embd, required("embedding_length"));
  MESA_ASSIGN_OR_RETURN(c.n_layer, required("block_count"));
  MESA_ASSIGN_OR_RETURN(c.n_ff, required("feed_forward_length"));
  MESA_ASSIGN_OR_RETURN(c.n_head, required("attention.head_count"));
  MESA_ASSIGN_OR_RETURN(c.n_head_kv, f.GetIntOr(a + "attention.head_count_kv", c.n_head));
  if (c.n_head <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": head count ", c.n_head));
  }
  MESA_ASSIGN_OR_RETURN(c.head_dim, f.GetIntOr(a + "attention.key_length", c.n_embd / c.n_head));
  if (f.Find(a + "attention.key_length") == nullptr && c.n_embd % c.n_head != 0) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": embedding length ",
                                                   c.n_embd, " is not a multiple of head count ", c.n_head));
  }
  MESA_ASSIGN_OR_RETURN(c.rope_dims, f.GetIntOr(a + "rope.dimension_count", c.head_dim));
  MESA_ASSIGN_OR_RETURN(double freq_base, f.GetFloatOr(a + "rope.freq_base", 10000.0));
  MESA_ASSIGN_OR_RETURN(c.rope_freq_base, Narrow(freq_base, "rope.freq_base", f.path()));
  MESA_ASSIGN_OR_RETURN(std::string scaling, f.GetStringOr(a + "rope.scaling.type", "none"));
  if (scaling == "linear") {
    MESA_ASSIGN_OR_RETURN(double factor, f.GetFloatOr(a + "rope.scaling.factor", 1.0));
    if (!(factor > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": rope scaling factor ", factor));
    }
    MESA_ASSIGN_OR_RETURN(c.rope_freq_scale, Narrow(1.0 / factor, "1 / rope.scaling.factor", f.path()));
  } else if (scaling == "none") {
    // Older files: a bare linear scale.
    MESA_ASSIGN_OR_RETURN(double linear, f.GetFloatOr(a + "rope.scale_linear", 1.0));
    if (!(linear > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": rope.scale_linear ", linear));
    }
    MESA_ASSIGN_OR_RETURN(c.rope_freq_scale, Narrow(1.0 / linear, "1 / rope.scale_linear", f.path()));
  } else {
    return absl::UnimplementedError(absl::StrCat("GGUF file ", f.path(), ": unsupported rope scaling type '",
                                                 scaling, "' (supported: none, linear)"));
  }
  switch (c.arch) {
    case Arch::kLlama:
    case Arch::kQwen2: {
      c.norm = NormType::kRms;
      MESA_ASSIGN_OR_RETURN(double eps, f.GetFloatOr(a + "attention.layer_norm_rms_epsilon", 1e-5));
      MESA_ASSIGN_OR_RETURN(c.norm_eps, Narrow(eps, "layer_norm_rms_epsilon", f.path()));
      c.position = PositionType::kRope;
      c.rope_style = c.arch == Arch::kQwen2 ? RopeStyle::kNeox : RopeStyle::kNormal;
      c.ffn = FfnType::kSwiGlu;
      break;
    }
    case Arch::kMpt: {
      c.norm = NormType::kLayerNorm;
      MESA_ASSIGN_OR_RETURN(double eps, f.GetFloatOr(a + "attention.layer_norm_epsilon", 1e-5));
      MESA_ASSIGN_OR_RETURN(c.norm_eps, Narrow(eps, "layer_norm_epsilon", f.path()));
      c.position = PositionType::kAlibi;
      c.rope_dims = 0;
      MESA_ASSIGN_OR_RETURN(double max_bias, f.GetFloatOr(a + "attention.max_alibi_bias", 8.0));
      MESA_ASSIGN_OR_RETURN(c.alibi_bias_max, Narrow(max_bias, "max_alibi_bias", f.path()));
      MESA_ASSIGN_OR_RETURN(double clamp, f.GetFloatOr(a + "attention.clamp_kqv", 0.0));
      MESA_ASSIGN_OR_RETURN(c.clamp_kqv, Narrow(clamp, "clamp_kqv", f.path()));
      c.ffn = FfnType::kGelu;
      break;
    }
  }
  return c;
}

namespace {

// Reads an optional number from a JSON object; wrong types are errors.
absl::Status JsonNumber(const nlohmann::json& j, const char* key, const std::string& origin, double* out,
                        bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat(origin, ": missing '", key, "'"));
    return absl::OkStatus();
  }
  if (!it->is_number()) return absl::InvalidArgumentError(absl::StrCat(origin, ": '", key, "' is not a number"));
  *out = it->get<double>();
  return absl::OkStatus();
}

absl::Status JsonInt(const nlohmann::json& j, const char* key, const std::string& origin, int64_t* out,
                     bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat(origin, ": missing '", key, "'"));
    return absl::OkStatus();
  }
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": '", key, "' is not an integer"));
  }
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ConfigFromHfJson(const std::string& json_text, const std::string& origin) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": not a JSON object"));
  }
  ModelConfig c;
  std::string arch;
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() &&
                                         (*it)[0].is_string()) {
    arch = (*it)[0].get<std::string>();
  }
  std::string model_type;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) model_type = it->get<std::string>();
  if (arch == "LlamaForCausalLM" || arch == "MistralForCausalLM" ||
      (arch.empty() && (model_type == "llama" || model_type == "mistral"))) {
    c.arch = Arch::kLlama;
    c.arch_name = "llama";
  } else if (arch == "Qwen2ForCausalLM" || (arch.empty() && model_type == "qwen2")) {
    c.arch = Arch::kQwen2;
    c.arch_name = "qwen2";
  } else {
    return absl::UnimplementedError(absl::StrCat(
        origin, ": unsupported architecture '", arch.empty() ? model_type : arch,
        "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"));
  }
  if (auto it = j.find("hidden_act"); it != j.end() && it->is_string() && it->get<std::string>() != "silu") {
    return absl::UnimplementedError(
        absl::StrCat(origin, ": unsupported hidden_act '", it->get<std::string>(), "' (expected silu)"));
  }
  MESA_RETURN_IF_ERROR(JsonInt(j, "hidden_size", origin, &c.n_embd, true));
  MESA_RETURN_IF_ERROR(JsonInt(j, "num_hidden_layers", origin, &c.n_layer, true));
  MESA_RETURN_IF_ERROR(JsonInt(j, "num_attention_heads", origin, &c.n_head, true));
  c.n_head_kv = c.n_head;
  MESA_RETURN_IF_ERROR(JsonInt(j, "num_key_value_heads", origin, &c.n_head_kv, false));
  MESA_RETURN_IF_ERROR(JsonInt(j, "intermediate_size", origin, &c.n_ff, true));
  MESA_RETURN_IF_ERROR(JsonInt(j, "max_position_embeddings", origin, &c.context_length, true));
  MESA_RETURN_IF_ERROR(JsonInt(j, "vocab_size", origin, &c.n_vocab, true));
  if (c.n_head <= 0) return absl::InvalidArgumentError(absl::StrCat(origin, ": head count ", c.n_head));
  c.head_dim = c.n_embd / c.n_head;
  MESA_RETURN_IF_ERROR(JsonInt(j, "head_dim", origin, &c.head_dim, false));
  c.rope_dims = c.head_dim;
  double eps = 1e-6, theta = 10000.0;
  MESA_RETURN_IF_ERROR(JsonNumber(j, "rms_norm_eps", origin, &eps, false));
  MESA_RETURN_IF_ERROR(JsonNumber(j, "rope_theta", origin, &theta, false));
  c.norm = NormType::kRms;
  MESA_ASSIGN_OR_RETURN(c.norm_eps, Narrow(eps, "rms_norm_eps", origin));
  c.position = PositionType::kRope;
  MESA_ASSIGN_OR_RETURN(c.rope_freq_base, Narrow(theta, "rope_theta", origin));
  // Hugging Face keeps q/k unpermuted: rotating halves is the same as GGUF's pairs.
  c.rope_style = RopeStyle::kNeox;
  c.ffn = FfnType::kSwiGlu;
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return absl::InvalidArgumentError(absl::StrCat(origin, ": rope_scaling is not an object"));
    std::string type;
    for (const char* k : {"rope_type", "type"}) {
      if (auto t = it->find(k); t != it->end() && t->is_string()) type = t->get<std::string>();
    }
    if (type == "linear") {
      double factor = 1.0;
      MESA_RETURN_IF_ERROR(JsonNumber(*it, "factor", origin, &factor, true));
      if (!(factor > 0)) return absl::InvalidArgumentError(absl::StrCat(origin, ": rope scaling factor ", factor));
      MESA_ASSIGN_OR_RETURN(c.rope_freq_scale, Narrow(1.0 / factor, "1 / rope_scaling.factor", origin));
    } else if (type != "default") {
      return absl::UnimplementedError(
          absl::StrCat(origin, ": unsupported rope_scaling type '", type, "' (supported: linear)"));
    }
  }
  return c;
}

}  // namespace mesa
