#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <string>

namespace mesa {

CpuBackend::CpuBackend(int threads)
    : owned_pool_(std::make_unique<ThreadPool>(threads)), pool_(owned_pool_.get()) {}
CpuBackend::CpuBackend(ThreadPool& pool) : pool_(&pool) {}
CpuBackend::~CpuBackend() = default;

// Zero-filled through calloc, 64-byte aligned by hand (the block's own address is kept
// just below the aligned one): calloc skips the memset for blocks it takes from the
// kernel (glibc: every block past its mmap threshold, at most 32 MiB), which arrive
// zeroed and are faulted in as they are first written. A 2048-token prefill's K/V cache
// (150 MiB for the bench model) was zeroed twice before (the kernel's page zeroing,
// then memset): 0.08-0.10 s outside every op in `mesa bench --profile`, now ~0.001 s,
// with the K/V stores taking 0.06 s more for the first touches (net ~1% of the
// prefill, alternating runs).
absl::StatusOr<BackendBuffer> CpuBackend::Allocate(size_t bytes) {
  const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  void* raw = std::calloc(1, rounded + 64 + sizeof(void*));
  if (!raw) {
    return absl::ResourceExhaustedError("out of host memory allocating " + std::to_string(bytes) +
                                        " bytes");
  }
  const uintptr_t at = (reinterpret_cast<uintptr_t>(raw) + sizeof(void*) + 63) / 64 * 64;
  void* p = reinterpret_cast<void*>(at);
  std::memcpy(static_cast<uint8_t*>(p) - sizeof(void*), &raw, sizeof(void*));
  return BackendBuffer(this, p, bytes);
}

void CpuBackend::Free(void* data) {
  void* raw;
  std::memcpy(&raw, static_cast<uint8_t*>(data) - sizeof(void*), sizeof(void*));
  std::free(raw);
}

void CpuBackend::CopyIn(void* dst, const void* host_src, size_t bytes) {
  if (bytes) std::memcpy(dst, host_src, bytes);
}
void CpuBackend::CopyOut(void* host_dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(host_dst, src, bytes);
}
void CpuBackend::Copy(void* dst, const void* src, size_t bytes) {
  if (bytes && dst != src) std::memcpy(dst, src, bytes);
}
void CpuBackend::Copy2D(void* dst, size_t dst_stride, const void* src, size_t src_stride,
                        size_t width, size_t rows) {
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  for (size_t r = 0; r < rows; ++r) std::memcpy(d + r * dst_stride, s + r * src_stride, width);
}

void CpuBackend::StoreRows(DType type, void* dst, int64_t dst_stride, const float* src,
                           int64_t src_stride, int64_t width, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * src_stride;
    switch (type) {
      case DType::kF32:
        std::memcpy(static_cast<float*>(dst) + r * dst_stride, s, width * sizeof(float));
        break;
      case DType::kF16: {
        uint16_t* d = static_cast<uint16_t*>(dst) + r * dst_stride;
        for (int64_t i = 0; i < width; ++i) d[i] = F32ToF16(s[i]);
        break;
      }
      case DType::kBF16: {
        uint16_t* d = static_cast<uint16_t*>(dst) + r * dst_stride;
        for (int64_t i = 0; i < width; ++i) d[i] = F32ToBF16(s[i]);
        break;
      }
      default:
        std::fprintf(stderr, "CpuBackend::StoreRows: K/V type %s\n", std::string(DTypeName(type)).c_str());
        std::abort();
    }
  }
}

void CpuBackend::Embed(const WeightView& table, const int32_t* host_tokens, int64_t n, float* out) {
  const int64_t d = table.cols;
  pool_->ParallelFor(n, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      cpu::DequantizeRow(table.type, table.row(host_tokens[i]), out + i * d, d);
    }
  });
}

void CpuBackend::Norm(NormKind kind, const float* w, const float* b, float eps, const float* x,
                      int64_t n, int64_t d, float* out) {
  pool_->ParallelFor(n, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (kind == NormKind::kRms) {
        cpu::RmsNorm(x + i * d, w, eps, d, out + i * d);
      } else {
        cpu::LayerNorm(x + i * d, w, b, eps, d, out + i * d);
      }
    }
  });
}

void CpuBackend::MatMul(const MatMulTarget* targets, int count, const float* x, int64_t m) {
  if (count == 1) {
    cpu::MatMul(targets[0].w, x, m, targets[0].out, *pool_);
  } else {
    cpu::MatMulShared(targets, count, x, m, *pool_);
  }
}

void CpuBackend::AddRows(const float* bias, int64_t width, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) cpu::Add(bias, width, out + i * width);
}

void CpuBackend::Add(const float* x, int64_t n, float* y) { cpu::Add(x, n, y); }

void CpuBackend::SwiGlu(const float* gate, const float* up, int64_t n, int64_t width, float* out) {
  pool_->ParallelFor(n, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      cpu::SwiGlu(gate + i * width, up + i * width, width, out + i * width);
    }
  });
}

void CpuBackend::Gelu(const float* x, int64_t n, float* out) {
  // Blocks of 4096 elements (whole vectors: each element's result is the same wherever
  // a block boundary falls).
  constexpr int64_t kBlock = 4096;
  pool_->ParallelFor((n + kBlock - 1) / kBlock, 1, [&](int, int64_t begin, int64_t end) {
    const int64_t lo = begin * kBlock, hi = std::min(n, end * kBlock);
    cpu::Gelu(x + lo, hi - lo, out + lo);
  });
}

void CpuBackend::Clamp(float* x, int64_t n, float limit) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::clamp(x[i], -limit, limit);
}

size_t CpuBackend::RopeTableBytes(const RopeParams& p, int64_t n) const {
  return static_cast<size_t>(n * p.rope_dims) * sizeof(float);
}

void CpuBackend::RopePrepare(const RopeParams& p, const int64_t* host_pos, int64_t n, void* table) {
  float* cs = static_cast<float*>(table);
  for (int64_t i = 0; i < n; ++i) {
    cpu::RopeCosSin(p, static_cast<double>(host_pos[i]), cs + i * p.rope_dims);
  }
}

void CpuBackend::Rope(const RopeParams& p, const void* table, int64_t n, float* q, int64_t n_head, float* k,
                      int64_t n_head_kv) {
  const float* cs = static_cast<const float*>(table);
  pool_->ParallelFor(n, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      cpu::RopeApply(p, cs + i * p.rope_dims, n_head, q + i * n_head * p.head_dim);
      if (k) cpu::RopeApply(p, cs + i * p.rope_dims, n_head_kv, k + i * n_head_kv * p.head_dim);
    }
  });
}

void CpuBackend::Attention(const AttentionParams& p) { cpu::Attention(p, *pool_); }

Backend& HostBackend() {
  static CpuBackend* backend = new CpuBackend(1);
  return *backend;
}

}  // namespace mesa
