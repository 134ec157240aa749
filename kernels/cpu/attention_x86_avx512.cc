// The attention unit kernel for x86-64 with AVX-512 F/BW/VL/DQ + FMA: 16-float
// vectors, 32 registers (8 x 2 register tiles). Compiled with those flags only;
// selected at run time by attention_cpu.cc.
#define MESA_ATTN_NS avx512
#define MESA_ATTN_LANES 16
#define MESA_ATTN_REGS 32
#include "kernels/cpu/attention_cpu-inl.h"
