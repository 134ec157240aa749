// The CUDA backend's op table: what libmesa_cuda.so exports for kernels/backend.h.
// The host side (cuda_backend.cc, in every build) finds it with dlsym and checks the
// ABI version and the sizes of the C++ parameter structs it passes by pointer (both
// sides are compiled from this tree's headers; a plugin from another build is refused
// rather than misread).
//
// Every function takes the context made by create(). Memory pointers are device
// memory unless named host_. Ops enqueue on the context's stream and never block,
// except copy_out and synchronize. A failure (a launch error, an out-of-memory) is
// recorded in the context: status() returns it from then on.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/nn.h"

extern "C" {

#define MESA_CUDA_BACKEND_ABI 5

// One send or receive of nccl_run: `bytes` of device memory at `data`.
struct MesaPeerOpC {
  int32_t kind;  // MESA_PEER_SEND or MESA_PEER_RECV
  int32_t peer;
  void* data;
  uint64_t bytes;
};
#define MESA_PEER_SEND 0
#define MESA_PEER_RECV 1

// nccl_* results (the numbers of absl::StatusCode).
#define MESA_NCCL_OK 0
#define MESA_NCCL_CANCELLED 1
#define MESA_NCCL_INVALID_ARGUMENT 3
#define MESA_NCCL_DEADLINE_EXCEEDED 4
#define MESA_NCCL_FAILED_PRECONDITION 9
#define MESA_NCCL_UNIMPLEMENTED 12
#define MESA_NCCL_INTERNAL 13
#define MESA_NCCL_UNAVAILABLE 14

struct MesaCudaBackendOps {
  uint32_t abi_version;             // MESA_CUDA_BACKEND_ABI
  uint32_t attention_params_size;   // sizeof(mesa::AttentionParams)
  uint32_t rope_params_size;        // sizeof(mesa::RopeParams)
  uint32_t weight_view_size;        // sizeof(mesa::WeightView)

  // A context on device `device`: its own stream, cuBLAS handle and scratch. Null on
  // failure, with the reason in err.
  void* (*create)(int device, char* err, size_t err_len);
  void (*destroy)(void* ctx);
  // 0 when no failure was recorded; else 1 with the first failure's text in err.
  int (*status)(void* ctx, char* err, size_t err_len);
  // Device name and memory ("NVIDIA H200, 139 GiB").
  void (*describe)(void* ctx, char* out, size_t out_len);

  // Zero-filled device memory (null and a recorded failure when it cannot).
  void* (*alloc)(void* ctx, size_t bytes);
  void (*free)(void* ctx, void* p);
  void (*copy_in)(void* ctx, void* dst, const void* host_src, size_t bytes);
  void (*copy_out)(void* ctx, void* host_dst, const void* src, size_t bytes);
  void (*copy)(void* ctx, void* dst, const void* src, size_t bytes);
  void (*copy_2d)(void* ctx, void* dst, size_t dst_stride, const void* src, size_t src_stride,
                  size_t width, size_t rows);
  void (*synchronize)(void* ctx);
  // 1 when the kernels read weights of this DType (a ggml type id).
  int (*weight_type_supported)(uint32_t type);

  // The ops of kernels/backend.h, same arguments (weights: views of device memory).
  void (*embed)(void* ctx, const mesa::WeightView* table, const int32_t* host_tokens, int64_t n,
                float* out);
  void (*norm)(void* ctx, int layer_norm, const float* w, const float* b, float eps, const float* x,
               int64_t n, int64_t d, float* out);
  void (*matmul)(void* ctx, const mesa::WeightView* w, const float* x, int64_t m, float* out);
  void (*add_rows)(void* ctx, const float* bias, int64_t width, int64_t n, float* out);
  void (*add)(void* ctx, const float* x, int64_t n, float* y);
  void (*swiglu)(void* ctx, const float* gate, const float* up, int64_t n, float* out);
  void (*gelu)(void* ctx, const float* x, int64_t n, float* out);
  void (*clamp)(void* ctx, float* x, int64_t n, float limit);
  // Positions (device int64, n of them) -> rotation of n rows of n_heads heads.
  void (*rope)(void* ctx, const mesa::RopeParams* p, const int64_t* pos, int64_t n, int64_t n_heads,
               float* x);
  void (*attention)(void* ctx, const mesa::AttentionParams* p);
  // f32 rows stored as `type` (a ggml type id: f32, f16 or bf16); strides in elements.
  void (*store_rows)(void* ctx, uint32_t type, void* dst, int64_t dst_stride, const float* src,
                     int64_t src_stride, int64_t width, int64_t rows);
  // ABI 3: the most device memory this context held at once (alloc'd buffers and its
  // own scratch; not the CUDA context or cuBLAS's internal workspace), in bytes.
  int64_t (*peak_memory_bytes)(void* ctx);

  // --- ABI 4: NCCL point-to-point (worker/nccl_peer.h drives these) ---
  // Results are absl::StatusCode numbers (MESA_NCCL_*), the reason in err. A plugin
  // built without NCCL (MESA_HAVE_NCCL unset) answers MESA_NCCL_UNIMPLEMENTED.
  // The NCCL version (e.g. 22807), 0 without NCCL.
  int (*nccl_version)(void);
  // A fresh ncclUniqueId (NCCL_UNIQUE_ID_BYTES = 128 bytes) into out.
  int (*nccl_unique_id)(uint8_t* out, char* err, size_t err_len);
  // Rank `rank` of an `nranks` communicator on ctx's device (ncclConfig_t.blocking = 0),
  // its initialisation polled until done or timeout_ms passed (then aborted:
  // MESA_NCCL_DEADLINE_EXCEEDED). *comm is the handle for the calls below.
  int (*nccl_comm_create)(void* ctx, const uint8_t* id, int nranks, int rank, int64_t timeout_ms, void** comm,
                          char* err, size_t err_len);
  // ops (device memory) posted in one ncclGroupStart/End of ncclSend/ncclRecv on ctx's
  // stream, then polled (ncclCommGetAsyncError, cudaStreamQuery) until the stream is
  // done, an error, timeout_ms, or nccl_abort. On anything but success the communicator
  // is aborted (ncclCommAbort) and every later call fails at once.
  int (*nccl_run)(void* comm, const MesaPeerOpC* ops, int n_ops, int64_t timeout_ms, char* err,
                  size_t err_len);
  // Asks for the communicator to be aborted: at once when no nccl_run is in progress,
  // else by that call's polling loop (which returns MESA_NCCL_CANCELLED). Any thread.
  void (*nccl_abort)(void* comm);
  // Ends the communicator (finalize + destroy when healthy, abort otherwise) and frees
  // the handle. No call may be in progress.
  void (*nccl_destroy)(void* comm);

  // --- ABI 5: strided copies between the host and the device (copy_out_2d returns when
  // the bytes are on the host) ---
  void (*copy_in_2d)(void* ctx, void* dst, size_t dst_stride, const void* host_src, size_t src_stride,
                     size_t width, size_t rows);
  void (*copy_out_2d)(void* ctx, void* host_dst, size_t dst_stride, const void* src, size_t src_stride,
                      size_t width, size_t rows);
};

// The table (static storage; never null in a plugin that exports it).
const MesaCudaBackendOps* MesaCudaBackend(void);
}
