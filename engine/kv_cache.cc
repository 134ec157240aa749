#include "engine/kv_cache.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace mesa {
namespace {

BackendBuffer AllocateOrDie(Backend& backend, size_t bytes) {
  absl::StatusOr<BackendBuffer> b = backend.Allocate(bytes);
  if (!b.ok()) {
    std::fprintf(stderr, "KvCache: %s\n", b.status().ToString().c_str());
    std::abort();
  }
  return *std::move(b);
}

}  // namespace

KvCache::KvCache(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t capacity,
                 KeyEncoding encoding, Backend* backend)
    : KvCache(n_layer, n_head_kv, head_dim, capacity, encoding, backend ? backend : &HostBackend(),
              /*allocate=*/false) {
  k_ = AllocateOrDie(*backend_, BufferBytes(capacity_));
  v_ = AllocateOrDie(*backend_, BufferBytes(capacity_));
}

KvCache KvCache::ForModel(const ModelConfig& c, int64_t capacity, KeyEncoding encoding,
                          Backend* backend) {
  return KvCache(c.n_layer, c.n_head_kv, c.head_dim, capacity, encoding, backend);
}

absl::StatusOr<KvCache> KvCache::Make(const ModelConfig& c, int64_t capacity, KeyEncoding encoding,
                                      Backend& backend) {
  // Check the allocation first so a cache too large for the device is a status.
  KvCache cache(c.n_layer, c.n_head_kv, c.head_dim, capacity, encoding, &backend, /*allocate=*/false);
  absl::StatusOr<BackendBuffer> k = backend.Allocate(cache.BufferBytes(cache.capacity_));
  if (!k.ok()) return k.status();
  absl::StatusOr<BackendBuffer> v = backend.Allocate(cache.BufferBytes(cache.capacity_));
  if (!v.ok()) return v.status();
  cache.k_ = *std::move(k);
  cache.v_ = *std::move(v);
  return cache;
}

KvCache::KvCache(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t capacity,
                 KeyEncoding encoding, Backend* backend, bool)
    : n_layer_(n_layer),
      n_head_kv_(n_head_kv),
      head_dim_(head_dim),
      capacity_(std::max<int64_t>(capacity, 1)),
      encoding_(encoding),
      backend_(backend),
      kv_type_(backend->kv_type()),
      elem_(static_cast<size_t>(GetDTypeInfo(kv_type_).block_bytes)) {}

KvCache KvCache::Copy() const {
  KvCache c(n_layer_, n_head_kv_, head_dim_, capacity_, encoding_, backend_, /*allocate=*/false);
  c.kv_type_ = kv_type_;  // the same element type even if the backend's default changed
  c.elem_ = elem_;
  c.k_ = AllocateOrDie(*backend_, BufferBytes(capacity_));
  c.v_ = AllocateOrDie(*backend_, BufferBytes(capacity_));
  backend_->Copy(c.k_.data(), k_.data(), k_.bytes());
  backend_->Copy(c.v_.data(), v_.data(), v_.bytes());
  c.size_ = size_;
  c.pos0_ = pos0_;
  return c;
}

absl::Status KvCache::Reserve(int64_t n) {
  if (n <= capacity_) return absl::OkStatus();
  const int64_t new_cap = std::max(n, capacity_ + capacity_ / 2);
  const size_t bytes = BufferBytes(new_cap);
  absl::StatusOr<BackendBuffer> nk = backend_->Allocate(bytes);
  if (!nk.ok()) return nk.status();
  absl::StatusOr<BackendBuffer> nv = backend_->Allocate(bytes);
  if (!nv.ok()) return nv.status();
  // Each (layer, kv head) block of rows moves from stride capacity_ to new_cap rows.
  const size_t row_bytes = static_cast<size_t>(size_ * head_dim_) * elem_;
  if (row_bytes) {
    const size_t old_block = static_cast<size_t>(capacity_ * head_dim_) * elem_;
    const size_t new_block = static_cast<size_t>(new_cap * head_dim_) * elem_;
    const size_t blocks = static_cast<size_t>(n_layer_ * n_head_kv_);
    backend_->Copy2D(nk->data(), new_block, k_.data(), old_block, row_bytes, blocks);
    backend_->Copy2D(nv->data(), new_block, v_.data(), old_block, row_bytes, blocks);
  }
  k_ = *std::move(nk);
  v_ = *std::move(nv);
  capacity_ = new_cap;
  return absl::OkStatus();
}

}  // namespace mesa
