// PeerLink over NCCL between GPUs: the transfers go device memory to device memory on
// the CUDA backend's stream, with no host staging. This file has no CUDA or NCCL
// headers: it drives the plugin's NCCL entries (kernels/cuda/backend_abi.h, ABI 4), so
// it is compiled in every build and CPU-only runs never map NCCL.
//
// What NCCL gives and does not: matching purely by posting order per pair (no tags),
// connections made lazily at the first transfer between a pair, no way out of a stuck
// transfer but ncclCommAbort. So the communicator is non-blocking (blocking = 0), every
// wait is polled against the deadline, and a failed or late group aborts it (the link
// is dead; a new group needs a new id). NCCL does not say which op of a failed group
// failed (failed_op is -1) and cannot check sizes: the protocol on top agrees them on
// the control plane first (worker/kv_gather.h).
//
// NCCL 2.28 refuses two ranks of one communicator on one GPU ("Duplicate GPU
// detected"), so a one-GPU machine can only test a one-rank group sending to itself.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/kv_peer.h"

struct MesaCudaBackendOps;

namespace mesa::worker {

// Thread-safe. Links made here use `backend`'s context and stream: the backend must
// outlive them, and must run nothing else while a link's Run is in progress (a backend
// has one thread of control anyway).
class NcclPeerTransport final : public PeerTransport {
 public:
  // FAILED_PRECONDITION unless `backend` is a CUDA backend whose plugin has NCCL.
  static absl::StatusOr<std::unique_ptr<NcclPeerTransport>> Make(Backend& backend);
  // The NCCL version of the plugin (e.g. 22807).
  int version() const;

  std::string Name() const override { return "nccl"; }
  absl::StatusOr<PeerGroupId> NewGroupId() override;
  absl::StatusOr<std::unique_ptr<PeerLink>> Join(const PeerGroupId& id, int rank, int n,
                                                 absl::Time deadline) override;

 private:
  NcclPeerTransport(const ::MesaCudaBackendOps* ops, void* ctx, int device) : ops_(ops), ctx_(ctx), device_(device) {}
  const ::MesaCudaBackendOps* ops_;
  void* ctx_;
  int device_;
};

}  // namespace mesa::worker
