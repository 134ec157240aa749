// A throwaway PKI for tests of TLS: scripts/make_test_certs.sh run once per process
// into a temporary folder (see that script for the files). Needs MESA_SOURCE_DIR
// defined to the checkout (target_compile_definitions) and the openssl command
// (scripts/setup.sh installs it): without it the calling test fails.
#pragma once

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/temp_path.h"

namespace mesa::testing {

// The folder holding ca.pem, coordinator.pem/.key, ... ("" after a failure).
inline std::string TestCertsDir() {
  static const std::string dir = [] {
    const std::string d = UniqueTempPath("certs");
    const std::string cmd =
        std::string("bash '") + MESA_SOURCE_DIR + "/scripts/make_test_certs.sh' '" + d + "' >/dev/null 2>&1";
    return std::system(cmd.c_str()) == 0 ? d : std::string();
  }();
  if (dir.empty()) ADD_FAILURE() << "scripts/make_test_certs.sh failed (is openssl installed?)";
  return dir;
}

}  // namespace mesa::testing
