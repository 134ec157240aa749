// MatMul kernels for x86-64 with AVX2 + FMA + F16C (compiled with those flags only;
// selected at run time by matmul_cpu.cc).
#define MESA_ISA_NS avx2
#include "kernels/cpu/matmul_x86-inl.h"
