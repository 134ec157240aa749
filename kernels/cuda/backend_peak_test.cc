// Backend::PeakMemoryBytes through the CUDA plugin (ABI 3): the most device memory the
// backend held at once, counted over Allocate/free; the CPU backend does not count.
#include <gtest/gtest.h>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_test_util.h"

namespace mesa {
namespace {

TEST(CudaBackendPeakMemory, CountsTheMostHeldAtOnce) {
  MESA_REQUIRE_GPU();
  auto backend = MakeBackend("cuda:0", 0);
  ASSERT_TRUE(backend.ok()) << backend.status();
  Backend& b = **backend;
  const int64_t base = b.PeakMemoryBytes();  // the plugin may hold scratch already
  constexpr int64_t kMiB = 1 << 20;
  {
    auto one = b.Allocate(1 * kMiB);
    ASSERT_TRUE(one.ok()) << one.status();
    auto three = b.Allocate(3 * kMiB);
    ASSERT_TRUE(three.ok()) << three.status();
    EXPECT_EQ(b.PeakMemoryBytes(), base + 4 * kMiB);
    one->Reset();  // 3 MiB held
    auto two = b.Allocate(2 * kMiB);
    ASSERT_TRUE(two.ok()) << two.status();
    EXPECT_EQ(b.PeakMemoryBytes(), base + 5 * kMiB);
  }
  // Freed memory lowers what is held, never the peak.
  auto again = b.Allocate(kMiB);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(b.PeakMemoryBytes(), base + 5 * kMiB);
  EXPECT_TRUE(b.status().ok()) << b.status();
}

TEST(CudaBackendPeakMemory, CpuBackendDoesNotCount) {
  auto backend = MakeBackend("cpu", 1);
  ASSERT_TRUE(backend.ok());
  auto buf = (*backend)->Allocate(1 << 20);
  ASSERT_TRUE(buf.ok());
  EXPECT_EQ((*backend)->PeakMemoryBytes(), 0);
}

}  // namespace
}  // namespace mesa
