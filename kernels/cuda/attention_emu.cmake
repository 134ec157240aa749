# Host emulation test of the CUDA attention kernels (attention_kernels.cuh run as fibers
# on the CPU): built everywhere, with or without the CUDA toolkit.
if(MESA_BUILD_TESTS)
  mesa_test(cuda_attention_emu_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/attention_emu_test.cc
            LIBS mesa_kernels)
endif()
