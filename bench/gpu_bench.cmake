# gpu_bench (CUDA builds only): the device's ceilings (copy bandwidth, cuBLAS bf16
# GEMM), mesa::cuda::Attention and mesa::cuda::MatMul, one JSON line per measurement.
# scripts/device_check.sh runs it on a device machine; see bench/README.md.
add_executable(gpu_bench ${CMAKE_CURRENT_LIST_DIR}/gpu_bench.cc ${CMAKE_CURRENT_LIST_DIR}/gpu_bench_fill.cu
               ${CMAKE_SOURCE_DIR}/tests/testing/random_weights.cc)
target_include_directories(gpu_bench PRIVATE ${CMAKE_SOURCE_DIR})
target_link_libraries(gpu_bench PRIVATE mesa_cuda_ops mesa_kernels CUDA::cudart CUDA::cublas)
if(MESA_BUILD_TESTS)
  # The backend's peak device memory (mesa bench --json's peak_device_bytes).
  mesa_test(cuda_backend_peak_test SOURCES ${CMAKE_SOURCE_DIR}/kernels/cuda/backend_peak_test.cc
            LIBS mesa_kernels CUDA::cudart LABELS gpu)
  target_include_directories(cuda_backend_peak_test SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
endif()
if(MESA_BUILD_TESTS)
  # The device session's plumbing without a GPU (bundle + device_check.sh --cpu-check).
  add_test(NAME device_check_plumbing COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/device_check_test.sh ${CMAKE_BINARY_DIR})
  set_tests_properties(device_check_plumbing PROPERTIES LABELS "unit" TIMEOUT 400
                       ENVIRONMENT "MESA_SHARED_DIR=${MESA_SHARED_DIR}")
endif()
