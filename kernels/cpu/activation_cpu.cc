// cpu::SwiGlu and cpu::Gelu (kernels/nn.h): the vector kernels of activation_cpu-inl.h,
// compiled per x86 ISA (activation_x86_avx512.cc, activation_x86_avx2.cc) and once here
// with the baseline flags, run for internal::CurrentIsa() (the ISA the products and
// attention run: the best one, or the one MESA_CPU_ISA forces).
#include "kernels/cpu/matmul_cpu_internal.h"
#include "kernels/nn.h"

#define MESA_ACT_NS generic
#define MESA_ACT_LANES 4
#include "kernels/cpu/activation_cpu-inl.h"

namespace mesa::cpu {
namespace act_internal {
#if defined(MESA_HAVE_X86_ACTIVATIONS)
namespace avx512 {
void SwiGlu(const float* gate, const float* up, int64_t n, float* out);
void Gelu(const float* x, int64_t n, float* out);
}  // namespace avx512
namespace avx2 {
void SwiGlu(const float* gate, const float* up, int64_t n, float* out);
void Gelu(const float* x, int64_t n, float* out);
}  // namespace avx2
#endif
}  // namespace act_internal

void SwiGlu(const float* gate, const float* up, int64_t n, float* out) {
#if defined(MESA_HAVE_X86_ACTIVATIONS)
  switch (internal::CurrentIsa()) {
    case internal::Isa::kAvx512:
      return act_internal::avx512::SwiGlu(gate, up, n, out);
    case internal::Isa::kAvx2:
      return act_internal::avx2::SwiGlu(gate, up, n, out);
    case internal::Isa::kScalar:
      break;
  }
#endif
  act_internal::generic::SwiGlu(gate, up, n, out);
}

void Gelu(const float* x, int64_t n, float* out) {
#if defined(MESA_HAVE_X86_ACTIVATIONS)
  switch (internal::CurrentIsa()) {
    case internal::Isa::kAvx512:
      return act_internal::avx512::Gelu(x, n, out);
    case internal::Isa::kAvx2:
      return act_internal::avx2::Gelu(x, n, out);
    case internal::Isa::kScalar:
      break;
  }
#endif
  act_internal::generic::Gelu(x, n, out);
}

}  // namespace mesa::cpu
