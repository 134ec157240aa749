// Tokenizer loaders: GGUF tokenizer.ggml.* metadata and Hugging Face tokenizer.json
// (+ tokenizer_config.json) are both turned into a VocabSpec, then into an
// SpmTokenizer or a BpeTokenizer.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "engine/bpe_tokenizer.h"
#include "engine/gguf.h"
#include "engine/spm_tokenizer.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_vocab.h"
#include "nlohmann/json.hpp"

namespace mesa {
namespace {

using Json = nlohmann::json;

// GGUF tokenizer.ggml.pre names (as llama.cpp spells them) -> scanner.
absl::StatusOr<PreTokenizerKind> GgufPreTokenizer(const std::string& pre, bool* ignore_merges,
                                                  bool* add_bos_default) {
  *ignore_merges = false;
  *add_bos_default = false;
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3" ||
      pre == "pixtral" || pre == "dbrx" || pre == "smaug-bpe") {
    *ignore_merges = pre != "dbrx" && pre != "smaug-bpe";
    *add_bos_default = *ignore_merges;
    return PreTokenizerKind::kLlama3;
  }
  if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "stablelm2" || pre == "megrez") {
    return PreTokenizerKind::kQwen2;
  }
  if (pre == "gpt-2" || pre == "default" || pre == "mpt" || pre == "olmo" || pre == "phi-2" ||
      pre == "jais" || pre == "roberta-bpe" || pre == "gigachat" || pre == "exaone4") {
    return PreTokenizerKind::kGpt2;
  }
  return absl::UnimplementedError(
      absl::StrCat("unsupported BPE pre-tokenizer '", pre, "' (tokenizer.ggml.pre)"));
}

absl::StatusOr<int32_t> GgufTokenId(const GgufFile& f, const std::string& key, size_t n) {
  MESA_ASSIGN_OR_RETURN(int64_t v, f.GetIntOr(key, -1));
  return v >= 0 && static_cast<uint64_t>(v) < n ? static_cast<int32_t>(v) : -1;
}

absl::StatusOr<VocabSpec> SpecFromGguf(const GgufFile& f) {
  VocabSpec spec;
  MESA_ASSIGN_OR_RETURN(const std::string model, f.GetString("tokenizer.ggml.model"));
  MESA_ASSIGN_OR_RETURN(spec.tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  const size_t n = spec.tokens.size();
  if (f.Find("tokenizer.ggml.scores") != nullptr) {
    MESA_ASSIGN_OR_RETURN(spec.scores, f.GetFloatArray("tokenizer.ggml.scores"));
    if (spec.scores.size() < n) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: tokenizer.ggml.scores has %d entries for %d tokens", f.path(),
                          spec.scores.size(), n));
    }
    spec.scores.resize(n);
  }
  if (f.Find("tokenizer.ggml.token_type") != nullptr) {
    MESA_ASSIGN_OR_RETURN(std::vector<int64_t> types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() < n) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: tokenizer.ggml.token_type has %d entries for %d tokens", f.path(), types.size(), n));
    }
    spec.types.resize(n);
    for (size_t i = 0; i < n; ++i) {
      spec.types[i] =
          types[i] >= 0 && types[i] <= 6 ? static_cast<TokenType>(types[i]) : TokenType::kUndefined;
    }
  }
  MESA_ASSIGN_OR_RETURN(spec.bos_id, GgufTokenId(f, "tokenizer.ggml.bos_token_id", n));
  MESA_ASSIGN_OR_RETURN(spec.eos_id, GgufTokenId(f, "tokenizer.ggml.eos_token_id", n));
  MESA_ASSIGN_OR_RETURN(spec.unk_id, GgufTokenId(f, "tokenizer.ggml.unknown_token_id", n));
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    MESA_ASSIGN_OR_RETURN(int32_t id, GgufTokenId(f, key, n));
    if (id >= 0) spec.extra_eog_ids.push_back(id);
  }

  bool add_bos_default;
  if (model == "llama") {
    spec.model = VocabSpec::Model::kSpm;
    MESA_ASSIGN_OR_RETURN(const bool prefix, f.GetBoolOr("tokenizer.ggml.add_space_prefix", true));
    spec.space_prefix = prefix ? SpacePrefix::kAlways : SpacePrefix::kNever;
    spec.strip_decoded_space = prefix;
    spec.escape_whitespace = true;
    spec.byte_fallback = true;
    spec.fuse_unk = true;
    add_bos_default = true;
    spec.kind = "spm";
  } else if (model == "gpt2") {
    spec.model = VocabSpec::Model::kBpe;
    MESA_ASSIGN_OR_RETURN(const std::string pre, f.GetStringOr("tokenizer.ggml.pre", "default"));
    MESA_ASSIGN_OR_RETURN(spec.pre_tokenizer,
                          GgufPreTokenizer(pre, &spec.ignore_merges, &add_bos_default));
    spec.byte_level = true;
    spec.byte_fallback = false;
    MESA_ASSIGN_OR_RETURN(std::vector<std::string> merges,
                          f.GetStringArray("tokenizer.ggml.merges"));
    spec.merges.reserve(merges.size());
    for (const std::string& m : merges) {
      const size_t space = m.find(' ', 1);
      if (space == std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(f.path(), ": malformed tokenizer.ggml.merges entry '", m, "'"));
      }
      spec.merges.emplace_back(m.substr(0, space), m.substr(space + 1));
    }
    spec.kind = absl::StrCat("bpe/", pre);
  } else {
    return absl::UnimplementedError(
        absl::StrCat(f.path(), ": unsupported tokenizer model '", model, "'"));
  }
  MESA_ASSIGN_OR_RETURN(spec.add_bos, f.GetBoolOr("tokenizer.ggml.add_bos_token", add_bos_default));
  MESA_ASSIGN_OR_RETURN(spec.add_eos, f.GetBoolOr("tokenizer.ggml.add_eos_token", false));
  return spec;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return ss.str();
}

absl::StatusOr<Json> ParseJsonFile(const std::string& path) {
  MESA_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON"));
  return j;
}

// The Split regexes of Hugging Face pre-tokenizers that have a scanner.
absl::StatusOr<PreTokenizerKind> HfSplitPattern(const std::string& re) {
  static const char kLlama3[] =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const char kQwen2[] =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const char kGpt2[] =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  if (re == kLlama3) return PreTokenizerKind::kLlama3;
  if (re == kQwen2) return PreTokenizerKind::kQwen2;
  if (re == kGpt2) return PreTokenizerKind::kGpt2;
  return absl::UnimplementedError(absl::StrCat("unsupported pre-tokenizer Split regex: ", re));
}

absl::Status ApplyHfNormalizer(const Json& n, VocabSpec* spec, bool* prepend) {
  if (n.is_null()) return absl::OkStatus();
  const std::string type = n.value("type", "");
  if (type == "Sequence") {
    for (const Json& sub : n.at("normalizers"))
      MESA_RETURN_IF_ERROR(ApplyHfNormalizer(sub, spec, prepend));
    return absl::OkStatus();
  }
  if (type == "Prepend" && n.value("prepend", "") == "\xE2\x96\x81") {
    *prepend = true;
    return absl::OkStatus();
  }
  if (type == "Replace" && n.contains("pattern") && n["pattern"].value("String", "") == " " &&
      n.value("content", "") == "\xE2\x96\x81") {
    spec->escape_whitespace = true;
    return absl::OkStatus();
  }
  return absl::UnimplementedError(
      absl::StrCat("unsupported tokenizer.json normalizer: ", n.dump()));
}

absl::Status ApplyHfPreTokenizer(const Json& p, VocabSpec* spec) {
  if (p.is_null()) return absl::OkStatus();
  const std::string type = p.value("type", "");
  if (type == "Sequence") {
    for (const Json& sub : p.at("pretokenizers"))
      MESA_RETURN_IF_ERROR(ApplyHfPreTokenizer(sub, spec));
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    spec->byte_level = true;
    spec->byte_fallback = false;
    if (p.value("add_prefix_space", false)) spec->space_prefix = SpacePrefix::kIfMissing;
    if (p.value("use_regex", true)) spec->pre_tokenizer = PreTokenizerKind::kGpt2;
    return absl::OkStatus();
  }
  if (type == "Split" && p.contains("pattern") && p["pattern"].contains("Regex") &&
      p.value("behavior", "") == "Isolated" && !p.value("invert", false)) {
    MESA_ASSIGN_OR_RETURN(spec->pre_tokenizer,
                          HfSplitPattern(p["pattern"]["Regex"].get<std::string>()));
    return absl::OkStatus();
  }
  if (type == "Metaspace" && p.value("replacement", "") == "\xE2\x96\x81") {
    spec->escape_whitespace = true;
    std::string scheme = p.value("prepend_scheme", "");
    if (scheme.empty()) scheme = p.value("add_prefix_space", true) ? "always" : "never";
    spec->space_prefix = scheme == "always"  ? SpacePrefix::kAlways
                         : scheme == "first" ? SpacePrefix::kFirst
                                             : SpacePrefix::kNever;
    spec->strip_decoded_space = spec->space_prefix != SpacePrefix::kNever;
    if (p.value("split", true)) spec->pre_tokenizer = PreTokenizerKind::kMetaspace;
    return absl::OkStatus();
  }
  return absl::UnimplementedError(
      absl::StrCat("unsupported tokenizer.json pre_tokenizer: ", p.dump()));
}

// "<s>" or {"content": "<s>", ...} -> the text, or "".
std::string HfTokenContent(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return "";
}

absl::StatusOr<VocabSpec> SpecFromHfJson(const Json& j, const Json& config,
                                         const std::string& path) {
  VocabSpec spec;
  spec.model = VocabSpec::Model::kBpe;
  spec.byte_fallback = false;
  spec.fuse_unk = false;
  const Json& model = j.at("model");
  const std::string type = model.value("type", "BPE");
  if (type != "BPE") {
    return absl::UnimplementedError(absl::StrCat(path, ": unsupported model type '", type, "'"));
  }
  // Vocabulary plus added tokens; ids may leave holes, which stay unused.
  int64_t max_id = -1;
  for (const auto& [text, id] : model.at("vocab").items())
    max_id = std::max<int64_t>(max_id, id.get<int64_t>());
  const Json empty_array = Json::array();
  const Json& added = j.contains("added_tokens") ? j["added_tokens"] : empty_array;
  for (const Json& t : added) max_id = std::max<int64_t>(max_id, t.at("id").get<int64_t>());
  if (max_id < 0 || max_id >= (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad vocabulary size"));
  }
  spec.tokens.assign(max_id + 1, "");
  spec.types.assign(max_id + 1, TokenType::kUnused);
  for (const auto& [text, id] : model.at("vocab").items()) {
    const int64_t i = id.get<int64_t>();
    if (i < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": negative token id"));
    spec.tokens[i] = text;
    spec.types[i] = TokenType::kNormal;
  }
  const std::string unk = model.contains("unk_token") && model["unk_token"].is_string()
                              ? model["unk_token"].get<std::string>()
                              : "";
  const auto find_token = [&spec](const std::string& text) -> int32_t {
    if (text.empty()) return -1;
    for (size_t i = 0; i < spec.tokens.size(); ++i) {
      if (spec.tokens[i] == text) return static_cast<int32_t>(i);
    }
    return -1;
  };
  for (const Json& t : added) {
    const int64_t id = t.at("id").get<int64_t>();
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": negative token id"));
    spec.tokens[id] = t.at("content").get<std::string>();
    const bool special = t.value("special", false);
    spec.types[id] = special ? TokenType::kControl : TokenType::kUserDefined;
    if (t.value("lstrip", false)) spec.lstrip_ids.insert(static_cast<int32_t>(id));
    if (t.value("rstrip", false)) spec.rstrip_ids.insert(static_cast<int32_t>(id));
  }
  spec.unk_id = find_token(unk);
  if (spec.unk_id >= 0) spec.types[spec.unk_id] = TokenType::kUnknown;

  if (model.contains("merges")) {
    for (const Json& m : model["merges"]) {
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos) {
          return absl::InvalidArgumentError(absl::StrCat(path, ": malformed merge '", s, "'"));
        }
        spec.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (m.is_array() && m.size() == 2) {
        spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        return absl::InvalidArgumentError(absl::StrCat(path, ": malformed merge ", m.dump()));
      }
    }
  }
  spec.byte_fallback = model.value("byte_fallback", false);
  spec.fuse_unk = model.value("fuse_unk", false);
  spec.ignore_merges = model.value("ignore_merges", false);

  bool prepend = false;
  if (j.contains("normalizer"))
    MESA_RETURN_IF_ERROR(ApplyHfNormalizer(j["normalizer"], &spec, &prepend));
  if (prepend) {
    if (!spec.escape_whitespace) {
      return absl::UnimplementedError(absl::StrCat(path, ": Prepend normalizer without Replace"));
    }
    spec.space_prefix = SpacePrefix::kFirst;
    spec.strip_decoded_space = true;
  }
  if (j.contains("pre_tokenizer"))
    MESA_RETURN_IF_ERROR(ApplyHfPreTokenizer(j["pre_tokenizer"], &spec));

  // BOS/EOS from the post-processor template, overridden by tokenizer_config.json.
  const auto template_of = [](const Json& pp) -> const Json* {
    if (pp.is_null()) return nullptr;
    if (pp.value("type", "") == "TemplateProcessing") return &pp;
    if (pp.value("type", "") == "Sequence" && pp.contains("processors")) {
      for (const Json& sub : pp["processors"]) {
        if (sub.value("type", "") == "TemplateProcessing") return &sub;
      }
    }
    return nullptr;
  };
  if (j.contains("post_processor")) {
    if (const Json* tp = template_of(j["post_processor"]);
        tp != nullptr && tp->contains("single")) {
      const Json& single = (*tp)["single"];
      const auto special_id = [&](const Json& item) -> int32_t {
        if (!item.contains("SpecialToken")) return -1;
        return find_token(item["SpecialToken"].value("id", ""));
      };
      if (!single.empty() && single.front().contains("SpecialToken")) {
        spec.bos_id = special_id(single.front());
        spec.add_bos = spec.bos_id >= 0;
      }
      if (single.size() > 1 && single.back().contains("SpecialToken")) {
        spec.eos_id = special_id(single.back());
        spec.add_eos = spec.eos_id >= 0;
      }
    }
  }
  if (config.is_object()) {
    if (config.contains("bos_token")) {
      if (int32_t id = find_token(HfTokenContent(config["bos_token"])); id >= 0) spec.bos_id = id;
    }
    if (config.contains("eos_token")) {
      if (int32_t id = find_token(HfTokenContent(config["eos_token"])); id >= 0) spec.eos_id = id;
    }
    if (config.contains("add_bos_token") && config["add_bos_token"].is_boolean()) {
      spec.add_bos = config["add_bos_token"].get<bool>();
    }
    if (config.contains("add_eos_token") && config["add_eos_token"].is_boolean()) {
      spec.add_eos = config["add_eos_token"].get<bool>();
    }
  }
  spec.kind = spec.byte_level ? "bpe/hf-byte-level" : "bpe/hf";
  return spec;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> BuildTokenizer(const VocabSpec& spec) {
  if (spec.model == VocabSpec::Model::kSpm) {
    MESA_ASSIGN_OR_RETURN(std::unique_ptr<SpmTokenizer> t, SpmTokenizer::Create(spec));
    return std::unique_ptr<Tokenizer>(std::move(t));
  }
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> t, BpeTokenizer::Create(spec));
  return std::unique_ptr<Tokenizer>(std::move(t));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> CreateTokenizerFromGguf(const GgufFile& file) {
  MESA_ASSIGN_OR_RETURN(VocabSpec spec, SpecFromGguf(file));
  return BuildTokenizer(spec);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> CreateTokenizerFromHfJson(const std::string& path) {
  MESA_ASSIGN_OR_RETURN(Json j, ParseJsonFile(path));
  Json config;
  const std::filesystem::path config_path =
      std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::exists(config_path, ec)) {
    MESA_ASSIGN_OR_RETURN(config, ParseJsonFile(config_path.string()));
  }
  try {
    MESA_ASSIGN_OR_RETURN(VocabSpec spec, SpecFromHfJson(j, config, path));
    return BuildTokenizer(spec);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unexpected tokenizer.json structure: ", e.what()));
  }
}

}  // namespace mesa
