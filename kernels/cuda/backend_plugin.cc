// The plugin side of the CUDA backend: the op table of backend_abi.h over the kernels
// of ops.h. One context = one device, one stream, one cuBLAS handle and the scratch the
// kernels need (grown on demand). Host-visible failures are recorded, never thrown.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include "kernels/cuda/backend_abi.h"
#include "kernels/cuda/nccl_plugin.h"
#include "kernels/cuda/ops.h"

namespace mesa::cuda {
namespace {

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::string error;  // the first failure
  // Scratch, grown on demand (only ever used on `stream`, so reuse is ordered).
  void* matmul_ws = nullptr;
  size_t matmul_ws_bytes = 0;
  void* attn_scratch = nullptr;
  size_t attn_scratch_bytes = 0;
  int32_t* tokens = nullptr;
  size_t tokens_cap = 0;
  // Device memory held through this context (PeakMemoryBytes): alloc/free and scratch.
  std::mutex mem_mu;
  std::unordered_map<void*, size_t> sizes;
  int64_t held = 0, peak = 0;
  void Held(int64_t delta) {
    std::lock_guard<std::mutex> lock(mem_mu);
    held += delta;
    peak = std::max(peak, held);
  }

  bool Ok() const { return error.empty(); }
  void Fail(const std::string& what) {
    if (error.empty()) error = what;
  }
  // Records a CUDA failure; true when `err` is success.
  bool Check(cudaError_t err, const char* what) {
    if (err == cudaSuccess) return true;
    Fail(std::string(what) + ": " + cudaGetErrorString(err));
    cudaGetLastError();
    return false;
  }
  void* Grow(void** buf, size_t* have, size_t need, const char* what) {
    if (need <= *have) return *buf;
    if (*buf) {
      cudaFree(*buf);
      Held(-static_cast<int64_t>(*have));
    }
    *buf = nullptr;
    *have = 0;
    if (!Check(cudaMalloc(buf, need), what)) return nullptr;
    *have = need;
    Held(static_cast<int64_t>(need));
    return *buf;
  }
};

Context* Ctx(void* ctx) { return static_cast<Context*>(ctx); }

void SetError(char* err, size_t len, const std::string& text) {
  if (err && len) std::snprintf(err, len, "%s", text.c_str());
}

void* Create(int device, char* err, size_t err_len) {
  auto* c = new Context;
  c->device = device;
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    SetError(err, err_len, std::string("cuda:") + std::to_string(device) + ": " + cudaGetErrorString(e));
    cudaGetLastError();
    delete c;
    return nullptr;
  }
  if (cublasCreate(&c->cublas) != CUBLAS_STATUS_SUCCESS ||
      cublasSetStream(c->cublas, c->stream) != CUBLAS_STATUS_SUCCESS) {
    SetError(err, err_len, "cuBLAS could not be initialised on cuda:" + std::to_string(device));
    cudaStreamDestroy(c->stream);
    delete c;
    return nullptr;
  }
  return c;
}

void Destroy(void* ctx) {
  Context* c = Ctx(ctx);
  if (!c) return;
  cudaSetDevice(c->device);
  cudaStreamSynchronize(c->stream);
  if (c->matmul_ws) cudaFree(c->matmul_ws);
  if (c->attn_scratch) cudaFree(c->attn_scratch);
  if (c->tokens) cudaFree(c->tokens);
  cublasDestroy(c->cublas);
  cudaStreamDestroy(c->stream);
  delete c;
}

int Status(void* ctx, char* err, size_t err_len) {
  Context* c = Ctx(ctx);
  if (c->Ok()) return 0;
  SetError(err, err_len, c->error);
  return 1;
}

void Describe(void* ctx, char* out, size_t out_len) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, Ctx(ctx)->device) != cudaSuccess) {
    cudaGetLastError();
    SetError(out, out_len, "cuda:" + std::to_string(Ctx(ctx)->device));
    return;
  }
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%s, sm_%d%d, %.0f GiB", prop.name, prop.major, prop.minor,
                prop.totalGlobalMem / 1073741824.0);
  SetError(out, out_len, buf);
}

void* Alloc(void* ctx, size_t bytes) {
  Context* c = Ctx(ctx);
  void* p = nullptr;
  const size_t n = std::max<size_t>(bytes, 1);
  if (!c->Check(cudaMalloc(&p, n), "cudaMalloc")) {
    c->Fail("out of GPU memory allocating " + std::to_string(bytes) + " bytes");
    return nullptr;
  }
  if (!c->Check(cudaMemsetAsync(p, 0, n, c->stream), "cudaMemsetAsync")) {
    cudaFree(p);
    return nullptr;
  }
  {
    std::lock_guard<std::mutex> lock(c->mem_mu);
    c->sizes[p] = n;
  }
  c->Held(static_cast<int64_t>(n));
  return p;
}

void Free(void* ctx, void* p) {
  Context* c = Ctx(ctx);
  // Work that may still read `p` is on the stream: finish it first.
  cudaStreamSynchronize(c->stream);
  cudaFree(p);
  size_t n = 0;
  {
    std::lock_guard<std::mutex> lock(c->mem_mu);
    auto it = c->sizes.find(p);
    if (it != c->sizes.end()) {
      n = it->second;
      c->sizes.erase(it);
    }
  }
  c->Held(-static_cast<int64_t>(n));
}

int64_t PeakMemoryBytes(void* ctx) {
  Context* c = Ctx(ctx);
  std::lock_guard<std::mutex> lock(c->mem_mu);
  return c->peak;
}

void CopyIn(void* ctx, void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  Context* c = Ctx(ctx);
  // Pageable host memory: the copy is staged before the call returns, so the caller
  // may reuse `src` at once.
  c->Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream), "copy to the GPU");
}

void CopyOut(void* ctx, void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  Context* c = Ctx(ctx);
  if (c->Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream), "copy from the GPU")) {
    c->Check(cudaStreamSynchronize(c->stream), "copy from the GPU");
  }
}

void Copy(void* ctx, void* dst, const void* src, size_t bytes) {
  if (!bytes || dst == src) return;
  Context* c = Ctx(ctx);
  c->Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream), "device copy");
}

void Copy2D(void* ctx, void* dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
            size_t rows) {
  if (!width || !rows) return;
  Context* c = Ctx(ctx);
  c->Check(cudaMemcpy2DAsync(dst, dst_stride, src, src_stride, width, rows, cudaMemcpyDeviceToDevice,
                             c->stream),
           "device 2-D copy");
}

void CopyIn2D(void* ctx, void* dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
              size_t rows) {
  if (!width || !rows) return;
  Context* c = Ctx(ctx);
  c->Check(cudaMemcpy2DAsync(dst, dst_stride, src, src_stride, width, rows, cudaMemcpyHostToDevice, c->stream),
           "2-D copy to the GPU");
}

void CopyOut2D(void* ctx, void* dst, size_t dst_stride, const void* src, size_t src_stride, size_t width,
               size_t rows) {
  if (!width || !rows) return;
  Context* c = Ctx(ctx);
  if (c->Check(cudaMemcpy2DAsync(dst, dst_stride, src, src_stride, width, rows, cudaMemcpyDeviceToHost, c->stream),
               "2-D copy from the GPU")) {
    c->Check(cudaStreamSynchronize(c->stream), "2-D copy from the GPU");
  }
}

void Synchronize(void* ctx) {
  Context* c = Ctx(ctx);
  c->Check(cudaStreamSynchronize(c->stream), "synchronize");
}

int WeightTypeSupported(uint32_t type) { return SupportedWeightType(static_cast<DType>(type)) ? 1 : 0; }

DeviceWeight ToDevice(const WeightView& w) { return DeviceWeight{w.type, w.rows, w.cols, w.data}; }

void Embed(void* ctx, const WeightView* table, const int32_t* host_tokens, int64_t n, float* out) {
  Context* c = Ctx(ctx);
  if (n <= 0) return;
  const size_t bytes = static_cast<size_t>(n) * sizeof(int32_t);
  if (!c->Grow(reinterpret_cast<void**>(&c->tokens), &c->tokens_cap, bytes, "token buffer")) return;
  if (!c->Check(cudaMemcpyAsync(c->tokens, host_tokens, bytes, cudaMemcpyHostToDevice, c->stream),
                "copy tokens to the GPU")) {
    return;
  }
  c->Check(cuda::Embed(table->type, table->data, c->tokens, n, table->cols, out, c->stream), "embedding");
}

void Norm(void* ctx, int layer_norm, const float* w, const float* b, float eps, const float* x, int64_t n,
          int64_t d, float* out) {
  Context* c = Ctx(ctx);
  if (layer_norm) {
    c->Check(cuda::LayerNorm(x, w, b, eps, n, d, out, c->stream), "layer norm");
  } else {
    c->Check(cuda::RmsNorm(x, w, eps, n, d, out, c->stream), "rms norm");
  }
}

void MatMulOp(void* ctx, const WeightView* w, const float* x, int64_t m, float* out) {
  Context* c = Ctx(ctx);
  const size_t need = cuda::MatMulWorkspaceBytes(w->rows, w->cols, m);
  MatMulWorkspace ws;
  ws.cublas = c->cublas;
  if (need) {
    ws.buffer = c->Grow(&c->matmul_ws, &c->matmul_ws_bytes, need, "matmul workspace");
    if (!ws.buffer) return;
    ws.bytes = c->matmul_ws_bytes;
  }
  c->Check(cuda::MatMul(ToDevice(*w), x, m, out, ws, c->stream), "matmul");
}

void AddRowsOp(void* ctx, const float* bias, int64_t width, int64_t n, float* out) {
  Context* c = Ctx(ctx);
  c->Check(cuda::AddRows(bias, width, n, out, c->stream), "bias");
}
void AddOp(void* ctx, const float* x, int64_t n, float* y) {
  Context* c = Ctx(ctx);
  c->Check(cuda::Add(x, n, y, c->stream), "add");
}
void SwiGluOp(void* ctx, const float* gate, const float* up, int64_t n, float* out) {
  Context* c = Ctx(ctx);
  c->Check(cuda::SwiGlu(gate, up, n, out, c->stream), "swiglu");
}
void GeluOp(void* ctx, const float* x, int64_t n, float* out) {
  Context* c = Ctx(ctx);
  c->Check(cuda::Gelu(x, n, out, c->stream), "gelu");
}
void ClampOp(void* ctx, float* x, int64_t n, float limit) {
  Context* c = Ctx(ctx);
  c->Check(cuda::Clamp(x, n, limit, c->stream), "clamp");
}
void RopeOp(void* ctx, const RopeParams* p, const int64_t* pos, int64_t n, int64_t n_heads, float* x) {
  Context* c = Ctx(ctx);
  c->Check(cuda::Rope(*p, pos, n, n_heads, x, c->stream), "rope");
}
void AttentionOp(void* ctx, const AttentionParams* p) {
  Context* c = Ctx(ctx);
  const size_t need = cuda::AttentionScratchBytes(*p);
  void* scratch = nullptr;
  if (need) {
    scratch = c->Grow(&c->attn_scratch, &c->attn_scratch_bytes, need, "attention scratch");
    if (!scratch) return;
  }
  c->Check(cuda::Attention(*p, scratch, c->stream), "attention");
}

void StoreRowsOp(void* ctx, uint32_t type, void* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                 int64_t width, int64_t rows) {
  Context* c = Ctx(ctx);
  c->Check(cuda::StoreRows(static_cast<DType>(type), dst, dst_stride, src, src_stride, width, rows, c->stream),
           "K/V store");
}

int NcclCommCreateOp(void* ctx, const uint8_t* id, int nranks, int rank, int64_t timeout_ms, void** comm, char* err,
                     size_t err_len) {
  Context* c = Ctx(ctx);
  return cuda::NcclCommCreate(c->device, c->stream, id, nranks, rank, timeout_ms, comm, err, err_len);
}

const MesaCudaBackendOps kOps = {
    MESA_CUDA_BACKEND_ABI,
    sizeof(AttentionParams),
    sizeof(RopeParams),
    sizeof(WeightView),
    Create,
    Destroy,
    Status,
    Describe,
    Alloc,
    Free,
    CopyIn,
    CopyOut,
    Copy,
    Copy2D,
    Synchronize,
    WeightTypeSupported,
    Embed,
    Norm,
    MatMulOp,
    AddRowsOp,
    AddOp,
    SwiGluOp,
    GeluOp,
    ClampOp,
    RopeOp,
    AttentionOp,
    StoreRowsOp,
    PeakMemoryBytes,
    cuda::NcclVersion,
    cuda::NcclUniqueId,
    NcclCommCreateOp,
    cuda::NcclRun,
    cuda::NcclAbort,
    cuda::NcclDestroy,
    CopyIn2D,
    CopyOut2D,
};

}  // namespace
}  // namespace mesa::cuda

extern "C" const MesaCudaBackendOps* MesaCudaBackend(void) { return &mesa::cuda::kOps; }
