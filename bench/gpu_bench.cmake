# gpu_bench (CUDA builds only): the device's ceilings (copy bandwidth, cuBLAS bf16
# GEMM), mesa::cuda::Attention and mesa::cuda::MatMul, one JSON line per measurement.
# scripts/device_check.sh runs it on a device machine; see bench/README.md.
add_executable(gpu_bench ${CMAKE_CURRENT_LIST_DIR}/gpu_bench.cc ${CMAKE_CURRENT_LIST_DIR}/gpu_bench_fill.cu
               ${CMAKE_SOURCE_DIR}/tests/testing/random_weights.cc)
target_include_directories(gpu_bench PRIVATE ${CMAKE_SOURCE_DIR})
target_link_libraries(gpu_bench PRIVATE mesa_cuda_ops mesa_kernels CUDA::cudart CUDA::cublas)
