# Norms, RoPE, activations, embedding and the matrix products (ops.h), and their tests.
target_sources(mesa_cuda_ops PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/ops_basic.cu
  ${CMAKE_CURRENT_LIST_DIR}/ops_matmul.cu)
if(MESA_BUILD_TESTS)
  # Every op against its ref on the device (skips visibly without one).
  mesa_test(cuda_ops_basic_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/ops_basic_test.cc
            LIBS mesa_cuda_ops mesa_kernels mesa_random_weights LABELS gpu)
  # Argument checks: link the kernels but never touch a device, so they run everywhere.
  mesa_test(cuda_ops_args_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/ops_basic_args_test.cc
            LIBS mesa_cuda_ops mesa_kernels)
  # The decoders and matrix-vector lane loops compiled for the host: runs everywhere.
  mesa_test(cuda_device_code_host_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/ops_basic_sim_test.cc
            LIBS mesa_kernels mesa_random_weights)
  target_compile_definitions(cuda_device_code_host_test PRIVATE MESA_CUDA_HOST_SIM=1)
endif()
