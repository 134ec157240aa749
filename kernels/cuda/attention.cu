// CUDA attention launchers (ops.h: Attention, AttentionScratchBytes,
// AttentionKeySplits); the kernels and their design are in attention_kernels.cuh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention.h"
#include "kernels/cuda/attention_kernels.cuh"
#include "kernels/cuda/ops.h"

namespace mesa::cuda {
namespace {

using namespace attn;  // NOLINT: the kernel family of this file

template <typename KV, int NC>
cudaError_t Launch(const AttnArgs& args, dim3 grid, size_t smem, cudaStream_t stream) {
  auto kernel = AttnKernel<KV, NC>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

template <typename KV>
cudaError_t LaunchForHeadDim(const AttentionParams& p, const AttnArgs& a, dim3 grid, cudaStream_t stream) {
  if (p.head_dim <= 64) return Launch<KV, 2>(a, grid, SmemBytes(64, a.q_slots, a.k_slots), stream);
  if (p.head_dim <= 128) return Launch<KV, 4>(a, grid, SmemBytes(128, a.q_slots, a.k_slots), stream);
  return Launch<KV, 8>(a, grid, SmemBytes(256, a.q_slots, a.k_slots), stream);
}

}  // namespace

int AttentionKeySplits(const AttentionParams& p) {
  if (!ValidParams(p) || p.n_q == 0) return 1;
  return static_cast<int>(MakePlan(p).splits);
}

size_t AttentionScratchBytes(const AttentionParams& p) {
  if (!ValidParams(p) || p.n_q == 0) return 0;
  return ScratchBytes(p, MakePlan(p));
}

cudaError_t Attention(const AttentionParams& p, void* scratch, cudaStream_t stream) {
  if (p.n_q == 0) return cudaSuccess;  // nothing to do (ops.h: n == 0)
  if (!ValidParams(p)) return cudaErrorInvalidValue;
  const Plan plan = MakePlan(p);
  if (plan.splits > 1 && scratch == nullptr) return cudaErrorInvalidValue;

  const AttnArgs a = BuildArgs(p, plan, scratch);
  const int64_t out_rows = p.n_q * p.n_head;
  const dim3 grid(static_cast<unsigned>((a.rows + kRows - 1) / kRows),
                  static_cast<unsigned>(p.n_head_kv), static_cast<unsigned>(plan.splits));
  cudaError_t err;
  switch (p.kv_type) {
    case DType::kF16:
      err = LaunchForHeadDim<__half>(p, a, grid, stream);
      break;
    case DType::kBF16:
      err = LaunchForHeadDim<__nv_bfloat16>(p, a, grid, stream);
      break;
    default:  // kF32 (ValidParams admits no other type)
      err = LaunchForHeadDim<float>(p, a, grid, stream);
      break;
  }
  if (err != cudaSuccess || plan.splits <= 1) return err;
  AttnCombine<<<static_cast<unsigned>(out_rows), 128, 0, stream>>>(
      a.part_acc, a.part_ml, static_cast<int>(plan.splits), out_rows, a.head_dim, p.out);
  return cudaGetLastError();
}

}  // namespace mesa::cuda
