// Small helpers the benchmarks share for their reports: the machine's CPU model and
// ISA, medians, wall and CPU seconds. Header-only (each bench is one translation unit).
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

namespace mesa::bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// CPU seconds (user + system, all threads) this process has used so far.
inline double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// /proc/cpuinfo's model name.
inline std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

// The ISA levels that matter to memcpy/CRC-bound work.
inline std::string CopyIsa() {
  std::string isa = "x86-64";
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) isa += ", SSE4.2 (crc32)";
  if (__builtin_cpu_supports("avx2")) isa += ", AVX2";
  if (__builtin_cpu_supports("avx512f")) isa += ", AVX-512F";
  return isa;
}

}  // namespace mesa::bench
