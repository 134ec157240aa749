// The plugin's NCCL point-to-point entries (backend_abi.h, ABI 4), over a device and
// stream that backend_plugin.cc's context owns. Compiled into libmesa_cuda.so only;
// without MESA_HAVE_NCCL every entry answers MESA_NCCL_UNIMPLEMENTED.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/backend_abi.h"

namespace mesa::cuda {

int NcclVersion();
int NcclUniqueId(uint8_t* out, char* err, size_t err_len);
// The communicator uses `stream` (the context's) for every transfer; the context must
// outlive it.
int NcclCommCreate(int device, cudaStream_t stream, const uint8_t* id, int nranks, int rank, int64_t timeout_ms,
                   void** comm, char* err, size_t err_len);
int NcclRun(void* comm, const MesaPeerOpC* ops, int n_ops, int64_t timeout_ms, char* err, size_t err_len);
void NcclAbort(void* comm);
void NcclDestroy(void* comm);

}  // namespace mesa::cuda
