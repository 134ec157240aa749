// Per-layer key/value cache of one sequence.
// Layout per layer: K and V are [n_head_kv][capacity][head_dim] (f32, or f16/bf16 on a
// backend that keeps them so), so the keys of a
// kv head are contiguous (attention streams them). Row j holds the token at global
// position pos0() + j.
// The memory belongs to a backend (kernels/backend.h): host memory for the CPU (the
// default), device memory for a GPU. Pointers from k()/v()/k_row()/v_row() are backend
// memory; the host may dereference them only when on_host().
// Keys are stored rotated (RoPE applied at their own position: ordinary attention) or
// raw (pre-rotation: Mesa's Stair PE applies relative positions at attention time).
// Not thread-safe; copies are explicit (Copy()) because caches are large.
#pragma once

#include <cstdint>
#include <memory>
#include "engine/model_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace mesa {

enum class KeyEncoding { kRotated, kRaw };

// What a cache for a prompt and a generation budget allocates up front: the prompt and
// at most kDecodeReserveTokens of the budget. Decoding grows the cache as it goes
// (Reserve), so a huge budget (a request's max_tokens of 2^40, which EOS or a cancel
// ends early) allocates nothing ahead, and no sum overflows.
inline constexpr int64_t kDecodeReserveTokens = 4096;
inline int64_t InitialCacheTokens(int64_t prompt_tokens, int64_t max_new_tokens) {
  return prompt_tokens + (max_new_tokens < 0 ? 0 : max_new_tokens < kDecodeReserveTokens ? max_new_tokens
                                                                                         : kDecodeReserveTokens);
}

class KvCache {
 public:
  // Allocates zero-filled memory of `backend` (null: host memory) with elements of the
  // backend's K/V type (Backend::kv_type(): f32 on the CPU; bf16 by default on a GPU);
  // aborts when the backend cannot (Make reports it as a status instead).
  KvCache(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t capacity,
          KeyEncoding encoding = KeyEncoding::kRotated, Backend* backend = nullptr);
  static KvCache ForModel(const ModelConfig& config, int64_t capacity,
                          KeyEncoding encoding = KeyEncoding::kRotated, Backend* backend = nullptr);
  static absl::StatusOr<KvCache> Make(const ModelConfig& config, int64_t capacity,
                                      KeyEncoding encoding, Backend& backend);
  KvCache(KvCache&&) = default;
  KvCache& operator=(KvCache&&) = default;
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;
  KvCache Copy() const;

  int64_t n_layer() const { return n_layer_; }
  int64_t n_head_kv() const { return n_head_kv_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t capacity() const { return capacity_; }
  int64_t size() const { return size_; }
  int64_t pos0() const { return pos0_; }
  void set_pos0(int64_t p) { pos0_ = p; }
  KeyEncoding encoding() const { return encoding_; }
  DType kv_type() const { return kv_type_; }
  size_t elem_bytes() const { return elem_; }
  size_t bytes() const { return k_.bytes() + v_.bytes(); }
  Backend& backend() const { return *backend_; }
  bool on_host() const { return backend_->HostAddressable(); }

  // Layer l's K or V: [n_head_kv][capacity][head_dim] elements of kv_type().
  void* k(int64_t layer) const { return At(k_, layer, 0, 0); }
  void* v(int64_t layer) const { return At(v_, layer, 0, 0); }
  // Row of token j (0-based within the cache) of kv head h in layer l.
  void* k_row(int64_t l, int64_t h, int64_t j) const { return At(k_, l, h, j); }
  void* v_row(int64_t l, int64_t h, int64_t j) const { return At(v_, l, h, j); }
  // Bytes of one row (head_dim elements).
  size_t row_bytes() const { return static_cast<size_t>(head_dim_) * elem_; }

  // Grows capacity to at least `n` tokens (keeps contents).
  absl::Status Reserve(int64_t n);
  // Marks `n` more rows as filled (after the forward pass wrote them).
  void Commit(int64_t n) { size_ += n; }
  void Truncate(int64_t n) { if (n < size_) size_ = n; }

 private:
  KvCache(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t capacity,
          KeyEncoding encoding, Backend* backend, bool /*no allocation*/);
  void* At(const BackendBuffer& b, int64_t l, int64_t h, int64_t j) const {
    return static_cast<uint8_t*>(b.data()) +
           static_cast<size_t>(((l * n_head_kv_ + h) * capacity_ + j) * head_dim_) * elem_;
  }
  size_t BufferBytes(int64_t capacity) const {
    return static_cast<size_t>(n_layer_ * n_head_kv_ * capacity * head_dim_) * elem_;
  }
  int64_t n_layer_, n_head_kv_, head_dim_, capacity_;
  int64_t size_ = 0;
  int64_t pos0_ = 0;
  KeyEncoding encoding_;
  Backend* backend_;
  DType kv_type_;
  size_t elem_;
  BackendBuffer k_, v_;
};

}  // namespace mesa
