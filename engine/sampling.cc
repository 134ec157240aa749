#include "engine/sampling.h"

#include <algorithm>
#include <cmath>

namespace mesa {

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Argmax(absl::Span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  if (params_.temperature <= 0.0f) return Argmax(logits);
  candidates_.clear();
  candidates_.reserve(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    candidates_.emplace_back(logits[i] / params_.temperature, static_cast<int32_t>(i));
  }
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = params_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
    candidates_.resize(keep);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  // Softmax over the kept candidates (sorted descending).
  const float mx = candidates_[0].first;
  std::vector<double> probs(candidates_.size());
  double sum = 0;
  for (size_t i = 0; i < candidates_.size(); ++i) sum += probs[i] = std::exp(candidates_[i].first - mx);
  for (double& p : probs) p /= sum;
  if (params_.top_p < 1.0f) {
    double cum = 0;
    size_t cut = probs.size();
    for (size_t i = 0; i < probs.size(); ++i) {
      cum += probs[i];
      if (cum >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    probs.resize(cut);
    double s = 0;
    for (double p : probs) s += p;
    for (double& p : probs) p /= s;
  }
  std::uniform_real_distribution<double> u(0.0, 1.0);
  double r = u(rng_);
  double cum = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    cum += probs[i];
    if (r < cum) return candidates_[i].second;
  }
  return candidates_[probs.size() - 1].second;
}

}  // namespace mesa
