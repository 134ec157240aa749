// The CPU backend: the ops of kernels/backend.h on host memory with the kernels of
// kernels/cpu (SIMD per ISA, MESA_CPU_ISA) on a thread pool. Weights are used where
// they lie (mapped files, packed forms made by the loader); nothing is copied.
#pragma once

#include <memory>

#include "common/thread_pool.h"
#include "kernels/backend.h"

namespace mesa {

class CpuBackend final : public Backend {
 public:
  // Owns a pool of `threads` (<= 0: all hardware threads).
  explicit CpuBackend(int threads);
  // Runs on a pool the caller owns (which must outlive the backend).
  explicit CpuBackend(ThreadPool& pool);
  ~CpuBackend() override;

  ThreadPool& pool() { return *pool_; }

  std::string Name() const override { return "cpu"; }
  bool HostAddressable() const override { return true; }
  absl::Status status() const override { return absl::OkStatus(); }

  absl::StatusOr<BackendBuffer> Allocate(size_t bytes) override;
  void CopyIn(void* dst, const void* host_src, size_t bytes) override;
  void CopyOut(void* host_dst, const void* src, size_t bytes) override;
  void Copy(void* dst, const void* src, size_t bytes) override;
  void Copy2D(void* dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
              size_t rows) override;
  void CopyIn2D(void* dst, size_t dst_stride, const void* host_src, size_t src_stride, size_t width,
                size_t rows) override {
    Copy2D(dst, dst_stride, host_src, src_stride, width, rows);
  }
  void CopyOut2D(void* host_dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
                 size_t rows) override {
    Copy2D(host_dst, dst_stride, src, src_stride, width, rows);
  }
  void Synchronize() override {}
  bool SupportsKvType(DType type) const override { return type == DType::kF32; }
  void StoreRows(DType type, void* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                 int64_t width, int64_t rows) override;

  absl::StatusOr<WeightView> PlaceWeight(const WeightView& host) override { return host; }
  absl::StatusOr<const float*> PlaceVector(const float* host, int64_t) override { return host; }

  void Embed(const WeightView& table, const int32_t* host_tokens, int64_t n, float* out) override;
  void Norm(NormKind kind, const float* w, const float* b, float eps, const float* x, int64_t n,
            int64_t d, float* out) override;
  void MatMul(const MatMulTarget* targets, int count, const float* x, int64_t m) override;
  void AddRows(const float* bias, int64_t width, int64_t n, float* out) override;
  void Add(const float* x, int64_t n, float* y) override;
  void SwiGlu(const float* gate, const float* up, int64_t n, int64_t width, float* out) override;
  void Gelu(const float* x, int64_t n, float* out) override;
  void Clamp(float* x, int64_t n, float limit) override;
  size_t RopeTableBytes(const RopeParams& p, int64_t n) const override;
  void RopePrepare(const RopeParams& p, const int64_t* host_pos, int64_t n, void* table) override;
  void Rope(const RopeParams& p, const void* table, int64_t n, float* q, int64_t n_head, float* k,
            int64_t n_head_kv) override;
  void Attention(const AttentionParams& p) override;

 protected:
  void Free(void* data) override;

 private:
  std::unique_ptr<ThreadPool> owned_pool_;
  ThreadPool* pool_;
};

}  // namespace mesa
