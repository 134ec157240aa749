// Parsing of MESA_CPU_ISA (kept out of matmul_cpu_internal.h: that header is compiled
// with ISA flags, and absl's inline functions must not be emitted there).
#pragma once

#include "absl/status/statusor.h"
#include "kernels/cpu/matmul_cpu_internal.h"

namespace mesa::cpu::internal {

// What a MESA_CPU_ISA value (null or "" = unset) selects on a CPU whose best is `best`:
// `best` for unset or "auto"; InvalidArgument for an unknown name; FailedPrecondition
// for an ISA beyond `best`.
absl::StatusOr<Isa> ResolveIsa(const char* setting, Isa best);

}  // namespace mesa::cpu::internal
