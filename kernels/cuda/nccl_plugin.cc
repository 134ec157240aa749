// NCCL point-to-point for the peer links (worker/nccl_peer.h). Non-blocking
// communicators only (ncclConfig_t.blocking = 0): every wait here is a polling loop with
// a time limit, and a communicator that failed or ran out of time is aborted
// (ncclCommAbort), which is the only way to leave a stuck transfer. After that the
// handle answers every call with FAILED_PRECONDITION until it is destroyed.
#include "kernels/cuda/nccl_plugin.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#ifdef MESA_HAVE_NCCL
#include <nccl.h>
#endif

namespace mesa::cuda {
namespace {

void SetError(char* err, size_t len, const std::string& text) {
  if (err && len) std::snprintf(err, len, "%s", text.c_str());
}

}  // namespace

#ifdef MESA_HAVE_NCCL
namespace {

using Clock = std::chrono::steady_clock;
static_assert(NCCL_UNIQUE_ID_BYTES == 128, "PeerGroupId holds 128 bytes");

struct Comm {
  int device = 0;
  int nranks = 0;
  cudaStream_t stream = nullptr;
  ncclComm_t comm = nullptr;  // null once aborted (ncclCommAbort frees it)
  std::mutex mu;
  bool running = false;  // an NcclRun is in its polling loop
  std::string dead;      // why it was aborted; empty while it lives
  std::atomic<bool> abort_requested{false};
};

std::string Text(ncclResult_t r, ncclComm_t comm) {
  std::string s = ncclGetErrorString(r);
  const char* last = ncclGetLastError(comm);
  if (last && *last) s += std::string(" (") + last + ")";
  return s;
}

int CodeOf(ncclResult_t r) {
  switch (r) {
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return MESA_NCCL_INVALID_ARGUMENT;
    case ncclRemoteError:  // a peer died or its connection broke
    case ncclSystemError:
      return MESA_NCCL_UNAVAILABLE;
    default:
      return MESA_NCCL_INTERNAL;
  }
}

// Caller holds c.mu.
void AbortLocked(Comm& c, const std::string& why) {
  if (!c.dead.empty()) return;
  if (c.comm) ncclCommAbort(c.comm);
  c.comm = nullptr;
  c.dead = why.empty() ? "aborted" : why;
}

Clock::time_point Until(int64_t timeout_ms) {
  return Clock::now() + std::chrono::milliseconds(timeout_ms < 0 ? 0 : timeout_ms);
}

void Nap() { std::this_thread::sleep_for(std::chrono::microseconds(50)); }

}  // namespace

int NcclVersion() {
  int v = 0;
  return ncclGetVersion(&v) == ncclSuccess ? v : 0;
}

int NcclUniqueId(uint8_t* out, char* err, size_t err_len) {
  ncclUniqueId id;
  const ncclResult_t r = ncclGetUniqueId(&id);
  if (r != ncclSuccess) {
    SetError(err, err_len, "ncclGetUniqueId: " + Text(r, nullptr));
    return CodeOf(r);
  }
  std::memcpy(out, id.internal, NCCL_UNIQUE_ID_BYTES);
  return MESA_NCCL_OK;
}

int NcclCommCreate(int device, cudaStream_t stream, const uint8_t* id, int nranks, int rank, int64_t timeout_ms,
                   void** out, char* err, size_t err_len) {
  *out = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks) {
    SetError(err, err_len, "rank " + std::to_string(rank) + " of " + std::to_string(nranks));
    return MESA_NCCL_INVALID_ARGUMENT;
  }
  if (const cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    cudaGetLastError();
    SetError(err, err_len, std::string("cudaSetDevice: ") + cudaGetErrorString(e));
    return MESA_NCCL_INTERNAL;
  }
  auto c = std::make_unique<Comm>();
  c->device = device;
  c->nranks = nranks;
  c->stream = stream;
  ncclUniqueId uid;
  std::memcpy(uid.internal, id, NCCL_UNIQUE_ID_BYTES);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const auto until = Until(timeout_ms);
  ncclResult_t r = ncclCommInitRankConfig(&c->comm, nranks, uid, rank, &config);
  // Non-blocking: the communicator connects in the background; poll its state.
  while (r == ncclSuccess || r == ncclInProgress) {
    if (!c->comm) break;
    ncclResult_t state = ncclSuccess;
    r = ncclCommGetAsyncError(c->comm, &state);
    if (r != ncclSuccess) break;
    if (state != ncclInProgress) {
      r = state;
      break;
    }
    if (Clock::now() >= until) {
      ncclCommAbort(c->comm);
      SetError(err, err_len, "ncclCommInitRankConfig: rank " + std::to_string(rank) + " of " + std::to_string(nranks) +
                                 ": the other ranks did not join within " + std::to_string(timeout_ms) + " ms");
      return MESA_NCCL_DEADLINE_EXCEEDED;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (r != ncclSuccess || !c->comm) {
    SetError(err, err_len, "ncclCommInitRankConfig: " + Text(r, c->comm));
    if (c->comm) ncclCommAbort(c->comm);
    return r == ncclSuccess ? MESA_NCCL_INTERNAL : CodeOf(r);
  }
  *out = c.release();
  return MESA_NCCL_OK;
}

int NcclRun(void* handle, const MesaPeerOpC* ops, int n_ops, int64_t timeout_ms, char* err, size_t err_len) {
  Comm& c = *static_cast<Comm*>(handle);
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (!c.dead.empty()) {
      SetError(err, err_len, "the NCCL communicator is dead: " + c.dead);
      return MESA_NCCL_FAILED_PRECONDITION;
    }
    c.running = true;
  }
  // Every way out: on failure the communicator is aborted, so the peers' transfers with
  // this rank fail too instead of waiting for their deadlines.
  auto finish = [&](int code, const std::string& why) {
    std::lock_guard<std::mutex> lock(c.mu);
    c.running = false;
    if (code != MESA_NCCL_OK) {
      AbortLocked(c, why);
      SetError(err, err_len, why);
    } else if (c.abort_requested.load()) {
      AbortLocked(c, "aborted");  // asked for as this group completed: it still ends the link
    }
    return code;
  };
  for (int i = 0; i < n_ops; ++i) {
    const MesaPeerOpC& op = ops[i];
    if ((op.kind != MESA_PEER_SEND && op.kind != MESA_PEER_RECV) || op.peer < 0 || op.peer >= c.nranks ||
        op.bytes == 0 || !op.data) {
      return finish(MESA_NCCL_INVALID_ARGUMENT, "op " + std::to_string(i) + ": peer " + std::to_string(op.peer) +
                                                    " of " + std::to_string(c.nranks) + ", " +
                                                    std::to_string(op.bytes) + " bytes");
    }
  }
  if (const cudaError_t e = cudaSetDevice(c.device); e != cudaSuccess) {
    cudaGetLastError();
    return finish(MESA_NCCL_INTERNAL, std::string("cudaSetDevice: ") + cudaGetErrorString(e));
  }
  const auto until = Until(timeout_ms);
  ncclResult_t r = ncclGroupStart();
  for (int i = 0; i < n_ops && (r == ncclSuccess || r == ncclInProgress); ++i) {
    const MesaPeerOpC& op = ops[i];
    r = op.kind == MESA_PEER_SEND ? ncclSend(op.data, op.bytes, ncclUint8, op.peer, c.comm, c.stream)
                                  : ncclRecv(op.data, op.bytes, ncclUint8, op.peer, c.comm, c.stream);
  }
  const ncclResult_t end = ncclGroupEnd();
  if (r == ncclSuccess || r == ncclInProgress) r = end;
  if (r != ncclSuccess && r != ncclInProgress) return finish(CodeOf(r), "posting the group: " + Text(r, c.comm));
  // The group is launched in the background (ncclInProgress), then runs on the stream.
  while (true) {
    ncclResult_t state = ncclSuccess;
    r = ncclCommGetAsyncError(c.comm, &state);
    if (r != ncclSuccess) return finish(CodeOf(r), "ncclCommGetAsyncError: " + Text(r, c.comm));
    if (state != ncclSuccess && state != ncclInProgress) return finish(CodeOf(state), Text(state, c.comm));
    if (state == ncclSuccess) {
      const cudaError_t e = cudaStreamQuery(c.stream);
      if (e == cudaSuccess) return finish(MESA_NCCL_OK, "");
      if (e != cudaErrorNotReady) {
        cudaGetLastError();
        return finish(MESA_NCCL_INTERNAL, std::string("the stream failed: ") + cudaGetErrorString(e));
      }
    }
    if (c.abort_requested.load()) return finish(MESA_NCCL_CANCELLED, "aborted while its transfers were in flight");
    if (Clock::now() >= until) {
      return finish(MESA_NCCL_DEADLINE_EXCEEDED, "the transfers did not complete within " +
                                                     std::to_string(timeout_ms) + " ms (a peer did not post its part)");
    }
    Nap();
  }
}

void NcclAbort(void* handle) {
  Comm& c = *static_cast<Comm*>(handle);
  std::lock_guard<std::mutex> lock(c.mu);
  if (c.running) {
    c.abort_requested = true;  // NcclRun's loop aborts: the communicator is in use there
  } else {
    AbortLocked(c, "aborted");
  }
}

void NcclDestroy(void* handle) {
  std::unique_ptr<Comm> c(static_cast<Comm*>(handle));
  if (!c->dead.empty() || !c->comm) return;
  cudaSetDevice(c->device);
  // Finalize flushes what was issued; a communicator that does not quiesce in a few
  // seconds is aborted rather than waited for.
  ncclResult_t r = ncclCommFinalize(c->comm);
  const auto until = Until(5000);
  while (r == ncclSuccess || r == ncclInProgress) {
    ncclResult_t state = ncclSuccess;
    r = ncclCommGetAsyncError(c->comm, &state);
    if (r != ncclSuccess) break;
    if (state != ncclInProgress) {
      r = state;
      break;
    }
    if (Clock::now() >= until) {
      r = ncclInProgress;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (r == ncclSuccess) {
    ncclCommDestroy(c->comm);
  } else {
    ncclCommAbort(c->comm);
  }
}

#else  // no NCCL in this build

namespace {
int NoNccl(char* err, size_t err_len) {
  SetError(err, err_len, "this CUDA plugin was built without NCCL");
  return MESA_NCCL_UNIMPLEMENTED;
}
}  // namespace

int NcclVersion() { return 0; }
int NcclUniqueId(uint8_t*, char* err, size_t err_len) { return NoNccl(err, err_len); }
int NcclCommCreate(int, cudaStream_t, const uint8_t*, int, int, int64_t, void** comm, char* err, size_t err_len) {
  *comm = nullptr;
  return NoNccl(err, err_len);
}
int NcclRun(void*, const MesaPeerOpC*, int, int64_t, char* err, size_t err_len) { return NoNccl(err, err_len); }
void NcclAbort(void*) {}
void NcclDestroy(void*) {}

#endif

}  // namespace mesa::cuda
