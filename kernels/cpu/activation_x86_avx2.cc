// The activation kernels (activation_cpu-inl.h) for x86-64 with AVX2 + FMA: 8-float vectors. Compiled with
// those flags only; selected at run time by activation_cpu.cc.
#define MESA_ACT_NS avx2
#define MESA_ACT_LANES 8
#include "kernels/cpu/activation_cpu-inl.h"
