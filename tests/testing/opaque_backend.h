// Test double for the backend seam (kernels/backend.h): OpaqueBackend computes with the
// CPU backend, but every pointer it hands out has bit 62 flipped, which makes it a
// non-canonical x86-64 address: any code that dereferences backend memory directly, or
// passes it to a CPU kernel, or uses a host weight instead of a placed one, faults at
// once. Its ops flip the bit back before computing (results bit-identical to the CPU
// backend's). For the seam tests (engine/backend_seam_test.cc) and for code that must
// treat backend memory as a GPU's (worker/peer_kv_test.cc: K/V staged for NCCL).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/dtype.h"
#include "kernels/matmul.h"

namespace mesa::testing {

constexpr uintptr_t kTag = uintptr_t{1} << 62;

template <typename T>
T* Flip(T* p) {
  return p ? reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p) ^ kTag) : nullptr;
}

class OpaqueBackend final : public Backend {
 public:
  explicit OpaqueBackend(int threads) : cpu_(threads) {}
  ~OpaqueBackend() override { placed_.clear(); }

  std::string Name() const override { return "opaque"; }
  bool HostAddressable() const override { return false; }
  absl::Status status() const override { return absl::OkStatus(); }

  absl::StatusOr<BackendBuffer> Allocate(size_t bytes) override {
    const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) return absl::ResourceExhaustedError("out of memory");
    std::memset(p, 0, rounded);
    live_ += 1;
    return BackendBuffer(this, Flip(p), bytes);
  }
  void CopyIn(void* dst, const void* src, size_t bytes) override { std::memcpy(Flip(dst), src, bytes); }
  void CopyOut(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, Flip(src), bytes); }
  void Copy(void* dst, const void* src, size_t bytes) override { cpu_.Copy(Flip(dst), Flip(src), bytes); }
  void Copy2D(void* dst, size_t ds, const void* src, size_t ss, size_t w, size_t rows) override {
    cpu_.Copy2D(Flip(dst), ds, Flip(src), ss, w, rows);
  }
  void CopyIn2D(void* dst, size_t ds, const void* src, size_t ss, size_t w, size_t rows) override {
    cpu_.Copy2D(Flip(dst), ds, src, ss, w, rows);
  }
  void CopyOut2D(void* dst, size_t ds, const void* src, size_t ss, size_t w, size_t rows) override {
    cpu_.Copy2D(dst, ds, Flip(src), ss, w, rows);
  }
  void Synchronize() override {}
  // Keeps f16/bf16 K/V like a GPU (its attention widens them to f32 first).
  bool SupportsKvType(DType) const override { return true; }
  void StoreRows(DType type, void* dst, int64_t ds, const float* src, int64_t ss, int64_t w, int64_t rows) override {
    cpu_.StoreRows(type, Flip(dst), ds, Flip(src), ss, w, rows);
  }

  absl::StatusOr<WeightView> PlaceWeight(const WeightView& host) override {
    // A copy in "device" memory, so the host view must not be used by the forward pass.
    const size_t bytes = static_cast<size_t>(host.rows * host.row_bytes());
    absl::StatusOr<BackendBuffer> b = Allocate(bytes);
    if (!b.ok()) return b.status();
    CopyIn(b->data(), host.data, bytes);
    WeightView v = host;
    v.data = b->data();
    v.packed = nullptr;
    if (host.packed) {  // keep the CPU's packed form usable (bit-identical results)
      const int64_t pb = cpu::PackedBytes(host);
      absl::StatusOr<BackendBuffer> pbuf = Allocate(static_cast<size_t>(pb));
      if (!pbuf.ok()) return pbuf.status();
      CopyIn(pbuf->data(), host.packed, static_cast<size_t>(pb));
      v.packed = pbuf->data();
      placed_.push_back(*std::move(pbuf));
    }
    placed_.push_back(*std::move(b));
    return v;
  }
  absl::StatusOr<const float*> PlaceVector(const float* host, int64_t n) override {
    if (!host) return host;
    absl::StatusOr<BackendBuffer> b = Allocate(static_cast<size_t>(n) * sizeof(float));
    if (!b.ok()) return b.status();
    CopyIn(b->data(), host, static_cast<size_t>(n) * sizeof(float));
    const float* p = b->f32();
    placed_.push_back(*std::move(b));
    return p;
  }

  void Embed(const WeightView& t, const int32_t* host_tokens, int64_t n, float* out) override {
    cpu_.Embed(Host(t), host_tokens, n, Flip(out));
  }
  void Norm(NormKind k, const float* w, const float* b, float eps, const float* x, int64_t n, int64_t d,
            float* out) override {
    cpu_.Norm(k, Flip(w), Flip(b), eps, Flip(x), n, d, Flip(out));
  }
  void MatMul(const MatMulTarget* targets, int count, const float* x, int64_t m) override {
    std::vector<MatMulTarget> t(targets, targets + count);
    for (MatMulTarget& one : t) {
      one.w = Host(one.w);
      one.out = Flip(one.out);
    }
    cpu_.MatMul(t.data(), count, Flip(x), m);
  }
  void AddRows(const float* bias, int64_t width, int64_t n, float* out) override {
    cpu_.AddRows(Flip(bias), width, n, Flip(out));
  }
  void Add(const float* x, int64_t n, float* y) override { cpu_.Add(Flip(x), n, Flip(y)); }
  void SwiGlu(const float* g, const float* u, int64_t n, int64_t w, float* out) override {
    cpu_.SwiGlu(Flip(g), Flip(u), n, w, Flip(out));
  }
  void Gelu(const float* x, int64_t n, float* out) override { cpu_.Gelu(Flip(x), n, Flip(out)); }
  void Clamp(float* x, int64_t n, float limit) override { cpu_.Clamp(Flip(x), n, limit); }
  size_t RopeTableBytes(const RopeParams& p, int64_t n) const override { return cpu_.RopeTableBytes(p, n); }
  void RopePrepare(const RopeParams& p, const int64_t* host_pos, int64_t n, void* table) override {
    cpu_.RopePrepare(p, host_pos, n, Flip(table));
  }
  void Rope(const RopeParams& p, const void* table, int64_t n, float* q, int64_t nh, float* k, int64_t nkv) override {
    cpu_.Rope(p, Flip(table), n, Flip(q), nh, Flip(k), nkv);
  }
  void Attention(const AttentionParams& p) override {
    AttentionParams h = p;
    h.q = Flip(p.q);
    h.k = Flip(p.k);
    h.v = Flip(p.v);
    h.out = Flip(p.out);
    h.q_pos = Flip(p.q_pos);
    h.alibi_slopes = Flip(p.alibi_slopes);
    std::vector<float> k32, v32;
    if (p.kv_type != DType::kF32) {
      const int64_t count = p.n_head_kv * p.kv_stride * p.head_dim;
      k32.resize(count);
      v32.resize(count);
      const auto* k16 = static_cast<const uint16_t*>(h.k);
      const auto* v16 = static_cast<const uint16_t*>(h.v);
      const bool bf16 = p.kv_type == DType::kBF16;
      for (int64_t i = 0; i < count; ++i) {
        k32[i] = bf16 ? BF16ToF32(k16[i]) : F16ToF32(k16[i]);
        v32[i] = bf16 ? BF16ToF32(v16[i]) : F16ToF32(v16[i]);
      }
      h.k = k32.data();
      h.v = v32.data();
      h.kv_type = DType::kF32;
    }
    cpu_.Attention(h);
  }

  int64_t live() const { return live_; }
  int64_t placed() const { return static_cast<int64_t>(placed_.size()); }

 protected:
  void Free(void* data) override {
    live_ -= 1;
    std::free(Flip(data));
  }

 private:
  static WeightView Host(WeightView w) {
    w.data = Flip(w.data);
    w.packed = Flip(w.packed);
    return w;
  }

  mutable CpuBackend cpu_;
  std::vector<BackendBuffer> placed_;
  int64_t live_ = 0;
};

}  // namespace mesa::testing
