#include "engine/long_context.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/mesa_phases.h"

namespace mesa {

class LongContextRunner::Impl {
 public:
  Impl(const Model& model, Backend& backend, LongContextOptions options)
      : model_(model), backend_(backend), options_(std::move(options)), runner_(model, backend) {}

  absl::StatusOr<PrefillInfo> Prefill(absl::Span<const int32_t> prompt, int64_t max_new,
                                      LogitsMode mode, std::vector<float>* logits);
  absl::Status DecodeStep(int32_t token, std::vector<float>* logits);
  const Model& model() const { return model_; }
  void SetStopCheck(std::function<bool()> stop) { stop_ = std::move(stop); }

 private:
  absl::Status CheckStop() const {
    return stop_ && stop_() ? absl::CancelledError("the prefill was stopped between Mesa phases") : absl::OkStatus();
  }
  absl::StatusOr<PrefillInfo> PrefillMesa(absl::Span<const int32_t> prompt, const MesaPlan& plan,
                                          LogitsMode mode, std::vector<float>* logits);
  absl::Status PrefillWhole(absl::Span<const int32_t> prompt, int64_t max_new,
                            const AttentionSetup& setup, LogitsMode mode,
                            std::vector<float>* logits);

  const Model& model_;
  Backend& backend_;
  LongContextOptions options_;
  ModelRunner runner_;
  // After Prefill: either a whole-sequence cache (full, self-extend, rerope, or mesa
  // on an input that fits) or Mesa's final state.
  std::optional<KvCache> cache_;
  AttentionSetup setup_;
  std::unique_ptr<MesaPhases> phases_;
  std::optional<MesaState> mesa_state_;
  std::function<bool()> stop_;
};

absl::Status LongContextRunner::Impl::PrefillWhole(absl::Span<const int32_t> prompt,
                                                   int64_t max_new, const AttentionSetup& setup,
                                                   LogitsMode mode, std::vector<float>* logits) {
  setup_ = setup;
  cache_.reset();
  MESA_ASSIGN_OR_RETURN(KvCache cache,
                        runner_.MakeCache(InitialCacheTokens(static_cast<int64_t>(prompt.size()), max_new), setup.keys));
  cache_.emplace(std::move(cache));
  return runner_.Forward(prompt, *cache_, mode, logits, setup_);
}

absl::StatusOr<PrefillInfo> LongContextRunner::Impl::PrefillMesa(absl::Span<const int32_t> prompt,
                                                                 const MesaPlan& plan,
                                                                 LogitsMode mode,
                                                                 std::vector<float>* logits) {
  phases_ = std::make_unique<MesaPhases>(model_, backend_, plan);
  const bool all = mode == LogitsMode::kAll && logits;
  const int64_t v = model_.config.n_vocab;
  if (all) logits->clear();
  std::vector<float> part;
  auto tokens = [&](TokenRange r) { return prompt.subspan(r.begin, r.size()); };
  MESA_ASSIGN_OR_RETURN(ChunkKv anchor, phases_->RunAnchor(tokens(plan.anchor), all ? &part : nullptr));
  if (all) logits->insert(logits->end(), part.begin(), part.end());
  MESA_RETURN_IF_ERROR(CheckStop());
  // Each middle chunk's K/V goes into the final cache as soon as it is computed, so
  // the prompt's K/V is held once.
  MESA_ASSIGN_OR_RETURN(MesaState state, phases_->StartFinal(anchor, InitialCacheTokens(plan.n, plan.max_new_tokens)));
  for (const TokenRange& r : plan.middle) {
    MESA_ASSIGN_OR_RETURN(ChunkKv kv, phases_->RunMiddle(anchor, tokens(r), r, all ? &part : nullptr));
    if (all) logits->insert(logits->end(), part.begin(), part.end());
    MESA_RETURN_IF_ERROR(phases_->AddMiddle(state, kv));
    MESA_RETURN_IF_ERROR(CheckStop());
  }
  MESA_RETURN_IF_ERROR(phases_->FinishFinal(state, tokens(plan.last), all ? LogitsMode::kAll : mode,
                                            all ? &part : logits));
  if (all) {
    logits->insert(logits->end(), part.begin(), part.end());
    if (static_cast<int64_t>(logits->size()) != static_cast<int64_t>(prompt.size()) * v) {
      return absl::InternalError("mesa phases did not cover the prompt");
    }
  }
  mesa_state_.emplace(std::move(state));
  PrefillInfo info;
  info.method = AttentionMethod::kMesa;
  info.plan = plan;
  info.train_length = plan.train_length;
  return info;
}

absl::StatusOr<PrefillInfo> LongContextRunner::Impl::Prefill(absl::Span<const int32_t> prompt,
                                                             int64_t max_new, LogitsMode mode,
                                                             std::vector<float>* logits) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  if (max_new < 0) return absl::InvalidArgumentError("max_new_tokens < 0");
  if (max_new > kMaxPlanTokens) {  // positions below would overflow
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens = ", max_new, " is larger than the limit ", kMaxPlanTokens));
  }
  cache_.reset();
  mesa_state_.reset();
  phases_.reset();
  const int64_t n = static_cast<int64_t>(prompt.size());
  MESA_ASSIGN_OR_RETURN(const int64_t t_len, TrainLengthFor(model_, options_));
  PrefillInfo info;
  info.train_length = t_len;
  AttentionMethod method = options_.method == AttentionMethod::kAuto ? AttentionMethod::kMesa
                                                                     : options_.method;
  info.method = method;
  const int64_t d_max = n + max_new - 1;
  switch (method) {
    case AttentionMethod::kAuto:
    case AttentionMethod::kMesa: {
      MESA_ASSIGN_OR_RETURN(MesaPlan plan, PlanFor(model_, options_, n, max_new));
      if (plan.chunked) return PrefillMesa(prompt, plan, mode, logits);
      // The input fits: plain attention, exactly the base model.
      info.plan = plan;
      MESA_RETURN_IF_ERROR(PrefillWhole(prompt, max_new, {}, mode, logits));
      return info;
    }
    case AttentionMethod::kFull:
      MESA_RETURN_IF_ERROR(PrefillWhole(prompt, max_new, {}, mode, logits));
      return info;
    case AttentionMethod::kReRope: {
      AttentionSetup s;
      s.keys = KeyEncoding::kRaw;
      s.rel.kind = RelativePosition::Kind::kClamp;
      s.rel.window = options_.rerope_window > 0 ? options_.rerope_window
                                                : std::min<int64_t>(512, t_len / 2);
      if (s.rel.window >= t_len) {
        return absl::InvalidArgumentError(absl::StrCat("ReRoPE window ", s.rel.window,
                                                       " must be below the trained length ", t_len));
      }
      info.rel = s.rel;
      MESA_RETURN_IF_ERROR(PrefillWhole(prompt, max_new, s, mode, logits));
      return info;
    }
    case AttentionMethod::kSelfExtend: {
      AttentionSetup s;
      s.keys = KeyEncoding::kRaw;
      s.rel.kind = RelativePosition::Kind::kSelfExtend;
      s.rel.window = options_.se_window > 0 ? options_.se_window : t_len / 4;
      if (s.rel.window >= t_len) {
        return absl::InvalidArgumentError(absl::StrCat("Self-Extend window ", s.rel.window,
                                                       " must be below the trained length ", t_len));
      }
      // Largest relative position: the last query against key 0.
      auto max_rel = [&](int64_t g) { return d_max / g + s.rel.window - s.rel.window / g; };
      int64_t g = options_.se_group;
      if (g <= 0) {
        g = 1;
        while (max_rel(g) >= t_len && g < d_max + 1) ++g;
      }
      if (max_rel(g) >= t_len) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Self-Extend group ", g, " with window ", s.rel.window, " reaches position ", max_rel(g),
            " >= trained length ", t_len, ": raise --se-group or lower --se-window"));
      }
      s.rel.group = g;
      info.rel = s.rel;
      MESA_RETURN_IF_ERROR(PrefillWhole(prompt, max_new, s, mode, logits));
      return info;
    }
  }
  return absl::InternalError("unreachable");
}

absl::Status LongContextRunner::Impl::DecodeStep(int32_t token, std::vector<float>* logits) {
  if (mesa_state_) return phases_->Decode(*mesa_state_, token, logits);
  if (!cache_) return absl::FailedPreconditionError("DecodeStep before Prefill");
  return runner_.Forward({&token, 1}, *cache_, LogitsMode::kLast, logits, setup_);
}

LongContextRunner::LongContextRunner(const Model& model, Backend& backend,
                                     LongContextOptions options)
    : impl_(std::make_unique<Impl>(model, backend, std::move(options))) {}
LongContextRunner::~LongContextRunner() = default;

absl::StatusOr<PrefillInfo> LongContextRunner::Prefill(absl::Span<const int32_t> prompt,
                                                       int64_t max_new_tokens, LogitsMode mode,
                                                       std::vector<float>* logits) {
  return impl_->Prefill(prompt, max_new_tokens, mode, logits);
}

absl::Status LongContextRunner::DecodeStep(int32_t token, std::vector<float>* logits) {
  return impl_->DecodeStep(token, logits);
}

const Model& LongContextRunner::model() const { return impl_->model(); }

void LongContextRunner::SetStopCheck(std::function<bool()> stop) { impl_->SetStopCheck(std::move(stop)); }

absl::StatusOr<LongGenerateResult> GenerateLong(LongContextRunner& runner,
                                                absl::Span<const int32_t> prompt,
                                                const GenerateOptions& options) {
  LongGenerateResult out;
  MESA_ASSIGN_OR_RETURN(
      out.generation,
      GenerateWith(
          [&](std::vector<float>* logits) -> absl::Status {
            MESA_ASSIGN_OR_RETURN(out.prefill,
                                  runner.Prefill(prompt, std::max<int64_t>(options.max_new_tokens, 0),
                                                 LogitsMode::kLast, logits));
            return absl::OkStatus();
          },
          [&](int32_t token, std::vector<float>* logits) { return runner.DecodeStep(token, logits); },
          runner.model().tokenizer.get(), static_cast<int64_t>(prompt.size()), options));
  return out;
}

}  // namespace mesa
