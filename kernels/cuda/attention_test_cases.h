// Test cases of the CUDA attention kernels, shared by the device test (attention_test.cc)
// and the host emulation test (attention_emu_test.cc): random inputs, the reference
// (ref::Attention), and the comparison. No CUDA here.
//
// Tolerance: 1e-4 of the output scale (max |ref|). The kernel computes in f32 with
// angles reduced in double; its error against the double reference is ~1e-6 of the
// scale on these sizes, so 1e-4 catches any indexing, masking or rotation mistake
// (those move outputs by ~1e-2 or more) while leaving room for f32 accumulation.
// Outputs are poisoned (NaN) before every run; NaN never passes.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention.h"

namespace mesa::cuda::attn_test {

using Kind = RelativePosition::Kind;

struct Variant {
  const char* name;
  AttentionPositionMode mode;
  Kind kind;
};
inline void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

inline const Variant kVariants[] = {
    {"none", AttentionPositionMode::kNone, Kind::kExact},
    {"alibi_exact", AttentionPositionMode::kAlibi, Kind::kExact},
    {"alibi_stair", AttentionPositionMode::kAlibi, Kind::kStair},
    {"alibi_clamp", AttentionPositionMode::kAlibi, Kind::kClamp},
    {"alibi_selfextend", AttentionPositionMode::kAlibi, Kind::kSelfExtend},
    {"rope_exact", AttentionPositionMode::kRopeRaw, Kind::kExact},
    {"rope_stair", AttentionPositionMode::kRopeRaw, Kind::kStair},
    {"rope_clamp", AttentionPositionMode::kRopeRaw, Kind::kClamp},
    {"rope_selfextend", AttentionPositionMode::kRopeRaw, Kind::kSelfExtend},
};

// Relative-position parameters small enough that the test sizes cross every boundary
// (near/far regions inside one key tile, stair levels of E keys).
inline RelativePosition Rel(Kind kind) {
  RelativePosition r;
  r.kind = kind;
  r.n = 20;
  r.e = 3;
  r.window = kind == Kind::kClamp ? 40 : 24;
  r.group = 4;
  return r;
}

struct Case {
  Variant var;
  int64_t n_q = 1, n_kv = 1, kv_stride = 1, kv_pos0 = 0;
  int64_t n_head = 4, n_head_kv = 4, head_dim = 64;
  int64_t logn = 0;
  int64_t rope_dims = -1;  // -1: head_dim
  bool neox = false;
  float freq_scale = 1.0f;
  RelativePosition rel;
  bool rel_set = false;
  std::vector<int64_t> q_pos;  // empty: the last n_q positions of the keys (+ gap)
  int64_t gap = 0;
};

inline std::string Describe(const Case& c) {
  return std::string(c.var.name) + " n_q=" + std::to_string(c.n_q) +
         " n_kv=" + std::to_string(c.n_kv) + " stride=" + std::to_string(c.kv_stride) +
         " pos0=" + std::to_string(c.kv_pos0) + " heads=" + std::to_string(c.n_head) + "/" +
         std::to_string(c.n_head_kv) + " hd=" + std::to_string(c.head_dim) +
         " logn=" + std::to_string(c.logn) + " neox=" + std::to_string(c.neox) +
         " rope_dims=" + std::to_string(c.rope_dims) + " gap=" + std::to_string(c.gap);
}

// Host inputs of a case; `params` has the host pointers (for the reference).
struct Inputs {
  std::vector<float> q, k, v, slopes;
  std::vector<int64_t> q_pos;
  AttentionParams params;
};

inline Inputs MakeInputs(const Case& c, uint64_t seed) {
  Inputs in;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  const int64_t hd = c.head_dim;
  in.q.resize(c.n_q * c.n_head * hd);
  in.k.resize(c.n_head_kv * c.kv_stride * hd);
  in.v.resize(in.k.size());
  for (float& x : in.q) x = uni(rng);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t h = 0; h < c.n_head_kv; ++h) {
    for (int64_t j = 0; j < c.kv_stride; ++j) {
      for (int64_t d = 0; d < hd; ++d) {
        const int64_t at = (h * c.kv_stride + j) * hd + d;
        in.k[at] = j < c.n_kv ? uni(rng) : nan;  // rows past n_kv are never read
        in.v[at] = j < c.n_kv ? uni(rng) : nan;
      }
    }
  }
  in.q_pos = c.q_pos;
  if (in.q_pos.empty()) {
    for (int64_t i = 0; i < c.n_q; ++i) {
      in.q_pos.push_back(std::max<int64_t>(0, c.kv_pos0 + c.n_kv - c.n_q + i + c.gap));
    }
  }
  in.slopes.resize(c.n_head);
  AlibiSlopes(c.n_head, 8.0f, in.slopes.data());

  AttentionParams& p = in.params;
  p.n_q = c.n_q;
  p.n_kv = c.n_kv;
  p.kv_stride = c.kv_stride;
  p.kv_pos0 = c.kv_pos0;
  p.n_head = c.n_head;
  p.n_head_kv = c.n_head_kv;
  p.head_dim = hd;
  p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  p.mode = c.var.mode;
  p.rel = c.rel_set ? c.rel : Rel(c.var.kind);
  p.rope.head_dim = hd;
  p.rope.rope_dims = c.rope_dims < 0 ? hd : c.rope_dims;
  p.rope.freq_base = 10000.0f;
  p.rope.freq_scale = c.freq_scale;
  p.rope.neox = c.neox;
  p.logn_train_length = c.logn;
  p.q = in.q.data();
  p.k = in.k.data();
  p.v = in.v.data();
  p.q_pos = in.q_pos.data();
  p.alibi_slopes = in.slopes.data();
  return in;
}

inline std::vector<float> Reference(const Inputs& in) {
  std::vector<float> want(in.q.size(), std::numeric_limits<float>::quiet_NaN());
  AttentionParams p = in.params;
  p.out = want.data();
  ref::Attention(p);
  return want;
}

// Every output within 1e-4 of the scale (NaN fails); reports the first few misses.
inline void ExpectClose(const Case& c, const std::vector<float>& got,
                        const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  const int64_t hd = c.head_dim;
  float scale = 0.0f;
  for (float x : want) scale = std::max(scale, std::fabs(x));
  const float tol = 1e-4f * std::max(scale, 1e-2f);
  int64_t bad = 0;
  float worst = 0.0f;
  for (size_t i = 0; i < got.size(); ++i) {
    const float err = std::fabs(got[i] - want[i]);
    if (!(err <= tol)) {
      if (bad < 5) {
        ADD_FAILURE() << "out[" << i << "] (query " << i / (c.n_head * hd) << ", head "
                      << (i / hd) % c.n_head << ", dim " << i % hd << ") = " << got[i]
                      << ", ref " << want[i] << ", tol " << tol;
      }
      ++bad;
    }
    if (err == err) worst = std::max(worst, err);
  }
  EXPECT_EQ(bad, 0) << "of " << got.size() << " outputs; worst error " << worst << " (scale "
                    << scale << ")";
}

}  // namespace mesa::cuda::attn_test
