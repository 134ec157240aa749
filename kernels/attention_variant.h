// The one definition of the attention variants' position arithmetic: the relative
// position rel(t, i) a query at global position t sees for a key at global position i
// (exact, Stair PE, ReRoPE clamp, Self-Extend), its run form (how many consecutive keys
// share one rel), and the log-n query factor. kernels/ref, kernels/cpu and engine use
// these (the CPU kernel's per-run and per-tile forms are tested against operator() in
// kernels/attention_variant_test.cc); the CUDA kernels include the same header.
//
// Header-only, usable from host and device code: constexpr integer arithmetic, ::log
// from <math.h> (no std:: calls, which nvcc cannot run in __device__ code), and every
// function always inlined. The last matters on the CPU too: the per-ISA attention files
// (kernels/cpu/attention_x86_*.cc) are compiled with AVX-512 / AVX2 flags, and an
// out-of-line copy of an inline function emitted there could be picked by the linker
// for code that must run on any x86-64; a function that is always inlined never has one.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MESA_HOST_DEVICE __host__ __device__
#define MESA_VARIANT_INLINE __forceinline__
#else
#define MESA_HOST_DEVICE
#define MESA_VARIANT_INLINE inline __attribute__((always_inline))
#endif

namespace mesa {

// R(d): Mesa's Stair PE relative position for distance d = t - i >= 0 (MESA_SPEC
// section 3, Toeplitz form): d below n, then one step per e distances (e >= 1).
MESA_HOST_DEVICE MESA_VARIANT_INLINE constexpr int64_t StairPosition(int64_t d, int64_t n,
                                                                     int64_t e) {
  return d < n ? d : n + (d - n) / e;
}

// rel(t, i) for a key at i <= t (d = t - i):
//   kExact      d                                      (ordinary attention)
//   kStair      d < n ? d : n + (d - n) / e            (Mesa's Stair PE, StairPosition)
//   kClamp      min(d, window)                         (ReRoPE)
//   kSelfExtend d < window ? d : t/group - i/group + window - window/group  (Self-Extend)
// All kinds are non-decreasing in d for a fixed t, so rel(t, kv_pos0) bounds what a
// query meets. kStair needs e >= 1, kSelfExtend group >= 1; positions are >= 0.
struct RelativePosition {
  enum class Kind { kExact, kStair, kClamp, kSelfExtend };
  Kind kind = Kind::kExact;
  int64_t n = 0, e = 1;              // kStair
  int64_t window = 0, group = 1;     // kClamp, kSelfExtend

  MESA_HOST_DEVICE MESA_VARIANT_INLINE constexpr int64_t operator()(int64_t t, int64_t i) const {
    const int64_t d = t - i;
    switch (kind) {
      case Kind::kExact: return d;
      case Kind::kStair: return StairPosition(d, n, e);
      case Kind::kClamp: return d < window ? d : window;
      case Kind::kSelfExtend:
        return d < window ? d : t / group - i / group + window - window / group;
    }
    return d;
  }

  // Run form, for kernels that walk keys i, i + 1, ... (d falling) for one query:
  // returns rel(t, i) and sets *len (>= 1) to how many keys from i on share it (a stair
  // level, ReRoPE's clamped region, a Self-Extend group; 1 where rel falls with d).
  // `t_group` is t / group, hoisted by callers that ask for many runs of one query.
  // Same values as operator() by construction (tested over many cases).
  MESA_HOST_DEVICE MESA_VARIANT_INLINE constexpr int64_t Run(int64_t t, int64_t t_group,
                                                             int64_t i, int64_t* len) const {
    const int64_t d = t - i;
    *len = 1;
    switch (kind) {
      case Kind::kExact: return d;
      case Kind::kStair: {
        if (d < n) return d;
        const int64_t level = (d - n) / e;
        *len = d - n - level * e + 1;  // down to d = n + level * e
        return n + level;
      }
      case Kind::kClamp:
        if (d < window) return d;
        *len = d - window + 1;
        return window;
      case Kind::kSelfExtend: {
        if (d < window) return d;
        const int64_t ig = i / group;
        const int64_t to_group_end = ig * group + group - i, to_window = d - window + 1;
        *len = to_group_end < to_window ? to_group_end : to_window;
        return t_group - ig + window - window / group;
      }
    }
    return d;
  }

  // Far-region split, for kernels that rotate queries and keys separately (one
  // rotation per query and one per key instead of one per pair). For every pair with
  // d = t - i >= FarFrom() and i >= 0:
  //   rel(t, i) = FarQuery(t) - FarKey(i) - (FarQueryPhase(t) < FarKeyPhase(i) ? 1 : 0)
  //   kExact       t - i                       (from d >= 0; phases 0)
  //   kStair       n + a/e - i/e - [a%e < i%e] (from d >= n, a = t - n:
  //                floor((a - i)/e) = floor(a/e) - floor(i/e) - [a mod e < i mod e])
  //   kClamp       window - 0                  (from d >= window; phases 0)
  //   kSelfExtend  t/group + window - window/group - i/group  (from d >= window)
  MESA_HOST_DEVICE MESA_VARIANT_INLINE constexpr int64_t FarFrom() const {
    return kind == Kind::kExact ? 0 : kind == Kind::kStair ? n : window;
  }
  MESA_HOST_DEVICE MESA_VARIANT_INLINE constexpr int64_t FarQuery(int64_t t) const {
    switch (kind) {
      case Kind::kExact: return t;
      case Kind::kStair: return n + (t - n) / e;
      case Kind::kClamp: return window;
      case Kind::kSelfExtend: return t / group + window - window / group;
    }
    return t;
  }
  MESA_HOST_DEVICE MESA_VARIANT_INLINE constexpr int64_t FarKey(int64_t i) const {
    switch (kind) {
      case Kind::kExact: return i;
      case Kind::kStair: return i / e;
      case Kind::kClamp: return 0;
      case Kind::kSelfExtend: return i / group;
    }
    return i;
  }
  MESA_HOST_DEVICE MESA_VARIANT_INLINE constexpr int64_t FarQueryPhase(int64_t t) const {
    return kind == Kind::kStair ? (t - n) % e : 0;
  }
  MESA_HOST_DEVICE MESA_VARIANT_INLINE constexpr int64_t FarKeyPhase(int64_t i) const {
    return kind == Kind::kStair ? i % e : 0;
  }
};

// The log-n query factor ln_t = ln(t + 1) / ln(T) for T = train_length > 1 and t >= T,
// else 1 (off when train_length <= 1). Always >= 1.
MESA_HOST_DEVICE MESA_VARIANT_INLINE double LognFactor(int64_t t, int64_t train_length) {
  if (train_length <= 1 || t < train_length) return 1.0;
  return ::log(static_cast<double>(t) + 1.0) / ::log(static_cast<double>(train_length));
}

}  // namespace mesa
