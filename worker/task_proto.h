// Conversions between the worker core's task types (worker/worker_core.h) and the wire
// (proto/mesa/v1/worker_service.proto), shared by the worker's service adapter and the
// coordinator's gRPC worker client. Validation of what arrives is here too: a request
// with missing or impossible fields is INVALID_ARGUMENT before any work starts.
#pragma once

#include "absl/status/statusor.h"
#include "mesa/v1/worker_service.pb.h"
#include "worker/worker_core.h"

namespace mesa::worker {

void ToProto(const LongContextOptions& o, v1::AttentionOptions* p);
absl::StatusOr<LongContextOptions> FromProto(const v1::AttentionOptions& p);

void ToProto(const ChunkTask& t, v1::RunChunkRequest* p);
absl::StatusOr<ChunkTask> FromProto(const v1::RunChunkRequest& p);
void ToProto(const ChunkResult& r, v1::RunChunkResponse* p);
ChunkResult FromProto(const v1::RunChunkResponse& p);

void ToProto(const FinalTask& t, v1::RunFinalRequest* p);
absl::StatusOr<FinalTask> FromProto(const v1::RunFinalRequest& p);
void ToProto(const FinalResult& r, v1::RunFinalResponse* p);
absl::StatusOr<FinalResult> FromProto(const v1::RunFinalResponse& p);

// LoadKv: the source (its worker_address must not be empty) and the lease.
struct LoadKvArgs {
  KvSourceRef source;
  int64_t lease_ms = 0;
};
void ToProto(const KvSourceRef& source, int64_t lease_ms, v1::LoadKvRequest* p);
absl::StatusOr<LoadKvArgs> FromProto(const v1::LoadKvRequest& p);
void ToProto(const KvLoadResult& r, v1::LoadKvResponse* p);
KvLoadResult FromProto(const v1::LoadKvResponse& p);

}  // namespace mesa::worker
