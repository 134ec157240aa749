// The C interface of the CUDA plugin (libmesa_cuda.so). The plugin links cudart, cuBLAS
// and NCCL; the rest of Mesa loads it with dlopen only when a GPU is asked about, so
// ordinary CPU runs never map those (large) libraries.
#pragma once

#include <stdint.h>

extern "C" {

struct MesaCudaDeviceC {
  int index;
  char name[256];
  int cc_major, cc_minor;
  uint64_t total_memory_bytes;
  int multiprocessors;
};

struct MesaCudaReportC {
  int runtime_version, nccl_version, cublas_version;
  char unavailable_reason[512];
  int n_devices;
  MesaCudaDeviceC devices[16];
};

// Fills `out`; returns 0. Never fails hard: no driver or no device is a reason string.
int MesaCudaQueryDevices(MesaCudaReportC* out);
}
