// Scalar reference for kernels/attention.h: every (query, head, key) logit computed
// on its own from the formula in the header, rotations and accumulation in double,
// no blocking and no tables. This is the specification cpu::Attention (and any other
// backend) is tested against, so it favours being obviously right over being fast.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/attention.h"
#include "kernels/nn.h"

namespace mesa {

namespace ref {
namespace {

// cos and sin of r * freq_scale * base^(-2i/rope_dims) in double, the angles of
// ref::Rope, for every relative position r the call meets (computed once: the
// per-pair loop below is the slow part of every test that uses this reference).
class RotationTable {
 public:
  RotationTable(const RopeParams& rp, int64_t max_r) : rp_(rp), half_(rp.rope_dims / 2) {
    cs_.resize((max_r + 1) * half_ * 2);
    for (int64_t r = 0; r <= max_r; ++r) {
      for (int64_t i = 0; i < half_; ++i) {
        const double inv_freq =
            std::pow(static_cast<double>(rp.freq_base), -2.0 * i / rp.rope_dims);
        const double angle = static_cast<double>(r) * rp.freq_scale * inv_freq;
        cs_[(r * half_ + i) * 2] = std::cos(angle);
        cs_[(r * half_ + i) * 2 + 1] = std::sin(angle);
      }
    }
  }

  // out = x rotated by r, as ref::Rope rotates by position r, kept in double.
  void Rotate(const float* x, int64_t r, double* out) const {
    for (int64_t d = 0; d < rp_.head_dim; ++d) out[d] = x[d];
    for (int64_t i = 0; i < half_; ++i) {
      const double c = cs_[(r * half_ + i) * 2], s = cs_[(r * half_ + i) * 2 + 1];
      const int64_t a = rp_.neox ? i : 2 * i;
      const int64_t b = rp_.neox ? i + half_ : 2 * i + 1;
      const double x0 = x[a], x1 = x[b];
      out[a] = x0 * c - x1 * s;
      out[b] = x0 * s + x1 * c;
    }
  }

 private:
  RopeParams rp_;
  int64_t half_;
  std::vector<double> cs_;
};

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "ref::Attention: bad parameters: %s\n", what);
    std::abort();
  }
}

}  // namespace

void Attention(const AttentionParams& p) {
  Check(p.n_head > 0 && p.n_head_kv > 0 && p.n_head % p.n_head_kv == 0, "head counts");
  Check(p.head_dim > 0 && p.n_kv <= p.kv_stride, "head_dim / kv_stride");
  Check(p.mode != AttentionPositionMode::kAlibi || p.alibi_slopes != nullptr, "alibi slopes");
  Check(p.rel.kind != RelativePosition::Kind::kStair || p.rel.e >= 1, "stair e >= 1");
  Check(p.kv_type == DType::kF32, "f32 K/V (the reference reads no other K/V type)");
  Check(p.rel.kind != RelativePosition::Kind::kSelfExtend || p.rel.group >= 1, "group >= 1");
  const bool rope = p.mode == AttentionPositionMode::kRopeRaw;
  if (rope) {
    Check(p.rope.head_dim == p.head_dim, "rope.head_dim == head_dim");
    Check(p.rope.rope_dims % 2 == 0 && p.rope.rope_dims <= p.head_dim, "rope_dims");
  }
  const int64_t hd = p.head_dim;
  const int64_t group = p.n_head / p.n_head_kv;
  int64_t max_r = 0;
  for (int64_t i = 0; i < p.n_q; ++i) {
    if (p.q_pos[i] >= p.kv_pos0) max_r = std::max(max_r, p.rel(p.q_pos[i], p.kv_pos0));
  }
  const RotationTable rot(rope ? p.rope : RopeParams{}, rope ? max_r : -1);
  std::vector<double> scores(p.n_kv), acc(hd), qrot(hd);
  for (int64_t i = 0; i < p.n_q; ++i) {
    const int64_t t = p.q_pos[i];
    const double qscale = p.scale * LognFactor(t, p.logn_train_length);
    for (int64_t h = 0; h < p.n_head; ++h) {
      const int64_t kvh = h / group;
      const float* q = p.q + (i * p.n_head + h) * hd;
      double mx = -INFINITY;
      int64_t visible = 0;
      for (int64_t j = 0; j < p.n_kv; ++j) {
        const int64_t kpos = p.kv_pos0 + j;
        if (kpos > t) {
          scores[j] = -INFINITY;
          continue;
        }
        const int64_t r = p.rel(t, kpos);
        const float* k = static_cast<const float*>(p.k) + (kvh * p.kv_stride + j) * hd;
        if (rope) {
          rot.Rotate(q, r, qrot.data());
        } else {
          for (int64_t d = 0; d < hd; ++d) qrot[d] = q[d];
        }
        double s = 0;
        for (int64_t d = 0; d < hd; ++d) s += qrot[d] * k[d];
        s *= qscale;
        if (p.mode == AttentionPositionMode::kAlibi) {
          s -= static_cast<double>(p.alibi_slopes[h]) * static_cast<double>(r);
        }
        scores[j] = s;
        mx = std::max(mx, s);
        ++visible;
      }
      float* out = p.out + (i * p.n_head + h) * hd;
      if (visible == 0) {
        for (int64_t d = 0; d < hd; ++d) out[d] = 0.0f;
        continue;
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < p.n_kv; ++j) {
        if (scores[j] == -INFINITY) continue;
        const double w = std::exp(scores[j] - mx);
        sum += w;
        const float* v = static_cast<const float*>(p.v) + (kvh * p.kv_stride + j) * hd;
        for (int64_t d = 0; d < hd; ++d) acc[d] += w * v[d];
      }
      for (int64_t d = 0; d < hd; ++d) out[d] = static_cast<float>(acc[d] / sum);
    }
  }
}

}  // namespace ref
}  // namespace mesa
