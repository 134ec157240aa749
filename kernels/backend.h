// The seam between the forward pass and the hardware it runs on. engine/forward.cc
// describes a model once, as a sequence of the ops below on buffers the backend owns;
// a backend runs them on the CPU (kernels/cpu, CpuBackend) or on a GPU (the CUDA
// plugin, CudaBackend). The math of every op is its kernels/ref twin (nn.h, matmul.h,
// attention.h); a backend only decides where and how it runs.
//
// Memory: Allocate returns backend memory (host memory for the CPU, device memory for
// a GPU). Op arguments are backend memory unless their name says host_. Only a backend
// with HostAddressable() lets the caller read its buffers directly; everything else
// goes through CopyIn / CopyOut.
//
// Errors: an op never throws or returns a status (a forward pass is hundreds of ops);
// a backend that can fail at run time (a GPU launch, an out-of-memory) records the
// first failure, which status() reports until the backend is discarded. Callers check
// status() after a batch of work (ModelRunner::Forward does). The CPU backend never
// fails at run time (its kernels abort on a broken invariant, as before).
//
// A backend is used by one thread of control at a time (the CPU backend owns a thread
// pool whose loops are not reentrant); several ModelRunners may share one in turn.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/nn.h"

namespace mesa {

class Backend;

// Owned backend memory; freed through the backend that made it (which must outlive it).
class BackendBuffer {
 public:
  BackendBuffer() = default;
  BackendBuffer(Backend* owner, void* data, size_t bytes) : owner_(owner), data_(data), bytes_(bytes) {}
  BackendBuffer(BackendBuffer&& o) noexcept { *this = std::move(o); }
  BackendBuffer& operator=(BackendBuffer&& o) noexcept;
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;
  ~BackendBuffer() { Reset(); }

  void* data() const { return data_; }
  float* f32() const { return static_cast<float*>(data_); }
  size_t bytes() const { return bytes_; }
  explicit operator bool() const { return data_ != nullptr; }
  void Reset();

 private:
  Backend* owner_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

enum class NormKind { kRms, kLayer };

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda:N".
  virtual std::string Name() const = 0;
  // Buffers are ordinary host memory the caller may read and write.
  virtual bool HostAddressable() const = 0;
  // The first run-time failure, or OK.
  virtual absl::Status status() const = 0;
  // The most backend memory held at once so far (weights, caches, activations, scratch
  // allocated through this backend); 0 where the backend does not count (the CPU: its
  // memory is the process's RSS).
  virtual int64_t PeakMemoryBytes() const { return 0; }

  // --- memory ---
  // `bytes` of zero-filled memory, 64-byte aligned.
  virtual absl::StatusOr<BackendBuffer> Allocate(size_t bytes) = 0;
  // host -> backend, backend -> host (returns when the bytes are on the host), and
  // within the backend.
  virtual void CopyIn(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void CopyOut(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void Copy(void* dst, const void* src, size_t bytes) = 0;
  // `rows` copies of `width` bytes: dst + r * dst_stride <- src + r * src_stride.
  virtual void Copy2D(void* dst, size_t dst_stride, const void* src, size_t src_stride,
                      size_t width, size_t rows) = 0;
  // The same between the host and the backend (one transfer for many strided rows: the
  // K/V of every (layer, head) of a chunk moves in one call, not one per row block).
  virtual void CopyIn2D(void* dst, size_t dst_stride, const void* host_src, size_t src_stride, size_t width,
                        size_t rows) = 0;
  virtual void CopyOut2D(void* host_dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
                         size_t rows) = 0;
  // Waits for all enqueued work.
  virtual void Synchronize() = 0;

  // --- K/V element type ---
  // The element type of the K/V caches made on this backend: kF32, kF16 or kBF16 (the
  // CPU reads f32 only; a GPU defaults to bf16). set_kv_type refuses what the
  // backend's attention cannot read.
  virtual bool SupportsKvType(DType type) const = 0;
  DType kv_type() const { return kv_type_; }
  absl::Status set_kv_type(DType type);
  // rows x width f32 values (src, row stride src_stride elements) stored as `type`
  // elements at dst (row stride dst_stride elements), rounded to nearest even.
  virtual void StoreRows(DType type, void* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                         int64_t width, int64_t rows) = 0;

  // --- weights ---
  // The view of host weights the backend's MatMul and Embed read: the CPU returns `host`
  // itself (packed forms included); a GPU uploads once and keeps the copy until the
  // backend is destroyed (the same host matrix placed twice is uploaded once).
  virtual absl::StatusOr<WeightView> PlaceWeight(const WeightView& host) = 0;
  // Same for a 1-D f32 tensor of n elements (norm weights, biases); null stays null.
  virtual absl::StatusOr<const float*> PlaceVector(const float* host, int64_t n) = 0;

  // --- ops (the math: kernels/nn.h, matmul.h, attention.h) ---
  // out[i] = row host_tokens[i] of `table` (a placed weight), i < n.
  virtual void Embed(const WeightView& table, const int32_t* host_tokens, int64_t n, float* out) = 0;
  // Per row of d: RmsNorm(x, w) or LayerNorm(x, w, b) (b may be null).
  virtual void Norm(NormKind kind, const float* w, const float* b, float eps, const float* x,
                    int64_t n, int64_t d, float* out) = 0;
  // out_i = x W_i^T for `count` placed weights with the same cols (see cpu::MatMulShared).
  virtual void MatMul(const MatMulTarget* targets, int count, const float* x, int64_t m) = 0;
  // out[i][c] += bias[c], i < n, c < width.
  virtual void AddRows(const float* bias, int64_t width, int64_t n, float* out) = 0;
  // y[i] += x[i], i < n.
  virtual void Add(const float* x, int64_t n, float* y) = 0;
  // out = silu(gate) * up over n rows of width elements (out may alias gate).
  virtual void SwiGlu(const float* gate, const float* up, int64_t n, int64_t width, float* out) = 0;
  // out[i] = gelu(x[i]), i < n.
  virtual void Gelu(const float* x, int64_t n, float* out) = 0;
  // x[i] = clamp(x[i], -limit, limit), i < n.
  virtual void Clamp(float* x, int64_t n, float limit) = 0;
  // RoPE in two steps: RopePrepare turns n host positions into a table the backend
  // reads (RopeTableBytes(p, n) bytes of backend memory; made once per batch), Rope
  // rotates n rows of heads (row stride heads * head_dim) in place.
  virtual size_t RopeTableBytes(const RopeParams& p, int64_t n) const = 0;
  virtual void RopePrepare(const RopeParams& p, const int64_t* host_pos, int64_t n, void* table) = 0;
  // The queries (q: n rows of n_head heads) and keys (k: n rows of n_head_kv heads; may
  // be null) are rotated in one call (one hand-off to the CPU's threads per layer).
  virtual void Rope(const RopeParams& p, const void* table, int64_t n, float* q, int64_t n_head, float* k,
                    int64_t n_head_kv) = 0;
  // kernels/attention.h with every pointer (q, k, v, out, q_pos, alibi_slopes) in
  // backend memory.
  virtual void Attention(const AttentionParams& p) = 0;

 protected:
  friend class BackendBuffer;
  virtual void Free(void* data) = 0;
  DType kv_type_ = DType::kF32;
};

inline BackendBuffer& BackendBuffer::operator=(BackendBuffer&& o) noexcept {
  if (this != &o) {
    Reset();
    owner_ = std::exchange(o.owner_, nullptr);
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

inline void BackendBuffer::Reset() {
  if (data_ && owner_) owner_->Free(data_);
  owner_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

// The process-wide host memory backend's allocator: what a KvCache or buffer made
// without a backend lives in (the CPU backend allocates the same way).
Backend& HostBackend();

// Makes the backend for a --device value: "cpu", "cuda" (= cuda:0) or "cuda:N".
// `threads`: CPU threads (the CPU backend's pool; <= 0 = all hardware threads).
// `kv_type` (--kv-type): "auto" (the backend's default: f32 on the CPU, bf16 on a GPU),
// "f32", "f16" or "bf16". A CUDA device where none is usable, or a K/V type the device
// cannot attend over, is an error that says why.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, int threads,
                                                     const std::string& kv_type = "auto");
// Checks the form of a --kv-type value ("" if fine).
std::string KvTypeSyntaxError(const std::string& kv_type);
// Checks the form of a --device value without making anything ("" if fine).
std::string DeviceSyntaxError(const std::string& device);

}  // namespace mesa
