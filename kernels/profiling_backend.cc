#include "kernels/profiling_backend.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

namespace mesa {

ProfilingBackend::ProfilingBackend(Backend& inner) : inner_(inner) { kv_type_ = inner.kv_type(); }

const char* ProfilingBackend::OpName(Op op) {
  switch (op) {
    case Op::kMatMul:
      return "matmul";
    case Op::kAttention:
      return "attention";
    case Op::kNorm:
      return "norm";
    case Op::kRope:
      return "rope";
    case Op::kElementwise:
      return "elementwise";
    case Op::kEmbed:
      return "embed";
    case Op::kKvStore:
      return "kv_store";
    case Op::kCopy:
      return "copy";
    case Op::kCount:
      break;
  }
  return "?";
}

double ProfilingBackend::OpSeconds(int phase) const {
  double s = 0;
  for (const Stats& st : stats_[phase]) s += st.seconds;
  return s;
}

template <class F>
void ProfilingBackend::Timed(Op op, double flops, double bytes, F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  if (!inner_.HostAddressable()) inner_.Synchronize();
  const auto t1 = std::chrono::steady_clock::now();
  Stats& s = stats_[phase_][static_cast<int>(op)];
  ++s.calls;
  s.seconds += std::chrono::duration<double>(t1 - t0).count();
  s.flops += flops;
  s.bytes += bytes;
}

void ProfilingBackend::Free(void*) {
  std::abort();  // buffers are the wrapped backend's: a wrapper-owned one is a bug here
}

void ProfilingBackend::CopyIn(void* dst, const void* host_src, size_t bytes) {
  Timed(Op::kCopy, 0, static_cast<double>(bytes), [&] { inner_.CopyIn(dst, host_src, bytes); });
}
void ProfilingBackend::CopyOut(void* host_dst, const void* src, size_t bytes) {
  Timed(Op::kCopy, 0, static_cast<double>(bytes), [&] { inner_.CopyOut(host_dst, src, bytes); });
}
void ProfilingBackend::Copy(void* dst, const void* src, size_t bytes) {
  Timed(Op::kCopy, 0, static_cast<double>(bytes), [&] { inner_.Copy(dst, src, bytes); });
}
void ProfilingBackend::Copy2D(void* dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
                              size_t rows) {
  Timed(Op::kCopy, 0, static_cast<double>(width * rows),
        [&] { inner_.Copy2D(dst, dst_stride, src, src_stride, width, rows); });
}
void ProfilingBackend::CopyIn2D(void* dst, size_t dst_stride, const void* host_src, size_t src_stride,
                                size_t width, size_t rows) {
  Timed(Op::kCopy, 0, static_cast<double>(width * rows),
        [&] { inner_.CopyIn2D(dst, dst_stride, host_src, src_stride, width, rows); });
}
void ProfilingBackend::CopyOut2D(void* host_dst, size_t dst_stride, const void* src, size_t src_stride,
                                 size_t width, size_t rows) {
  Timed(Op::kCopy, 0, static_cast<double>(width * rows),
        [&] { inner_.CopyOut2D(host_dst, dst_stride, src, src_stride, width, rows); });
}

void ProfilingBackend::StoreRows(DType type, void* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                                 int64_t width, int64_t rows) {
  Timed(Op::kKvStore, 0, static_cast<double>(width * rows) * 4,
        [&] { inner_.StoreRows(type, dst, dst_stride, src, src_stride, width, rows); });
}

void ProfilingBackend::Embed(const WeightView& table, const int32_t* host_tokens, int64_t n, float* out) {
  Timed(Op::kEmbed, 0, static_cast<double>(n * table.row_bytes()),
        [&] { inner_.Embed(table, host_tokens, n, out); });
}

void ProfilingBackend::Norm(NormKind kind, const float* w, const float* b, float eps, const float* x, int64_t n,
                            int64_t d, float* out) {
  Timed(Op::kNorm, 0, static_cast<double>(n * d) * 4, [&] { inner_.Norm(kind, w, b, eps, x, n, d, out); });
}

void ProfilingBackend::MatMul(const MatMulTarget* targets, int count, const float* x, int64_t m) {
  double flops = 0, bytes = 0;
  for (int i = 0; i < count; ++i) {
    const WeightView& w = targets[i].w;
    flops += 2.0 * static_cast<double>(w.rows) * static_cast<double>(w.cols) * static_cast<double>(m);
    bytes += static_cast<double>(w.rows) * static_cast<double>(w.row_bytes());
  }
  Timed(Op::kMatMul, flops, bytes, [&] { inner_.MatMul(targets, count, x, m); });
}

void ProfilingBackend::AddRows(const float* bias, int64_t width, int64_t n, float* out) {
  Timed(Op::kElementwise, 0, static_cast<double>(width * n) * 4, [&] { inner_.AddRows(bias, width, n, out); });
}
void ProfilingBackend::Add(const float* x, int64_t n, float* y) {
  Timed(Op::kElementwise, 0, static_cast<double>(n) * 8, [&] { inner_.Add(x, n, y); });
}
void ProfilingBackend::SwiGlu(const float* gate, const float* up, int64_t n, int64_t width, float* out) {
  Timed(Op::kElementwise, 0, static_cast<double>(n * width) * 8, [&] { inner_.SwiGlu(gate, up, n, width, out); });
}
void ProfilingBackend::Gelu(const float* x, int64_t n, float* out) {
  Timed(Op::kElementwise, 0, static_cast<double>(n) * 4, [&] { inner_.Gelu(x, n, out); });
}
void ProfilingBackend::Clamp(float* x, int64_t n, float limit) {
  Timed(Op::kElementwise, 0, static_cast<double>(n) * 4, [&] { inner_.Clamp(x, n, limit); });
}

void ProfilingBackend::RopePrepare(const RopeParams& p, const int64_t* host_pos, int64_t n, void* table) {
  Timed(Op::kRope, 0, 0, [&] { inner_.RopePrepare(p, host_pos, n, table); });
}
void ProfilingBackend::Rope(const RopeParams& p, const void* table, int64_t n, float* q, int64_t n_head, float* k,
                            int64_t n_head_kv) {
  Timed(Op::kRope, 0, 0, [&] { inner_.Rope(p, table, n, q, n_head, k, n_head_kv); });
}

int64_t VisibleAttentionPairs(const AttentionParams& p, bool positions_on_host) {
  if (!positions_on_host || p.q_pos == nullptr) return p.n_q * p.n_kv;
  int64_t pairs = 0;
  for (int64_t i = 0; i < p.n_q; ++i) {
    pairs += std::clamp<int64_t>(p.q_pos[i] - p.kv_pos0 + 1, 0, p.n_kv);
  }
  return pairs;
}

void ProfilingBackend::Attention(const AttentionParams& p) {
  const double pairs = static_cast<double>(VisibleAttentionPairs(p, inner_.HostAddressable()));
  const double flops = 4.0 * static_cast<double>(p.head_dim * p.n_head) * pairs;
  const double bytes = 2.0 * static_cast<double>(RowBytes(p.kv_type, p.n_kv * p.n_head_kv * p.head_dim));
  Timed(Op::kAttention, flops, bytes, [&] { inner_.Attention(p); });
}

}  // namespace mesa
