// Linked into every test binary by mesa_test(): gives the tests the build's
// locations (shared data, llama.cpp reference, build dir) as environment variables
// unless the caller already set them. (ctest's per-test ENVIRONMENT cannot carry a
// list through gtest_discover_tests, so the defaults are compiled in instead.)
#include <cstdlib>

namespace {
struct TestEnvInit {
  TestEnvInit() {
    setenv("MESA_SHARED_DIR", MESA_TEST_SHARED_DIR, 0);
    setenv("MESA_LLAMACPP_DIR", MESA_TEST_LLAMACPP_DIR, 0);
    setenv("MESA_BINARY_DIR", MESA_TEST_BINARY_DIR, 0);
  }
} test_env_init;
}  // namespace
