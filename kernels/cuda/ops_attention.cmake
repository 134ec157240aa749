# Attention (ops.h: Attention, AttentionScratchBytes) and its tests.
target_sources(mesa_cuda_ops PRIVATE ${CMAKE_CURRENT_LIST_DIR}/attention.cu)
if(MESA_BUILD_TESTS)
  mesa_test(cuda_attention_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/attention_test.cc
            LIBS mesa_cuda_ops mesa_kernels LABELS gpu)
endif()
