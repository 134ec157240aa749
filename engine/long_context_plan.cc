// The light half of engine/long_context.h: method names, the trained length in force and
// the Mesa plan a prompt gets (PlanFor). No compute: the distributed runtime's request
// validation (and the RPC fuzzer, fuzz/rpc_fuzzer.cc) link this without the kernels.
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/long_context.h"

namespace mesa {

const char* AttentionMethodName(AttentionMethod m) {
  switch (m) {
    case AttentionMethod::kAuto: return "auto";
    case AttentionMethod::kMesa: return "mesa";
    case AttentionMethod::kFull: return "full";
    case AttentionMethod::kSelfExtend: return "self-extend";
    case AttentionMethod::kReRope: return "rerope";
  }
  return "?";
}

absl::StatusOr<AttentionMethod> ParseAttentionMethod(const std::string& name) {
  for (AttentionMethod m : {AttentionMethod::kAuto, AttentionMethod::kMesa, AttentionMethod::kFull,
                            AttentionMethod::kSelfExtend, AttentionMethod::kReRope}) {
    if (name == AttentionMethodName(m)) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown attention method '", name, "' (choose auto, mesa, full, self-extend or rerope)"));
}

nlohmann::json PrefillInfo::ToJson() const {
  nlohmann::json j = {{"attention", AttentionMethodName(method)}, {"train_length", train_length}};
  if (method == AttentionMethod::kMesa) j["plan"] = PlanToJson(plan);
  if (method == AttentionMethod::kSelfExtend) {
    j["se_group"] = rel.group;
    j["se_window"] = rel.window;
  }
  if (method == AttentionMethod::kReRope) j["rerope_window"] = rel.window;
  return j;
}

absl::StatusOr<int64_t> TrainLengthFor(const Model& model, const LongContextOptions& options) {
  const int64_t t_len = options.mesa.train_length > 0 ? options.mesa.train_length
                                                      : model.config.context_length;
  if (t_len <= 1) {
    return absl::InvalidArgumentError(
        "the model does not state its trained context length: pass --train-length");
  }
  return t_len;
}

absl::StatusOr<MesaPlan> PlanFor(const Model& model, const LongContextOptions& options, int64_t n,
                                 int64_t max_new_tokens) {
  MESA_ASSIGN_OR_RETURN(const int64_t t_len, TrainLengthFor(model, options));
  MesaOptions mo = options.mesa;
  mo.train_length = t_len;
  return PlanMesa(n, max_new_tokens, t_len, mo);
}

}  // namespace mesa
