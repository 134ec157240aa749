// Per-process scratch paths for tests. ctest runs every gtest case as its own process,
// several at once; a fixed name under /tmp would let one process rewrite a file that
// another has memory-mapped (SIGBUS) or is reading. Each process gets its own folder
// (named by pid), removed when the process exits normally.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "gtest/gtest.h"

namespace mesa::testing {

inline std::string UniqueTempPath(const std::string& name) {
  struct Dir {
    std::filesystem::path path;
    Dir() : path(std::filesystem::path(::testing::TempDir()) / ("mesa_test_" + std::to_string(::getpid()))) {
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static Dir dir;
  return (dir.path / name).string();
}

}  // namespace mesa::testing
