// A Backend that runs every op on another backend and adds up where the time goes:
// wall seconds, calls, floating-point work and bytes per kind of op, kept apart per
// phase (the caller says when the prefill ends and the decode starts). `mesa bench
// --profile` prints it; it is how bench/results say what a prefill or a decode step
// spends its time on (matrix products against attention, for example).
//
// Each op is timed from its call to its return; a backend whose ops are asynchronous
// (a GPU: !HostAddressable()) is synchronized after every op so that the time is the
// op's own, which serializes the work the device would otherwise overlap: profiled
// GPU runs are slower than plain ones, their shares are what counts. Time outside the
// ops (sampling, the host's own loop, logits leaving the backend) is the caller's to
// measure as the phase's wall time minus the ops' sum.
//
// Buffers allocated through the wrapper belong to the wrapped backend, which must
// outlive them (and the wrapper).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "kernels/backend.h"

namespace mesa {

class ProfilingBackend final : public Backend {
 public:
  enum class Op {
    kMatMul,       // MatMul (flops 2 * rows * cols per token and target; bytes: the weights)
    kAttention,    // Attention (flops 4 * head_dim per visible (query, key, head); bytes: K and V)
    kNorm,         // Norm
    kRope,         // RopePrepare, Rope
    kElementwise,  // AddRows, Add, SwiGlu, Gelu, Clamp
    kEmbed,        // Embed
    kKvStore,      // StoreRows (K/V written into the cache)
    kCopy,         // CopyIn/Out/Copy and their 2-D forms
    kCount
  };
  static constexpr int kOps = static_cast<int>(Op::kCount);
  static constexpr int kPhases = 2;  // 0: prefill, 1: decode
  struct Stats {
    int64_t calls = 0;
    double seconds = 0;
    double flops = 0;  // where the op has a natural count (matmul, attention)
    double bytes = 0;  // main operand bytes read (weights; K/V)
  };

  explicit ProfilingBackend(Backend& inner);

  // Ops from now on count towards `phase` (0 or 1).
  void SetPhase(int phase) { phase_ = phase; }
  void Reset() { stats_ = {}; }
  const Stats& stats(int phase, Op op) const { return stats_[phase][static_cast<int>(op)]; }
  double OpSeconds(int phase) const;
  static const char* OpName(Op op);

  std::string Name() const override { return inner_.Name(); }
  bool HostAddressable() const override { return inner_.HostAddressable(); }
  absl::Status status() const override { return inner_.status(); }
  int64_t PeakMemoryBytes() const override { return inner_.PeakMemoryBytes(); }

  absl::StatusOr<BackendBuffer> Allocate(size_t bytes) override { return inner_.Allocate(bytes); }
  void CopyIn(void* dst, const void* host_src, size_t bytes) override;
  void CopyOut(void* host_dst, const void* src, size_t bytes) override;
  void Copy(void* dst, const void* src, size_t bytes) override;
  void Copy2D(void* dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
              size_t rows) override;
  void CopyIn2D(void* dst, size_t dst_stride, const void* host_src, size_t src_stride, size_t width,
                size_t rows) override;
  void CopyOut2D(void* host_dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
                 size_t rows) override;
  void Synchronize() override { inner_.Synchronize(); }
  bool SupportsKvType(DType type) const override { return inner_.SupportsKvType(type); }
  void StoreRows(DType type, void* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                 int64_t width, int64_t rows) override;
  absl::StatusOr<WeightView> PlaceWeight(const WeightView& host) override { return inner_.PlaceWeight(host); }
  absl::StatusOr<const float*> PlaceVector(const float* host, int64_t n) override {
    return inner_.PlaceVector(host, n);
  }

  void Embed(const WeightView& table, const int32_t* host_tokens, int64_t n, float* out) override;
  void Norm(NormKind kind, const float* w, const float* b, float eps, const float* x, int64_t n,
            int64_t d, float* out) override;
  void MatMul(const MatMulTarget* targets, int count, const float* x, int64_t m) override;
  void AddRows(const float* bias, int64_t width, int64_t n, float* out) override;
  void Add(const float* x, int64_t n, float* y) override;
  void SwiGlu(const float* gate, const float* up, int64_t n, int64_t width, float* out) override;
  void Gelu(const float* x, int64_t n, float* out) override;
  void Clamp(float* x, int64_t n, float limit) override;
  size_t RopeTableBytes(const RopeParams& p, int64_t n) const override { return inner_.RopeTableBytes(p, n); }
  void RopePrepare(const RopeParams& p, const int64_t* host_pos, int64_t n, void* table) override;
  void Rope(const RopeParams& p, const void* table, int64_t n, float* q, int64_t n_head, float* k,
            int64_t n_head_kv) override;
  void Attention(const AttentionParams& p) override;

 protected:
  // Never reached: buffers belong to the wrapped backend (Allocate hands its out).
  void Free(void* data) override;

 private:
  // Runs f() and adds its time to op's stats of the current phase.
  template <class F>
  void Timed(Op op, double flops, double bytes, F&& f);

  Backend& inner_;
  int phase_ = 0;
  std::array<std::array<Stats, kOps>, kPhases> stats_{};
};

// The (query, key) pairs an attention call computes, per head: for each query, the
// keys at or before its position (kv_pos0 + j <= q_pos[i]), at most n_kv. Reads q_pos,
// so only for host-addressable positions; otherwise n_q * n_kv.
int64_t VisibleAttentionPairs(const AttentionParams& p, bool positions_on_host);

}  // namespace mesa
