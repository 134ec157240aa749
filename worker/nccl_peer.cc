#include "worker/nccl_peer.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/backend_abi.h"
#include "kernels/cuda/cuda_backend.h"

namespace mesa::worker {
namespace {

int64_t MsUntil(absl::Time deadline) {
  return std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now()));
}

absl::Status FromPlugin(int code, const char* err, const std::string& context) {
  if (code == MESA_NCCL_OK) return absl::OkStatus();
  const auto c = code > 0 && code <= 16 ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kInternal;
  return absl::Status(c, absl::StrCat(context, ": ", err[0] ? err : "NCCL failed"));
}

class NcclPeerLink final : public PeerLink {
 public:
  NcclPeerLink(const MesaCudaBackendOps* ops, void* comm, int rank, int n) : ops_(ops), comm_(comm), rank_(rank), n_(n) {}
  ~NcclPeerLink() override { ops_->nccl_destroy(comm_); }

  int rank() const override { return rank_; }
  int size() const override { return n_; }
  std::string Transport() const override { return "nccl"; }
  bool HostMemory() const override { return false; }

  absl::Status Run(absl::Span<const PeerOp> ops, absl::Time deadline, int* failed_op) override {
    if (failed_op) *failed_op = -1;
    if (absl::Status d = status(); !d.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("the NCCL link is dead: ", d.message()));
    }
    std::vector<MesaPeerOpC> c(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      c[i].kind = ops[i].kind == PeerOp::Kind::kSend ? MESA_PEER_SEND : MESA_PEER_RECV;
      c[i].peer = ops[i].peer;
      c[i].data = ops[i].data;
      c[i].bytes = ops[i].bytes > 0 ? static_cast<uint64_t>(ops[i].bytes) : 0;
    }
    char err[1024] = {0};
    const int code = ops_->nccl_run(comm_, c.data(), static_cast<int>(c.size()), MsUntil(deadline), err, sizeof(err));
    if (code == MESA_NCCL_OK) return absl::OkStatus();
    std::lock_guard<std::mutex> lock(mu_);
    if (code == MESA_NCCL_CANCELLED && !dead_.ok()) {
      return absl::Status(dead_.code(), absl::StrCat("NCCL link, rank ", rank_, ": aborted: ", dead_.message()));
    }
    absl::Status s = FromPlugin(code, err, absl::StrCat("NCCL link, rank ", rank_));
    if (dead_.ok()) dead_ = s;
    return s;
  }

  void Abort(const absl::Status& why) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!dead_.ok()) return;
      dead_ = why.ok() ? absl::CancelledError("aborted") : why;
    }
    ops_->nccl_abort(comm_);
  }
  absl::Status status() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return dead_;
  }

 private:
  const MesaCudaBackendOps* ops_;
  void* comm_;
  const int rank_, n_;
  mutable std::mutex mu_;
  absl::Status dead_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<NcclPeerTransport>> NcclPeerTransport::Make(Backend& backend) {
  const CudaPluginContext p = CudaPluginContextOf(backend);
  if (!p.ops) {
    return absl::FailedPreconditionError(absl::StrCat("NCCL links need a CUDA backend, not ", backend.Name()));
  }
  if (p.ops->nccl_version() == 0) {
    return absl::FailedPreconditionError("the CUDA plugin was built without NCCL: use the socket or gRPC transport");
  }
  return std::unique_ptr<NcclPeerTransport>(new NcclPeerTransport(p.ops, p.ctx, p.device));
}

int NcclPeerTransport::version() const { return ops_->nccl_version(); }

absl::StatusOr<PeerGroupId> NcclPeerTransport::NewGroupId() {
  PeerGroupId id;
  char err[1024] = {0};
  const int code = ops_->nccl_unique_id(id.bytes.data(), err, sizeof(err));
  if (code != MESA_NCCL_OK) return FromPlugin(code, err, "NCCL group id");
  return id;
}

absl::StatusOr<std::unique_ptr<PeerLink>> NcclPeerTransport::Join(const PeerGroupId& id, int rank, int n,
                                                                  absl::Time deadline) {
  if (n < 1 || rank < 0 || rank >= n) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " of a group of ", n));
  }
  char err[1024] = {0};
  void* comm = nullptr;
  const int code = ops_->nccl_comm_create(ctx_, id.bytes.data(), n, rank, MsUntil(deadline), &comm, err, sizeof(err));
  if (code != MESA_NCCL_OK) {
    return FromPlugin(code, err, absl::StrCat("NCCL link, rank ", rank, " of ", n, " on cuda:", device_, ": joining"));
  }
  return std::unique_ptr<PeerLink>(std::make_unique<NcclPeerLink>(ops_, comm, rank, n));
}

}  // namespace mesa::worker
