// Internal contract between the attention dispatcher (attention_cpu.cc) and the
// per-ISA unit kernels (attention_x86_avx512.cc, attention_x86_avx2.cc, and the
// portable build in attention_cpu.cc; bodies in attention_cpu-inl.h): the shared
// tile sizes, the read-only call context, the work unit and the per-thread buffers.
// Plain data only: the per-ISA files are compiled with ISA flags, so nothing here may
// be an inline function they could emit (and the linker pick for other code).
#pragma once

#include <cstdint>

#include "kernels/attention.h"
#include "kernels/cpu/matmul_cpu_internal.h"

namespace mesa::cpu::attn_internal {

// Rows (query, head of one kv group) per unit: at most kQb (the row stride of the
// transposed per-thread buffers), Ctx::qb per call (see BlockRows in attention_cpu.cc).
inline constexpr int kQb = 128;
inline constexpr int kKb = 64;  // keys per tile
// Below this many rows the block kernels waste most vector lanes: dot each key.
inline constexpr int kMinBlockRows = 8;
// Head dims are padded to a multiple of this in the per-thread buffers (the widest
// vector any variant uses), so every variant sees the same layouts.
inline constexpr int kPad = 16;

// Everything shared by the units of one call (read-only while they run).
struct Ctx {
  const AttentionParams* p;
  int64_t hd, hdp, group;
  bool rope, alibi;
  int64_t rd;              // rotated dims
  const float* table;      // [position][2 * rd]: C then S (see RotateSwapped)
  const int32_t* partner;  // [rd]: the dim each rotated dim pairs with
  // Relative positions: p->rel, read through its run and far-region forms
  // (kernels/attention_variant.h); g is its Self-Extend group (1 for other kinds).
  int64_t g;
  int64_t qb;  // rows per unit in this call: 32 or kQb (a multiple of every vector width)
};

// A unit: rows [block * qb, (block + 1) * qb) of kv head kvh over keys [ja, jb). Row R of a kv
// head is query R / group, head kvh * group + R % group: the heads sharing a kv head
// share every key and value load.
struct Unit {
  int32_t kvh, block, split;
  int64_t ja, jb;  // multiples of kKb except at the end
  float* partial;  // split units: [qb][hdp + 2] (m, l, acc); null: write `out`
};

// Per-thread buffers (owned by the dispatcher, sized for hdp): units never share them.
struct Bufs {
  float *qs, *qw, *qt_raw, *qt_abs, *qt_far;  // [kQb * hdp]
  float* qt_far1;                             // [kQb * hdp] (Stair PE's second far query)
  float *kb, *vb;                             // [kKb * hdp]
  float *s, *s1;                              // [kQb * kKb]
  int32_t* amod;                              // [kQb] (Stair PE: (t - n) mod e per row)
  float* acc;                                 // [kQb * hdp]
  float* qr;                                  // [hdp]
  double* l;                                  // [kQb]
  float *m, *slope, *tf;                      // [kQb]
  int32_t* vis;                               // [kQb]
  int64_t *t, *tg, *qi, *head;                // [kQb]
  int64_t* pg;                                // [kKb]
};

// The ISA cpu::Attention runs: internal::CurrentIsa() (the ISA cpu::MatMul runs: the
// best one, or the one forced by MESA_CPU_ISA / internal::ForceIsa), unless
// OverrideIsa(isa) set one (tests and benchmarks; -1 clears it). Not thread-safe
// against concurrent calls.
internal::Isa ActiveIsa();
void OverrideIsa(int isa);

// Rows per unit for a call (Ctx::qb): 32, or kQb where K/V per kv head outgrow the L2.
int64_t BlockRows(const AttentionParams& p, int64_t group);

// One unit's softmax(QK^T)V into p.out (or u.partial), per ISA.
namespace avx512 {
void RunUnit(const Ctx& c, const Unit& u, const Bufs& w);
}
namespace avx2 {
void RunUnit(const Ctx& c, const Unit& u, const Bufs& w);
}
namespace generic {
void RunUnit(const Ctx& c, const Unit& u, const Bufs& w);
}

}  // namespace mesa::cpu::attn_internal
