// MatMul kernels for x86-64 with AVX-512 F/BW/VL/VNNI (Zen 4, Ice Lake and later):
// VNNI integer dot products and 32 vector registers for larger tiles. Compiled with
// those flags only; selected at run time by matmul_cpu.cc.
#define MESA_ISA_NS avx512
#include "kernels/cpu/matmul_x86-inl.h"
