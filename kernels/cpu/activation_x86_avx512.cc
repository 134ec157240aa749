// The activation kernels (activation_cpu-inl.h) for x86-64 with AVX-512 F: 16-float vectors. Compiled with
// those flags only; selected at run time by activation_cpu.cc.
#define MESA_ACT_NS avx512
#define MESA_ACT_LANES 16
#include "kernels/cpu/activation_cpu-inl.h"
