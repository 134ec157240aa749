// The CUDA backend, host side: a Backend whose ops call the plugin's op table
// (backend_abi.h). Weights are uploaded once per backend, in their file's layout (the
// kernels read the quantized blocks directly); CPU packed forms are not used here.
#include "kernels/cuda/cuda_backend.h"

#include <dlfcn.h>

#include <cstring>
#include <mutex>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/backend_abi.h"
#include "kernels/cuda/device_query.h"

namespace mesa {
namespace {

class CudaBackend final : public Backend {
 public:
  CudaBackend(const MesaCudaBackendOps* ops, void* ctx, int index) : ops_(ops), ctx_(ctx), index_(index) {
    kv_type_ = DType::kBF16;  // half the K/V memory and bandwidth; --kv-type f32 for exactness
  }
  ~CudaBackend() override {
    placed_.clear();  // frees through ops_ while ctx_ lives
    ops_->destroy(ctx_);
  }

  std::string Name() const override { return absl::StrCat("cuda:", index_); }
  bool HostAddressable() const override { return false; }
  absl::Status status() const override {
    char err[1024];
    if (ops_->status(ctx_, err, sizeof(err)) == 0) return absl::OkStatus();
    return absl::InternalError(absl::StrCat(Name(), ": ", err));
  }

  int64_t PeakMemoryBytes() const override { return ops_->peak_memory_bytes(ctx_); }

  absl::StatusOr<BackendBuffer> Allocate(size_t bytes) override {
    void* p = ops_->alloc(ctx_, bytes);
    if (!p) {
      absl::Status s = status();
      return absl::ResourceExhaustedError(s.ok() ? absl::StrCat(Name(), ": cannot allocate ", bytes, " bytes")
                                                 : std::string(s.message()));
    }
    return BackendBuffer(this, p, bytes);
  }
  void CopyIn(void* dst, const void* host_src, size_t bytes) override { ops_->copy_in(ctx_, dst, host_src, bytes); }
  void CopyOut(void* host_dst, const void* src, size_t bytes) override { ops_->copy_out(ctx_, host_dst, src, bytes); }
  void Copy(void* dst, const void* src, size_t bytes) override { ops_->copy(ctx_, dst, src, bytes); }
  void Copy2D(void* dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
              size_t rows) override {
    ops_->copy_2d(ctx_, dst, dst_stride, src, src_stride, width, rows);
  }
  void CopyIn2D(void* dst, size_t dst_stride, const void* host_src, size_t src_stride, size_t width,
                size_t rows) override {
    ops_->copy_in_2d(ctx_, dst, dst_stride, host_src, src_stride, width, rows);
  }
  void CopyOut2D(void* host_dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
                 size_t rows) override {
    ops_->copy_out_2d(ctx_, host_dst, dst_stride, src, src_stride, width, rows);
  }
  void Synchronize() override { ops_->synchronize(ctx_); }
  bool SupportsKvType(DType t) const override {
    return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16;
  }
  void StoreRows(DType type, void* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t width,
                 int64_t rows) override {
    ops_->store_rows(ctx_, static_cast<uint32_t>(type), dst, dst_stride, src, src_stride, width, rows);
  }

  absl::StatusOr<WeightView> PlaceWeight(const WeightView& host) override {
    if (!ops_->weight_type_supported(static_cast<uint32_t>(host.type))) {
      return absl::UnimplementedError(absl::StrCat("the CUDA kernels do not read weights of type ",
                                                   std::string(DTypeName(host.type)), " yet"));
    }
    const size_t bytes = static_cast<size_t>(host.rows * host.row_bytes());
    absl::StatusOr<const void*> data = Upload(host.data, bytes);
    if (!data.ok()) return data.status();
    WeightView view = host;
    view.data = *data;
    view.packed = nullptr;  // CPU layouts stay on the CPU
    return view;
  }
  absl::StatusOr<const float*> PlaceVector(const float* host, int64_t n) override {
    if (!host) return host;
    absl::StatusOr<const void*> data = Upload(host, static_cast<size_t>(n) * sizeof(float));
    if (!data.ok()) return data.status();
    return static_cast<const float*>(*data);
  }

  void Embed(const WeightView& table, const int32_t* host_tokens, int64_t n, float* out) override {
    ops_->embed(ctx_, &table, host_tokens, n, out);
  }
  void Norm(NormKind kind, const float* w, const float* b, float eps, const float* x, int64_t n, int64_t d,
            float* out) override {
    ops_->norm(ctx_, kind == NormKind::kLayer ? 1 : 0, w, b, eps, x, n, d, out);
  }
  void MatMul(const MatMulTarget* targets, int count, const float* x, int64_t m) override {
    for (int i = 0; i < count; ++i) ops_->matmul(ctx_, &targets[i].w, x, m, targets[i].out);
  }
  void AddRows(const float* bias, int64_t width, int64_t n, float* out) override {
    ops_->add_rows(ctx_, bias, width, n, out);
  }
  void Add(const float* x, int64_t n, float* y) override { ops_->add(ctx_, x, n, y); }
  void SwiGlu(const float* gate, const float* up, int64_t n, int64_t width, float* out) override {
    ops_->swiglu(ctx_, gate, up, n * width, out);
  }
  void Gelu(const float* x, int64_t n, float* out) override { ops_->gelu(ctx_, x, n, out); }
  void Clamp(float* x, int64_t n, float limit) override { ops_->clamp(ctx_, x, n, limit); }
  // The table is the batch's positions on the device; the kernel computes the angles.
  size_t RopeTableBytes(const RopeParams&, int64_t n) const override {
    return static_cast<size_t>(n) * sizeof(int64_t);
  }
  void RopePrepare(const RopeParams&, const int64_t* host_pos, int64_t n, void* table) override {
    CopyIn(table, host_pos, static_cast<size_t>(n) * sizeof(int64_t));
  }
  void Rope(const RopeParams& p, const void* table, int64_t n, float* q, int64_t n_head, float* k,
            int64_t n_head_kv) override {
    ops_->rope(ctx_, &p, static_cast<const int64_t*>(table), n, n_head, q);
    if (k) ops_->rope(ctx_, &p, static_cast<const int64_t*>(table), n, n_head_kv, k);
  }
  void Attention(const AttentionParams& p) override { ops_->attention(ctx_, &p); }

  CudaPluginContext Plugin() const { return {ops_, ctx_, index_}; }

 protected:
  void Free(void* data) override { ops_->free(ctx_, data); }

 private:
  // One device copy per host range (the same matrix placed by several runners is
  // uploaded once). Keyed by address and size: the host memory must stay unchanged
  // while this backend lives (model weights are immutable).
  absl::StatusOr<const void*> Upload(const void* host, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = placed_.find(std::pair{host, bytes});
    if (it != placed_.end()) return static_cast<const void*>(it->second.data());
    absl::StatusOr<BackendBuffer> buf = Allocate(bytes);
    if (!buf.ok()) return buf.status();
    CopyIn(buf->data(), host, bytes);
    const void* data = buf->data();
    placed_.emplace(std::pair{host, bytes}, *std::move(buf));
    return data;
  }

  const MesaCudaBackendOps* ops_;
  void* ctx_;
  int index_;
  std::mutex mu_;
  absl::flat_hash_map<std::pair<const void*, size_t>, BackendBuffer> placed_;
};

}  // namespace

CudaPluginContext CudaPluginContextOf(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda ? cuda->Plugin() : CudaPluginContext{};
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int device_index) {
  const CudaDeviceReport report = QueryCudaDevices();
  if (!report.unavailable_reason.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda:", device_index, " cannot be used: ", report.unavailable_reason));
  }
  if (device_index >= static_cast<int>(report.devices.size())) {
    return absl::FailedPreconditionError(absl::StrCat("--device cuda:", device_index, ": this machine has ",
                                                      report.devices.size(), " CUDA device(s)"));
  }
  std::string why;
  void* handle = LoadCudaPlugin(&why);
  if (!handle) return absl::FailedPreconditionError(why);
  using TableFn = const MesaCudaBackendOps* (*)();
  auto table = reinterpret_cast<TableFn>(dlsym(handle, "MesaCudaBackend"));
  const MesaCudaBackendOps* ops = table ? table() : nullptr;
  if (!ops) return absl::FailedPreconditionError("the CUDA plugin has no backend op table (MesaCudaBackend)");
  if (ops->abi_version != MESA_CUDA_BACKEND_ABI || ops->attention_params_size != sizeof(AttentionParams) ||
      ops->rope_params_size != sizeof(RopeParams) || ops->weight_view_size != sizeof(WeightView)) {
    return absl::FailedPreconditionError(
        "the CUDA plugin was built from another version of mesa (its op table does not match); use the "
        "libmesa_cuda.so of this build");
  }
  char err[1024] = {0};
  void* ctx = ops->create(device_index, err, sizeof(err));
  if (!ctx) return absl::FailedPreconditionError(absl::StrCat("--device cuda:", device_index, ": ", err));
  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>(ops, ctx, device_index));
}

}  // namespace mesa
