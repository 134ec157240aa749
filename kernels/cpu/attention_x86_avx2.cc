// The attention unit kernel for x86-64 with AVX2 + FMA + F16C: 8-float vectors,
// 16 registers (6 x 2 register tiles). Compiled with those flags only; selected at
// run time by attention_cpu.cc.
#define MESA_ATTN_NS avx2
#define MESA_ATTN_LANES 8
#define MESA_ATTN_REGS 16
#include "kernels/cpu/attention_cpu-inl.h"
