// Checks that work on a text grows linearly with its length: the whole text against its
// first eighth (cut at a character boundary). Linear costs 8x, a quadratic loop 64x;
// the check allows 20x. A ratio, not a time limit, so slow builds (sanitizers) and busy
// machines pass while an accidental quadratic does not.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "gtest/gtest.h"

namespace mesa::testing {

// `run(text)` does the work once (and may check its result).
template <class Run>
void ExpectLinearTime(const std::string& doc, const std::string& name, Run run) {
  std::string eighth = doc.substr(0, doc.size() / 8);
  while (!eighth.empty() && static_cast<uint8_t>(eighth.back()) >= 0x80) eighth.pop_back();
  const auto seconds = [&](const std::string& text) {
    const auto start = std::chrono::steady_clock::now();
    run(text);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const double small = seconds(eighth), large = seconds(doc);
  std::printf("[ SPEED    ] %s: %zu bytes in %.3f s, %zu bytes in %.3f s (x%.1f)\n", name.c_str(),
              eighth.size(), small, doc.size(), large, large / small);
  EXPECT_LT(large, 20 * small + 0.05) << name << ": 8x the text took " << large / small << "x the time";
}

}  // namespace mesa::testing
