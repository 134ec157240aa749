// The NCCL transport where it cannot run: a clear error, never a crash (every build).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/backend.h"
#include "worker/nccl_peer.h"

namespace mesa::worker {
namespace {

TEST(NcclPeerCpu, RefusesBackendsThatAreNotCuda) {
  absl::StatusOr<std::unique_ptr<Backend>> cpu = MakeBackend("cpu", 1);
  ASSERT_TRUE(cpu.ok());
  absl::StatusOr<std::unique_ptr<NcclPeerTransport>> t = NcclPeerTransport::Make(**cpu);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(t.status().message(), ::testing::HasSubstr("need a CUDA backend, not cpu"));
}

}  // namespace
}  // namespace mesa::worker
