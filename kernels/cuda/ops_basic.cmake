# Norms, RoPE, activations, embedding and the matrix products (ops.h), and their tests.
target_sources(mesa_cuda_ops PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/ops_basic.cu
  ${CMAKE_CURRENT_LIST_DIR}/ops_matmul.cu)
if(MESA_BUILD_TESTS)
  mesa_test(cuda_ops_basic_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/ops_basic_test.cc
            LIBS mesa_cuda_ops mesa_kernels mesa_random_weights LABELS gpu)
endif()
