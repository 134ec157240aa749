#include "engine/kv_cache.h"

#include <algorithm>
#include <cstring>

namespace mesa {

KvCache::KvCache(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t capacity,
                 KeyEncoding encoding)
    : n_layer_(n_layer),
      n_head_kv_(n_head_kv),
      head_dim_(head_dim),
      capacity_(std::max<int64_t>(capacity, 1)),
      encoding_(encoding) {
  k_.resize(n_layer_ * LayerFloats());
  v_.resize(k_.size());
}

KvCache KvCache::ForModel(const ModelConfig& c, int64_t capacity, KeyEncoding encoding) {
  return KvCache(c.n_layer, c.n_head_kv, c.head_dim, capacity, encoding);
}

KvCache KvCache::Copy() const {
  KvCache c(n_layer_, n_head_kv_, head_dim_, capacity_, encoding_);
  c.k_ = k_;
  c.v_ = v_;
  c.size_ = size_;
  c.pos0_ = pos0_;
  return c;
}

void KvCache::Reserve(int64_t n) {
  if (n <= capacity_) return;
  int64_t new_cap = std::max(n, capacity_ + capacity_ / 2);
  std::vector<float> nk(n_layer_ * n_head_kv_ * new_cap * head_dim_);
  std::vector<float> nv(nk.size());
  const size_t row_bytes = size_ * head_dim_ * sizeof(float);
  for (int64_t l = 0; l < n_layer_; ++l) {
    for (int64_t h = 0; h < n_head_kv_; ++h) {
      const int64_t src = (l * n_head_kv_ + h) * capacity_ * head_dim_;
      const int64_t dst = (l * n_head_kv_ + h) * new_cap * head_dim_;
      if (row_bytes) {
        std::memcpy(nk.data() + dst, k_.data() + src, row_bytes);
        std::memcpy(nv.data() + dst, v_.data() + src, row_bytes);
      }
    }
  }
  k_.swap(nk);
  v_.swap(nv);
  capacity_ = new_cap;
}

}  // namespace mesa
